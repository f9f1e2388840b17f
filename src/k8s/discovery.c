/* Kubernetes list+watch of the aws-node pods. A full list (paginated) gives the pods and a
 * resourceVersion; a watch from there streams newline-delimited JSON events that keep the map
 * current; a 410 Gone (as an ERROR event or an HTTP status) forces a fresh list. Every error keeps
 * the last known pods and retries after a full-jitter backoff. The JSON-facing module: the only
 * one besides aws_creds that includes jansson. */
#include "cmh/k8s/discovery.h"
#include "cmh/k8s/discovery_int.h"

#include "cmh/core/container_of.h"
#include "cmh/core/alloc.h"
#include "cmh/core/buf.h"
#include "cmh/core/rng.h"
#include "cmh/core/config.h"
#include "cmh/core/log.h"

#include <jansson.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_NAMESPACE    "kube-system"
#define DEFAULT_SELECTOR     "k8s-app=aws-node"
#define DEFAULT_WATCH_MS     (5 * 60 * 1000ull)
#define DEFAULT_REQUEST_MS   (30 * 1000ull)
#define DEFAULT_BASE_MS      500ull
#define DEFAULT_CAP_MS       (30 * 1000ull)
#define DEFAULT_TOKEN_AGE    (60 * 1000ull)
#define DEFAULT_PAGE         500
#define LIST_MAX_BODY        (256u * 1024 * 1024)
#define NAME_MAX_LEN         253
#define PUBLISH_MIN_MS       1000ull
#define CHANGE_LOG_WINDOW_MS (10 * 1000ull)

enum { MODE_LIST, MODE_WATCH };

/* ---- the pods map (pure) ---- */

/* The pods live in v in no order; an AVL tree over them (links inside each pod, as indices plus
 * one) keeps them by name, so every lookup, insertion and removal is O(log n) comparisons
 * whatever order the API sends them in, and the target set is read off in name order. */

#define NIL 0u

static struct cmh_discovery_pod *at(const struct cmh_discovery_pods *pods, uint32_t i)
{
    return &pods->v[i - 1];
}

static int height(const struct cmh_discovery_pods *pods, uint32_t i)
{
    return i == NIL ? 0 : at(pods, i)->height;
}

static void fix_height(struct cmh_discovery_pods *pods, uint32_t i)
{
    int l = height(pods, at(pods, i)->left), r = height(pods, at(pods, i)->right);
    at(pods, i)->height = (unsigned char)(1 + (l > r ? l : r));
}

static uint32_t rotate(struct cmh_discovery_pods *pods, uint32_t i, bool right)
{
    struct cmh_discovery_pod *p = at(pods, i);
    uint32_t c = right ? p->left : p->right;
    struct cmh_discovery_pod *q = at(pods, c);
    if (right) {
        p->left = q->right;
        q->right = i;
    } else {
        p->right = q->left;
        q->left = i;
    }
    fix_height(pods, i);
    fix_height(pods, c);
    pods->steps++;
    return c;
}

static uint32_t rebalance(struct cmh_discovery_pods *pods, uint32_t i)
{
    struct cmh_discovery_pod *p = at(pods, i);
    fix_height(pods, i);
    int b = height(pods, p->left) - height(pods, p->right);
    if (b > 1) {
        struct cmh_discovery_pod *l = at(pods, p->left);
        if (height(pods, l->left) < height(pods, l->right))
            p->left = rotate(pods, p->left, false);
        return rotate(pods, i, true);
    }
    if (b < -1) {
        struct cmh_discovery_pod *r = at(pods, p->right);
        if (height(pods, r->right) < height(pods, r->left))
            p->right = rotate(pods, p->right, true);
        return rotate(pods, i, false);
    }
    return i;
}

static int name_cmp(struct cmh_discovery_pods *pods, const char *a, const char *b)
{
    pods->steps++;
    return strcmp(a, b);
}

static uint32_t tree_insert(struct cmh_discovery_pods *pods, uint32_t root, uint32_t i)
{
    if (root == NIL)
        return i;
    struct cmh_discovery_pod *r = at(pods, root);
    if (name_cmp(pods, at(pods, i)->name, r->name) < 0)
        r->left = tree_insert(pods, r->left, i);
    else
        r->right = tree_insert(pods, r->right, i);
    return rebalance(pods, root);
}

static uint32_t tree_remove_min(struct cmh_discovery_pods *pods, uint32_t root, uint32_t *min)
{
    struct cmh_discovery_pod *r = at(pods, root);
    if (r->left == NIL) {
        *min = root;
        return r->right;
    }
    r->left = tree_remove_min(pods, r->left, min);
    return rebalance(pods, root);
}

/* Unlinks pod i (in the tree) from the subtree at root. */
static uint32_t tree_remove(struct cmh_discovery_pods *pods, uint32_t root, uint32_t i)
{
    if (root == NIL)
        return NIL;
    struct cmh_discovery_pod *r = at(pods, root);
    if (root != i) {
        if (name_cmp(pods, at(pods, i)->name, r->name) < 0)
            r->left = tree_remove(pods, r->left, i);
        else
            r->right = tree_remove(pods, r->right, i);
        return rebalance(pods, root);
    }
    if (r->right == NIL)
        return r->left;
    uint32_t min = NIL;
    uint32_t right = tree_remove_min(pods, r->right, &min);
    at(pods, min)->left = r->left;
    at(pods, min)->right = right;
    return rebalance(pods, min);
}

/* The link that points at the pod named name (the root or a child link), or NULL. */
static uint32_t *tree_link(struct cmh_discovery_pods *pods, const char *name)
{
    uint32_t *link = &pods->root;
    while (*link != NIL) {
        struct cmh_discovery_pod *p = at(pods, *link);
        int c = name_cmp(pods, name, p->name);
        if (c == 0)
            return link;
        link = c < 0 ? &p->left : &p->right;
    }
    return NULL;
}

static void pod_free(struct cmh_discovery_pod *p)
{
    cmh_free(p->name);
    cmh_free(p->node);
}

void cmh_discovery_pods_free(struct cmh_discovery_pods *pods)
{
    for (size_t i = 0; i < pods->n; i++)
        pod_free(&pods->v[i]);
    cmh_free(pods->v);
    pods->v = NULL;
    pods->n = pods->cap = 0;
    pods->refused = 0;
    pods->root = NIL;
    pods->targets = 0;
    pods->version++;
}

static bool is_target(const struct cmh_discovery_pod *p)
{
    return p->running && p->ip[0] != '\0';
}

/* Counts p in or out of the targets; any change to a target may change the set. */
static void target_account(struct cmh_discovery_pods *pods, const struct cmh_discovery_pod *p,
                           int sign)
{
    if (!is_target(p))
        return;
    pods->targets = sign > 0 ? pods->targets + 1 : pods->targets - 1;
    pods->version++;
}

/* Adds or updates a pod. Returns PUT_KEPT (known pod, *changed says whether it changed),
 * PUT_ADDED, PUT_REFUSED (new, but max pods are kept already), or -ENOMEM. */
enum { PUT_KEPT, PUT_ADDED, PUT_REFUSED };

static int pods_put(struct cmh_discovery_pods *pods, const char *name, const char *node,
                    const char *ip, bool running, bool *changed)
{
    uint32_t *link = tree_link(pods, name);
    if (link != NULL) {
        struct cmh_discovery_pod *p = at(pods, *link);
        if (strcmp(p->node, node) == 0 && strcmp(p->ip, ip) == 0 && p->running == running) {
            *changed = false;
            return PUT_KEPT;
        }
        if (strcmp(p->node, node) != 0) {
            char *n = cmh_strdup(node);
            if (n == NULL)
                return -ENOMEM;
            cmh_free(p->node);
            p->node = n;
        }
        target_account(pods, p, -1);
        snprintf(p->ip, sizeof p->ip, "%s", ip);
        p->running = running;
        target_account(pods, p, +1);
        *changed = true;
        return PUT_KEPT;
    }
    if ((pods->max != 0 && pods->n >= pods->max) || pods->n >= UINT32_MAX - 1) {
        *changed = false;
        return PUT_REFUSED;
    }
    if (pods->n == pods->cap) {
        size_t cap = pods->cap ? pods->cap * 2 : 16;
        struct cmh_discovery_pod *v = cmh_reallocarray(pods->v, cap, sizeof *v);
        if (v == NULL)
            return -ENOMEM;
        pods->v = v;
        pods->cap = cap;
    }
    struct cmh_discovery_pod p = {
        .name = cmh_strdup(name), .node = cmh_strdup(node), .running = running, .height = 1};
    if (p.name == NULL || p.node == NULL) {
        pod_free(&p);
        return -ENOMEM;
    }
    snprintf(p.ip, sizeof p.ip, "%s", ip);
    pods->v[pods->n++] = p;
    pods->root = tree_insert(pods, pods->root, (uint32_t)pods->n);
    target_account(pods, &p, +1);
    *changed = true;
    return PUT_ADDED;
}

static bool pods_del(struct cmh_discovery_pods *pods, const char *name)
{
    uint32_t *link = tree_link(pods, name);
    if (link == NULL)
        return false;
    uint32_t i = *link, last = (uint32_t)pods->n;
    target_account(pods, at(pods, i), -1);
    pods->root = tree_remove(pods, pods->root, i);
    pod_free(at(pods, i));
    if (i != last) {
        /* The last pod moves into the freed place: its one link follows it. */
        uint32_t *to_last = tree_link(pods, at(pods, last)->name);
        *at(pods, i) = *at(pods, last);
        *to_last = i;
        pods->steps++;
    }
    pods->n--;
    return true;
}

/* Visits the pods in name order (an explicit stack: the tree is at most 1.44 log2 n high). */
#define TREE_STACK 96

static int pods_each(const struct cmh_discovery_pods *pods,
                     int (*fn)(const struct cmh_discovery_pod *p, void *arg), void *arg)
{
    uint32_t stack[TREE_STACK];
    size_t sp = 0;
    uint32_t i = pods->root;
    while (i != NIL || sp > 0) {
        while (i != NIL) {
            if (sp == TREE_STACK)
                return -EFAULT;
            stack[sp++] = i;
            i = at(pods, i)->left;
        }
        i = stack[--sp];
        int rc = fn(at(pods, i), arg);
        if (rc != 0)
            return rc;
        i = at(pods, i)->right;
    }
    return 0;
}

struct check_state {
    const struct cmh_discovery_pods *pods;
    const char *prev;
    size_t seen, targets;
};

static int check_one(const struct cmh_discovery_pod *p, void *arg)
{
    struct check_state *c = arg;
    const struct cmh_discovery_pods *pods = c->pods;
    int l = height(pods, p->left), r = height(pods, p->right);
    if ((c->prev != NULL && strcmp(c->prev, p->name) >= 0) || l - r > 1 || r - l > 1 ||
        p->height != 1 + (l > r ? l : r) || ++c->seen > pods->n)
        return -EFAULT;
    c->prev = p->name;
    c->targets += is_target(p);
    return 0;
}

int cmh_discovery_pods_check(const struct cmh_discovery_pods *pods)
{
    struct check_state c = {.pods = pods};
    int rc = pods_each(pods, check_one, &c);
    if (rc != 0 || c.seen != pods->n || c.targets != pods->targets)
        return -EFAULT;
    return 0;
}

/* ---- JSON (pure) ---- */

static const char *jstr(json_t *obj, const char *key)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int copy_field(char *dst, size_t len, const char *src)
{
    if (src == NULL) {
        dst[0] = '\0';
        return 0;
    }
    size_t n = strlen(src);
    if (n >= len)
        return -E2BIG;
    memcpy(dst, src, n + 1);
    return 0;
}

/* The few fields we keep from a Pod object. */
struct pod_view {
    const char *name, *node, *ip, *rv;
    bool running;
};

static int pod_view(json_t *pod, struct pod_view *v)
{
    if (!json_is_object(pod))
        return -EBADMSG;
    json_t *meta = json_object_get(pod, "metadata");
    json_t *spec = json_object_get(pod, "spec");
    json_t *status = json_object_get(pod, "status");
    v->name = jstr(meta, "name");
    v->rv = jstr(meta, "resourceVersion");
    v->node = jstr(spec, "nodeName");
    v->ip = jstr(status, "hostIP");
    const char *phase = jstr(status, "phase");
    if (v->name == NULL || v->name[0] == '\0' || strlen(v->name) > NAME_MAX_LEN)
        return -EBADMSG;
    if (v->node == NULL || strlen(v->node) > NAME_MAX_LEN)
        v->node = "";
    /* An address that does not fit an IPv6 literal is no address. */
    if (v->ip == NULL || strlen(v->ip) >= sizeof((struct cmh_discovery_pod *)0)->ip)
        v->ip = "";
    v->running = phase != NULL && strcmp(phase, "Running") == 0;
    return 0;
}

/* ---- a PodList page as it streams (pure) ---- */

/* The top level of the page is scanned here byte by byte; every value under it is cut out whole
 * (brackets and strings tracked, nothing else) and handed to jansson alone: metadata, each item
 * of "items", every other key's value, and the keys themselves. Memory is one cut value. */

enum {
    L_START,     /* before the root '{' */
    L_KEY0,      /* after '{': a key or '}' */
    L_KEY,       /* after ',': a key */
    L_COLON,     /* after a key */
    L_VALUE,     /* after ':' */
    L_NEXT,      /* after a value: ',' or '}' */
    L_ITEM0,     /* after "items":[ : an item or ']' */
    L_ITEM,      /* after ',' in items: an item */
    L_ITEM_NEXT, /* after an item: ',' or ']' */
    L_CUT,       /* inside a value being cut */
    L_END,       /* after the root '}': whitespace only */
};

enum { K_OTHER, K_META, K_ITEMS, K_KEY, K_ITEM, K_ITEMS_NULL };
enum { CUT_STRING, CUT_NESTED, CUT_SCALAR };

/* jansson's own bound is 2048 levels for the whole document; an item sits two levels down. */
#define CUT_DEPTH_MAX 2045

void cmh_discovery_list_begin(struct cmh_discovery_list_parser *p, struct cmh_discovery_pods *pods,
                              size_t item_max)
{
    memset(p, 0, sizeof *p);
    p->pods = pods;
    p->item_max = item_max ? item_max : CMH_DISCOVERY_ITEM_MAX;
}

static bool json_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int cut_add(struct cmh_discovery_list_parser *p, char c)
{
    if (p->too_large)
        return 0;
    if (p->len + 1 > p->item_max) {
        p->too_large = true;
        return 0;
    }
    if (p->len + 1 > p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 4096;
        if (cap > p->item_max)
            cap = p->item_max;
        char *b = cmh_realloc(p->buf, cap);
        if (b == NULL)
            return -ENOMEM;
        p->buf = b;
        p->cap = cap;
    }
    p->buf[p->len++] = c;
    return 0;
}

static int cut_start(struct cmh_discovery_list_parser *p, char c, int key)
{
    if (c == ',' || c == ':' || c == '}' || c == ']')
        return -EBADMSG;
    p->key = key;
    p->len = 0;
    p->values = 1;
    p->in_str = p->esc = p->too_large = false;
    p->cut = c == '"' ? CUT_STRING : c == '{' || c == '[' ? CUT_NESTED : CUT_SCALAR;
    p->depth = p->cut == CUT_NESTED;
    p->state = L_CUT;
    return cut_add(p, c);
}

static int list_item(struct cmh_discovery_list_parser *p, json_t *item)
{
    struct pod_view v;
    bool changed;
    if (pod_view(item, &v) != 0)
        return 0; /* one odd item does not hide the others */
    int rc = pods_put(p->pods, v.name, v.node, v.ip, v.running, &changed);
    if (rc < 0)
        return rc;
    p->pods->refused += rc == PUT_REFUSED;
    return 0;
}

static char *strdup_or_null(const char *s, int *rc)
{
    char *d = s != NULL ? cmh_strdup(s) : NULL;
    if (s != NULL && d == NULL)
        *rc = -ENOMEM;
    return d;
}

/* A cut value is complete: parse it alone and use it. */
static int cut_done(struct cmh_discovery_list_parser *p)
{
    int rc = 0;
    if (p->too_large) {
        if (p->key != K_ITEM)
            return -EBADMSG; /* a key, metadata or other top-level value that big: no PodList */
        p->items_too_large++;
        p->state = L_ITEM_NEXT;
        return 0;
    }
    json_error_t jerr;
    json_t *v = json_loadb(p->buf, p->len, JSON_DECODE_ANY, &jerr);
    if (v == NULL)
        return -EBADMSG;
    switch (p->key) {
    case K_KEY: {
        const char *k = json_string_value(v);
        p->key = strcmp(k, "items") == 0 ? K_ITEMS : strcmp(k, "metadata") == 0 ? K_META : K_OTHER;
        if (p->key == K_ITEMS && p->seen_items)
            rc = -EBADMSG; /* which one would count? jansson keeps the last; we refuse */
        p->seen_items |= p->key == K_ITEMS;
        p->state = L_COLON;
        break;
    }
    case K_META:
        /* The last "metadata" counts, as with jansson. */
        cmh_free(p->rv);
        cmh_free(p->cont);
        p->seen_meta = true;
        p->meta_ok = json_is_object(v);
        p->rv = strdup_or_null(jstr(v, "resourceVersion"), &rc);
        p->cont = strdup_or_null(jstr(v, "continue"), &rc);
        p->state = L_NEXT;
        break;
    case K_ITEMS_NULL:
        rc = json_is_null(v) ? 0 : -EBADMSG;
        p->state = L_NEXT;
        break;
    case K_ITEM:
        rc = list_item(p, v);
        p->state = L_ITEM_NEXT;
        break;
    default:
        p->state = L_NEXT;
        break;
    }
    json_decref(v);
    return rc;
}

/* One byte inside a string (after its opening quote): whether it is the closing quote. */
static bool string_ends(struct cmh_discovery_list_parser *p, char c)
{
    if (p->esc)
        p->esc = false;
    else if (c == '\\')
        p->esc = true;
    else
        return c == '"';
    return false;
}

/* One byte of a nested value after its opening bracket: strings and brackets are followed and the
 * values begun counted (over CMH_DISCOVERY_ITEM_VALUES, the value is too large: jansson's tree of
 * many small values is many times their bytes). Returns 1 when the value closes, 0, or -EBADMSG
 * when nested deeper than jansson reads. */
static int nest_byte(struct cmh_discovery_list_parser *p, char c)
{
    if (p->in_str) {
        p->in_str = !string_ends(p, c);
    } else if (c == '"') {
        p->in_str = true;
    } else if (c == '{' || c == '[' || c == ',') {
        if (c != ',' && ++p->depth > CUT_DEPTH_MAX)
            return -EBADMSG;
        if (++p->values > CMH_DISCOVERY_ITEM_VALUES)
            p->too_large = true;
    } else if (c == '}' || c == ']') {
        if (--p->depth == 0)
            return 1;
    }
    return 0;
}

/* Whether one watch line holds more values than an item may (see nest_byte). */
static bool line_too_large(const char *line, size_t len)
{
    struct cmh_discovery_list_parser p = {.depth = 1};
    for (size_t i = 0; i < len && !p.too_large; i++)
        if (nest_byte(&p, line[i]) != 0)
            break; /* closed or too deep: jansson decides */
    return p.too_large;
}

/* One byte of a value being cut; *again is set when the byte ends a scalar and belongs to what
 * follows. */
static int cut_byte(struct cmh_discovery_list_parser *p, char c, bool *again)
{
    switch (p->cut) {
    case CUT_SCALAR:
        if (json_ws(c) || c == ',' || c == '}' || c == ']' || c == ':' || c == '{' || c == '[' ||
            c == '"') {
            *again = true;
            return cut_done(p);
        }
        return cut_add(p, c);
    case CUT_STRING: {
        int rc = cut_add(p, c);
        if (rc != 0)
            return rc;
        return string_ends(p, c) ? cut_done(p) : 0;
    }
    default: {
        int rc = cut_add(p, c);
        if (rc == 0)
            rc = nest_byte(p, c);
        return rc == 1 ? cut_done(p) : rc;
    }
    }
}

/* After a member or an item: ',' goes on to the next, close ends the container. */
static int after_value(struct cmh_discovery_list_parser *p, char c, char close, int next, int end)
{
    if (c == ',')
        p->state = next;
    else if (c == close)
        p->state = end;
    else
        return -EBADMSG;
    return 0;
}

static int list_byte(struct cmh_discovery_list_parser *p, char c)
{
    bool again;
    do {
        again = false;
        int rc = 0;
        if (p->state == L_CUT) {
            rc = cut_byte(p, c, &again);
            if (rc != 0)
                return rc;
            continue;
        }
        if (json_ws(c))
            return 0;
        switch (p->state) {
        case L_START:
            if (c != '{')
                return -EBADMSG;
            p->state = L_KEY0;
            break;
        case L_KEY0:
            if (c == '}') {
                p->state = L_END;
                break;
            }
            /* fall through */
        case L_KEY:
            if (c != '"')
                return -EBADMSG;
            rc = cut_start(p, c, K_KEY);
            break;
        case L_COLON:
            if (c != ':')
                return -EBADMSG;
            p->state = L_VALUE;
            break;
        case L_VALUE:
            if (p->key == K_ITEMS) {
                if (c == '[')
                    p->state = L_ITEM0;
                else if (c == 'n')
                    rc = cut_start(p, c, K_ITEMS_NULL);
                else
                    rc = -EBADMSG; /* items neither an array nor null */
                break;
            }
            rc = cut_start(p, c, p->key);
            break;
        case L_NEXT:
            rc = after_value(p, c, '}', L_KEY, L_END);
            break;
        case L_ITEM0:
            if (c == ']') {
                p->state = L_NEXT;
                break;
            }
            /* fall through */
        case L_ITEM:
            rc = cut_start(p, c, K_ITEM);
            break;
        case L_ITEM_NEXT:
            rc = after_value(p, c, ']', L_ITEM, L_NEXT);
            break;
        default: /* L_END: only whitespace may follow */
            rc = -EBADMSG;
            break;
        }
        if (rc != 0)
            return rc;
    } while (again);
    return 0;
}

int cmh_discovery_list_feed(struct cmh_discovery_list_parser *p, const char *data, size_t len)
{
    for (size_t i = 0; i < len && p->rc == 0; i++)
        p->rc = list_byte(p, data[i]);
    return p->rc;
}

int cmh_discovery_list_end(struct cmh_discovery_list_parser *p, char *rv, size_t rvlen, char *cont,
                           size_t contlen)
{
    int rc = p->rc;
    if (rc == 0 && (p->state != L_END || !p->seen_meta || !p->meta_ok || !p->seen_items))
        rc = -EBADMSG;
    if (rc == 0 && rv != NULL)
        rc = copy_field(rv, rvlen, p->rv);
    if (rc == 0 && cont != NULL)
        rc = copy_field(cont, contlen, p->cont);
    cmh_free(p->buf);
    cmh_free(p->rv);
    cmh_free(p->cont);
    p->buf = p->rv = p->cont = NULL;
    p->len = p->cap = 0;
    p->rc = rc != 0 ? rc : -EALREADY;
    return rc;
}

int cmh_discovery_parse_list(struct cmh_discovery_pods *pods, const char *buf, size_t len, char *rv,
                             size_t rvlen, char *cont, size_t contlen)
{
    struct cmh_discovery_list_parser p;
    cmh_discovery_list_begin(&p, pods, 0);
    cmh_discovery_list_feed(&p, buf, len);
    return cmh_discovery_list_end(&p, rv, rvlen, cont, contlen);
}

int cmh_discovery_parse_event(struct cmh_discovery_pods *pods, const char *line, size_t len,
                              struct cmh_discovery_event *ev)
{
    int rc = 0;
    json_error_t jerr;
    memset(ev, 0, sizeof *ev);
    if (line_too_large(line, len))
        return -E2BIG;
    json_t *root = json_loadb(line, len, 0, &jerr);
    const char *type = jstr(root, "type");
    json_t *obj = json_is_object(root) ? json_object_get(root, "object") : NULL;
    if (type == NULL || !json_is_object(obj)) {
        rc = -EBADMSG;
        goto out;
    }
    if (strcmp(type, "ERROR") == 0) {
        ev->type = CMH_K8S_EV_ERROR;
        json_t *code = json_object_get(obj, "code");
        ev->code = json_is_integer(code) ? (long)json_integer_value(code) : 0;
        goto out;
    }
    if (copy_field(ev->rv, sizeof ev->rv,
                   jstr(json_object_get(obj, "metadata"), "resourceVersion")) != 0) {
        rc = -EBADMSG;
        goto out;
    }
    if (strcmp(type, "BOOKMARK") == 0) {
        ev->type = CMH_K8S_EV_BOOKMARK;
        goto out;
    }
    struct pod_view v;
    if (pod_view(obj, &v) != 0) {
        rc = -EBADMSG;
        goto out;
    }
    if (strcmp(type, "ADDED") == 0 || strcmp(type, "MODIFIED") == 0) {
        ev->type = type[0] == 'A' ? CMH_K8S_EV_ADDED : CMH_K8S_EV_MODIFIED;
        rc = pods_put(pods, v.name, v.node, v.ip, v.running, &ev->changed);
        /* Each pod beyond max is counted once: at the list or at its ADDED. A MODIFIED that
         * adds was one of them (a watch from a list's resourceVersion misses nothing). */
        if (rc == PUT_REFUSED && ev->type == CMH_K8S_EV_ADDED)
            pods->refused++;
        else if (rc == PUT_ADDED && ev->type == CMH_K8S_EV_MODIFIED && pods->refused > 0)
            pods->refused--;
        rc = rc < 0 ? rc : 0;
    } else if (strcmp(type, "DELETED") == 0) {
        ev->type = CMH_K8S_EV_DELETED;
        ev->changed = pods_del(pods, v.name);
        if (!ev->changed && pods->refused > 0)
            pods->refused--; /* one of those beyond max */
        else if (ev->changed && pods->refused > 0)
            ev->relist = true; /* a place freed: a list fills it */
    } else {
        rc = -EBADMSG;
    }
out:
    json_decref(root);
    return rc;
}

struct set_fill {
    struct cmh_discovery_set *set;
    size_t k, bytes;
    char *s;
};

static int set_size(const struct cmh_discovery_pod *p, void *arg)
{
    struct set_fill *f = arg;
    if (is_target(p)) {
        f->k++;
        f->bytes += strlen(p->name) + strlen(p->node) + strlen(p->ip) + 3;
    }
    return 0;
}

static int set_fill(const struct cmh_discovery_pod *p, void *arg)
{
    struct set_fill *f = arg;
    if (!is_target(p))
        return 0;
    struct cmh_discovery_target *t = &f->set->v[f->k++];
    const char *src[3] = {p->node, p->name, p->ip};
    const char **dst[3] = {&t->node, &t->pod, &t->ip};
    for (int j = 0; j < 3; j++) {
        size_t len = strlen(src[j]) + 1;
        memcpy(f->s, src[j], len);
        *dst[j] = f->s;
        f->s += len;
    }
    return 0;
}

struct cmh_discovery_set *cmh_discovery_set_build(const struct cmh_discovery_pods *pods,
                                                  uint64_t generation)
{
    struct set_fill f = {0};
    if (pods_each(pods, set_size, &f) != 0)
        return NULL;
    size_t n = f.k;
    /* One block: the header, the array, then the strings. */
    size_t head = sizeof(struct cmh_discovery_set) + n * sizeof(struct cmh_discovery_target);
    struct cmh_discovery_set *set = cmh_malloc(head + f.bytes);
    if (set == NULL)
        return NULL;
    set->refs = 1;
    set->generation = generation;
    set->n = n;
    set->v = (struct cmh_discovery_target *)(set + 1);
    f = (struct set_fill){.set = set, .s = (char *)set + head};
    pods_each(pods, set_fill, &f);
    return set;
}

static bool set_equal(const struct cmh_discovery_set *a, const struct cmh_discovery_set *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->v[i].pod, b->v[i].pod) != 0 || strcmp(a->v[i].node, b->v[i].node) != 0 ||
            strcmp(a->v[i].ip, b->v[i].ip) != 0)
            return false;
    return true;
}

void cmh_discovery_set_release(struct cmh_discovery_set *set)
{
    if (set != NULL && --set->refs == 0)
        cmh_free(set);
}

/* ---- options ---- */

int cmh_discovery_resolve_ip(const char *host, char *ip, size_t len, const char **why)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (len > 0)
        ip[0] = '\0';
    int gai = getaddrinfo(host, NULL, &hints, &res);
    if (gai == 0 && res->ai_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, ip, (socklen_t)len);
    else if (gai == 0 && res->ai_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)res->ai_addr)->sin6_addr, ip, (socklen_t)len);
    if (res != NULL)
        freeaddrinfo(res);
    if (len == 0 || ip[0] == '\0') {
        if (why != NULL)
            *why = gai ? gai_strerror(gai) : "no address";
        return -EINVAL;
    }
    return 0;
}

void cmh_discovery_opts_from_config(struct cmh_discovery_opts *opts, const struct cmh_config *cfg)
{
    memset(opts, 0, sizeof *opts);
    opts->namespace_name = cfg->k8s_namespace;
    opts->label_selector = cfg->k8s_label_selector;
    opts->token_file = cfg->k8s_token_file;
    opts->ca_file = cfg->k8s_ca_file;
    opts->watch_timeout_ms = cfg->k8s_watch_timeout_ms;
    opts->max_pods = (size_t)cfg->scrape_max_nodes;
}

static bool dns_label(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63 || !isalnum((unsigned char)s[0]) || !isalnum((unsigned char)s[n - 1]))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '-'))
            return false;
    return true;
}

static bool selector_ok(const char *s)
{
    /* Terms "key=value", "key==value" or "key!=value", comma-separated, with label characters. */
    if (s[0] == '\0' || strlen(s) > 1024)
        return false;
    for (const char *p = s; *p; p++)
        if (!(isalnum((unsigned char)*p) || strchr("-_./=!,", *p) != NULL))
            return false;
    const char *t = s;
    while (*t) {
        const char *e = strchr(t, ',');
        size_t n = e ? (size_t)(e - t) : strlen(t);
        const char *eq = memchr(t, '=', n);
        if (eq == NULL || eq == t || (eq == t + 1 && t[0] == '!'))
            return false;
        if (!e)
            break;
        t = e + 1;
        if (*t == '\0')
            return false;
    }
    return true;
}

int cmh_discovery_check_opts(const struct cmh_discovery_opts *opts, char *err, size_t errlen)
{
    const char *ns = opts->namespace_name ? opts->namespace_name : DEFAULT_NAMESPACE;
    const char *sel = opts->label_selector ? opts->label_selector : DEFAULT_SELECTOR;
    if (opts->server == NULL || opts->server[0] == '\0') {
        snprintf(err, errlen,
                 "no Kubernetes API server: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT "
                 "are unset (not running in a pod?)");
        return -EINVAL;
    }
    if (!dns_label(ns)) {
        snprintf(err, errlen,
                 "K8S_NAMESPACE=%s: not a namespace name (1-63 of a-z, 0-9, '-', alphanumeric "
                 "at both ends)",
                 ns);
        return -EINVAL;
    }
    if (!selector_ok(sel)) {
        snprintf(err, errlen,
                 "K8S_LABEL_SELECTOR=%s: not a label selector (comma-separated key=value, "
                 "key==value or key!=value terms)",
                 sel);
        return -EINVAL;
    }
    return 0;
}

/* ---- the loop side ---- */

/* Records an error (the last one for /readyz, the count for self-metrics) and logs it. */
#define set_error(d, ...)                                                                          \
    cmh_k8s_api_fail(&(d)->err, (d)->log, "kubernetes discovery error",                            \
                     (const struct cmh_kv[]){CMH_UINT("attempt", (d)->attempt + 1),                \
                                             CMH_UINT("pods_kept", (d)->pods.n)},                  \
                     2, __VA_ARGS__)

static void start_request(struct cmh_discovery *d);

static void on_retry(uv_timer_t *t)
{
    struct cmh_discovery *d = container_of(t, struct cmh_discovery, retry);
    if (!d->stopping)
        start_request(d);
}

static void schedule(struct cmh_discovery *d, bool backoff)
{
    uint64_t delay = 0;
    if (backoff) {
        delay = cmh_backoff_full_jitter(&d->rng, d->attempt, d->backoff_base_ms, d->backoff_cap_ms);
        d->attempt++;
    }
    int rc = uv_timer_start(&d->retry, on_retry, delay, 0);
    if (rc != 0 && d->log != NULL)
        CMH_LOG(d->log, CMH_LOG_ERROR, "cannot arm the discovery retry timer",
                CMH_STR("error", uv_strerror(rc)));
}

/* Builds the set when the targets may have changed since the last one; returns whether the
 * published set changed. Keeps the old set when memory runs out. */
static bool rebuild(struct cmh_discovery *d)
{
    if (d->pods.version == d->built_version)
        return false;
    struct cmh_discovery_set *set = cmh_discovery_set_build(&d->pods, d->set->generation + 1);
    if (set == NULL)
        return false;
    d->built_version = d->pods.version;
    d->st.set_builds++;
    if (set_equal(set, d->set)) {
        cmh_discovery_set_release(set);
        return false;
    }
    cmh_discovery_set_release(d->set);
    d->set = set;
    return true;
}

/* One "scrape targets changed" line per window, saying how many were held back. */
static void log_targets_changed(struct cmh_discovery *d)
{
    uint64_t now = uv_now(d->loop);
    if (d->change_log.budget == 0 || now - d->change_log_window_ms >= CHANGE_LOG_WINDOW_MS) {
        d->change_log_suppressed += d->change_log.suppressed;
        cmh_ratelimit_reset(&d->change_log, 1);
        d->change_log_window_ms = now;
    }
    if (!cmh_ratelimit_allow(&d->change_log))
        return;
    CMH_LOG(d->log, CMH_LOG_INFO, "scrape targets changed", CMH_UINT("targets", d->set->n),
            CMH_UINT("pods", d->pods.n), CMH_UINT("generation", d->set->generation),
            CMH_UINT("changes_not_logged", d->change_log_suppressed));
    d->change_log_suppressed = 0;
}

/* Says once per growth of the count that pods beyond SCRAPE_MAX_NODES are not kept, whichever
 * path (a throttled publication or a round's acquire) builds the set that leaves them out. */
static void log_refused(struct cmh_discovery *d)
{
    if (d->pods.refused > d->refused_logged && d->log != NULL)
        CMH_LOG(d->log, CMH_LOG_WARN,
                "more aws-node pods than SCRAPE_MAX_NODES: the ones beyond it are not scraped",
                CMH_UINT("max_nodes", d->pods.max), CMH_UINT("not_kept", d->pods.refused));
    d->refused_logged = d->pods.refused;
}

static void publish(struct cmh_discovery *d)
{
    d->last_publish_ms = uv_now(d->loop);
    bool changed = rebuild(d);
    if (d->pods.version != d->built_version)
        d->dirty = true; /* out of memory: try again on the next change */
    log_refused(d);
    bool was_empty = d->st.no_pods;
    d->st.no_pods = d->synced && d->pods.n == 0;
    if (d->st.no_pods && !was_empty && d->log != NULL)
        CMH_LOG(d->log, CMH_LOG_WARN,
                "no aws-node pods: the Kubernetes API lists no pod matching the selector (EKS Auto "
                "Mode has none); nothing to scrape",
                CMH_STR("namespace", d->ns), CMH_STR("label_selector", d->selector));
    /* The first list is always told, even when it found nothing: a caller waits for it. */
    if (!changed && !d->unnotified && (d->sync_told || !d->synced))
        return;
    d->unnotified = false;
    d->sync_told = d->synced;
    if (d->log != NULL)
        log_targets_changed(d);
    if (d->on_change != NULL)
        d->on_change(d, d->arg);
}

static void on_notify(uv_timer_t *t)
{
    struct cmh_discovery *d = container_of(t, struct cmh_discovery, notify);
    if (d->stopping || !d->dirty)
        return;
    d->dirty = false;
    publish(d);
}

/* Publishing waits for the loop (changes that arrive together make one set) and comes at most
 * once per PUBLISH_MIN_MS: a stream of events costs O(log n) each, and one set a second. */
static void mark_dirty(struct cmh_discovery *d)
{
    d->dirty = true;
    if (uv_is_active((uv_handle_t *)&d->notify))
        return;
    uint64_t now = uv_now(d->loop), next = d->last_publish_ms + PUBLISH_MIN_MS;
    uint64_t delay = d->last_publish_ms == 0 || next <= now ? 0 : next - now;
    uv_timer_start(&d->notify, on_notify, delay, 0);
}

/* Reads the token when due (see cmh_k8s_token). Synchronous: a few bytes from the kubelet's
 * tmpfs, at most once a minute or after a refusal. */
static void refresh_token(struct cmh_discovery *d)
{
    char why[300];
    int rc = cmh_k8s_api_refresh(&d->api, uv_now(d->loop), why, sizeof why);
    if (rc < 0)
        set_error(d, "%s", why);
    else if (rc == 1 && d->log != NULL)
        CMH_LOG(d->log, CMH_LOG_INFO, "service-account token rotated",
                CMH_STR("file", d->api.tok.file));
    d->st.token_reads = d->api.tok.reads;
}

/* The path and query of the next request, after the server. */
static void build_url(struct cmh_discovery *d, struct cmh_buf *b)
{
    cmh_buf_addstr(b, "/api/v1/namespaces/");
    cmh_buf_add_pct(b, d->ns, strlen(d->ns), 0);
    cmh_buf_addstr(b, "/pods?labelSelector=");
    cmh_buf_add_pct(b, d->selector, strlen(d->selector), 0);
    if (d->mode == MODE_LIST) {
        cmh_buf_printf(b, "&limit=%zu", d->page_limit);
        if (d->cont != NULL && d->cont[0] != '\0') {
            cmh_buf_addstr(b, "&continue=");
            cmh_buf_add_pct(b, d->cont, strlen(d->cont), 0);
        }
    } else {
        cmh_buf_addstr(b, "&watch=1&allowWatchBookmarks=true&resourceVersion=");
        cmh_buf_add_pct(b, d->rv, strlen(d->rv), 0);
        cmh_buf_printf(b, "&timeoutSeconds=%llu",
                       (unsigned long long)((d->watch_timeout_ms + 999) / 1000));
    }
}

static void on_done(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res);
static int on_list_data(struct cmh_curl_uv_req *req, long status, const char *data, size_t len);
static int on_watch_data(struct cmh_curl_uv_req *req, long status, const char *data, size_t len);

static void start_request(struct cmh_discovery *d)
{
    int rc;
    if (d->stopping || d->in_flight)
        return;
    if (d->rv[0] == '\0')
        d->mode = MODE_LIST;
    refresh_token(d);
    build_url(d, cmh_k8s_api_begin(&d->api, &d->req, "GET"));
    d->err_len = 0;
    d->err_body[0] = '\0';
    if (d->mode == MODE_LIST) {
        /* The page streams through the parser: never held whole. */
        d->req.curl.on_data = on_list_data;
        d->req.curl.timeout_ms = d->request_timeout_ms;
        cmh_discovery_list_end(&d->lp, NULL, 0, NULL, 0); /* what a cancelled page left */
        cmh_discovery_list_begin(&d->lp, &d->listing, 0);
        d->list_bytes = 0;
        d->st.state = "listing";
    } else {
        /* The server ends the watch at timeoutSeconds; the grace catches a stalled stream. */
        uint64_t grace = d->watch_timeout_ms / 4;
        grace = grace < 2000 ? 2000 : grace > 30000 ? 30000 : grace;
        d->req.curl.timeout_ms = d->watch_timeout_ms + grace;
        d->req.curl.on_data = on_watch_data;
        d->line_len = 0;
        d->abort_gone = d->abort_bad = d->abort_room = false;
        d->watch_got_data = false;
        d->st.watches++;
        d->st.state = "watching";
    }
    rc = cmh_k8s_api_start(&d->api, d->curl, &d->req, on_done);
    if (rc != 0)
        goto fail;
    d->in_flight = true;
    return;
fail:
    set_error(d, "cannot start a Kubernetes API request: %s", strerror(-rc));
    d->st.state = "backoff";
    if (rc != -EBUSY) /* -EBUSY: the curl instance is closing with the daemon */
        schedule(d, true);
}

const char *cmh_discovery_event_error(int rc)
{
    return rc == -ENOMEM ? "out of memory" : rc == -E2BIG ? "too many values" : "not JSON";
}

/* Applies one complete line; returns whether the pods map changed. */
static bool handle_line(struct cmh_discovery *d, const char *line, size_t len)
{
    struct cmh_discovery_event ev;
    while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' '))
        len--;
    if (len == 0 || d->abort_gone || d->abort_bad || d->abort_room)
        return false;
    uint64_t refused = d->pods.refused;
    int rc = cmh_discovery_parse_event(&d->pods, line, len, &ev);
    if (rc != 0) {
        d->abort_bad = true;
        /* line is not terminated: it may point into libcurl's chunk. */
        set_error(d, "bad watch event (%s): %.*s", cmh_discovery_event_error(rc),
                  (int)(len < 80 ? len : 80), line);
        return false;
    }
    if (ev.type == CMH_K8S_EV_ERROR) {
        if (ev.code == 410)
            d->abort_gone = true;
        else {
            d->abort_bad = true;
            set_error(d, "watch ERROR event with code %ld", ev.code);
        }
        return false;
    }
    if (ev.rv[0] != '\0')
        memcpy(d->rv, ev.rv, sizeof d->rv);
    if (ev.relist)
        d->abort_room = true;
    /* A count of pods beyond max that changed is news too (the warning, /readyz). */
    return ev.changed || d->pods.refused != refused;
}

int cmh_discovery_watch_feed(struct cmh_discovery *d, const char *data, size_t len, bool *changed)
{
    size_t max = d->line_max ? d->line_max : CMH_DISCOVERY_LINE_MAX;
    *changed = false;
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t n = nl ? (size_t)(nl - data) : len;
        /* The bound holds however the stream is cut: a whole line in one chunk included. */
        if (d->line_len + n > max) {
            set_error(d, "watch event longer than %zu bytes", max);
            d->abort_bad = true;
            return 1;
        }
        if (d->line_len == 0 && nl != NULL) {
            *changed |= handle_line(d, data, n); /* whole line in this chunk: no copy */
        } else {
            if (d->line_len + n > d->line_cap) {
                size_t cap = d->line_cap ? d->line_cap : 4096;
                while (cap < d->line_len + n)
                    cap *= 2;
                char *p = cmh_realloc(d->line, cap);
                if (p == NULL) {
                    d->abort_bad = true;
                    return 1;
                }
                d->line = p;
                d->line_cap = cap;
            }
            memcpy(d->line + d->line_len, data, n);
            d->line_len += n;
            if (nl != NULL) {
                *changed |= handle_line(d, d->line, d->line_len);
                d->line_len = 0;
            }
        }
        if (d->abort_gone || d->abort_bad || d->abort_room)
            return 1;
        data += nl ? n + 1 : n;
        len -= nl ? n + 1 : n;
    }
    return 0;
}

/* The first bytes of an error answer, for the log (a Status object says why). */
static void keep_err_body(struct cmh_discovery *d, const char *data, size_t len)
{
    size_t room = sizeof d->err_body - 1 - d->err_len, n = len < room ? len : room;
    memcpy(d->err_body + d->err_len, data, n);
    d->err_len += n;
    d->err_body[d->err_len] = '\0';
}

static int on_watch_data(struct cmh_curl_uv_req *req, long status, const char *data, size_t len)
{
    struct cmh_discovery *d = container_of(req, struct cmh_discovery, req.curl);
    if (status != 200) {
        keep_err_body(d, data, len); /* the status decides in on_done */
        return 0;
    }
    if (!d->watch_got_data) {
        d->watch_got_data = true;
        d->watching = true;
        d->attempt = 0;
    }
    bool changed;
    int stop = cmh_discovery_watch_feed(d, data, len, &changed);
    if (changed)
        mark_dirty(d);
    return stop;
}

/* A list page's bytes: parsed as they come; an error answer's first bytes are kept for the log. */
static int on_list_data(struct cmh_curl_uv_req *req, long status, const char *data, size_t len)
{
    struct cmh_discovery *d = container_of(req, struct cmh_discovery, req.curl);
    if (status != 200) {
        keep_err_body(d, data, len);
        return 0;
    }
    d->list_bytes += len;
    if (d->list_bytes > LIST_MAX_BODY && d->lp.rc == 0)
        d->lp.rc = -EFBIG;
    return cmh_discovery_list_feed(&d->lp, data, len) != 0;
}

static void list_done(struct cmh_discovery *d, const struct cmh_curl_uv_response *res)
{
    char rv[sizeof d->rv];
    char cont[4096];
    int fed = d->lp.rc;
    int rc = cmh_discovery_list_end(&d->lp, rv, sizeof rv, cont, sizeof cont);
    if (d->lp.items_too_large > 0) {
        d->st.items_too_large += d->lp.items_too_large;
        if (d->log != NULL)
            CMH_LOG(d->log, CMH_LOG_WARN,
                    "aws-node pod objects larger than the bound were skipped: not scraped",
                    CMH_UINT("skipped", d->lp.items_too_large),
                    CMH_UINT("bound_bytes", CMH_DISCOVERY_ITEM_MAX));
    }
    if (res->status == 410) {
        /* The continue token expired: start the list again from the beginning. */
        cmh_discovery_pods_free(&d->listing);
        cmh_free(d->cont);
        d->cont = NULL;
        d->st.relists_gone++;
        schedule(d, true);
        return;
    }
    /* Our own abort (fed != 0) is the parser's verdict, not a transfer failure. */
    char why[256];
    if ((fed == 0 || res->error == CMH_CURL_OK) &&
        cmh_k8s_api_result(&d->api, res, d->err_body, d->err_len, why, sizeof why) != 0) {
        set_error(d, "pod list failed: %s", why);
        goto retry;
    }
    if (rc == -EFBIG) {
        set_error(d, "pod list page larger than %u bytes", LIST_MAX_BODY);
        goto retry;
    }
    if (rc != 0) {
        set_error(d, "pod list answer is not a PodList (%s)", strerror(-rc));
        goto retry;
    }
    if (cont[0] != '\0') {
        char *c = cmh_strdup(cont);
        if (c == NULL)
            goto retry;
        cmh_free(d->cont);
        d->cont = c;
        schedule(d, false);
        return;
    }
    /* The whole list: it replaces what we knew. */
    cmh_discovery_pods_free(&d->pods);
    d->pods = d->listing;
    d->pods.version = d->built_version + 1; /* another store: build its set */
    memset(&d->listing, 0, sizeof d->listing);
    d->listing.max = d->pods.max;
    cmh_free(d->cont);
    d->cont = NULL;
    memcpy(d->rv, rv, sizeof d->rv);
    d->synced = true;
    d->st.lists++;
    d->attempt = 0;
    if (d->log != NULL)
        CMH_LOG(d->log, CMH_LOG_INFO, "aws-node pods listed", CMH_UINT("pods", d->pods.n),
                CMH_STR("resource_version", d->rv));
    mark_dirty(d);
    if (d->rv[0] == '\0') {
        set_error(d, "pod list without a resourceVersion: cannot watch");
        schedule(d, true);
        return;
    }
    d->mode = MODE_WATCH;
    schedule(d, false);
    return;
retry:
    cmh_discovery_pods_free(&d->listing);
    cmh_free(d->cont);
    d->cont = NULL;
    schedule(d, true);
}

static void relist(struct cmh_discovery *d, bool backoff)
{
    d->rv[0] = '\0';
    d->mode = MODE_LIST;
    schedule(d, backoff);
}

static void watch_done(struct cmh_discovery *d, const struct cmh_curl_uv_response *res)
{
    d->watching = false;
    if (d->abort_gone || res->status == 410) {
        d->st.relists_gone++;
        if (d->log != NULL)
            CMH_LOG(d->log, CMH_LOG_INFO, "watch expired (410 Gone): listing again",
                    CMH_STR("resource_version", d->rv));
        /* With a small delay (the attempt count restarts at every good list): a server that
         * answers 410 to every watch cannot make us list in a tight loop. */
        relist(d, true);
        return;
    }
    if (d->abort_bad) {
        relist(d, true);
        return;
    }
    if (d->abort_room) {
        if (d->log != NULL)
            CMH_LOG(d->log, CMH_LOG_INFO,
                    "a pod left while more than SCRAPE_MAX_NODES exist: listing again to take one "
                    "of the others in",
                    CMH_UINT("not_kept", d->pods.refused));
        relist(d, true);
        return;
    }
    if (res->error == CMH_CURL_OK && res->status == 200) {
        /* The server ended the watch at timeoutSeconds: resume where it stopped. */
        schedule(d, false);
        return;
    }
    if (res->error == CMH_CURL_ERR_TIMEOUT && d->watch_got_data) {
        /* A stalled stream outlived timeoutSeconds plus our grace: resume at once. */
        set_error(d, "watch stalled: not ended %llu ms after it started",
                  (unsigned long long)d->req.curl.timeout_ms);
        schedule(d, false);
        return;
    }
    char why[256];
    if (cmh_k8s_api_result(&d->api, res, d->err_body, d->err_len, why, sizeof why) != 0)
        set_error(d, "pod watch failed: %s", why);
    /* Resume from the last resourceVersion; a 410 then sends us to a fresh list. */
    schedule(d, !d->watch_got_data || res->status != 200);
}

static void on_done(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res)
{
    struct cmh_discovery *d = container_of(req, struct cmh_discovery, req.curl);
    d->in_flight = false;
    if (d->stopping || res->error == CMH_CURL_ERR_CANCELLED) {
        d->watching = false;
        d->st.state = "stopped";
        return;
    }
    d->st.state = "backoff";
    if (d->mode == MODE_LIST)
        list_done(d, res);
    else
        watch_done(d, res);
}

static void free_all(struct cmh_discovery *d)
{
    cmh_discovery_pods_free(&d->pods);
    cmh_discovery_pods_free(&d->listing);
    cmh_discovery_list_end(&d->lp, NULL, 0, NULL, 0);
    cmh_discovery_set_release(d->set);
    d->set = NULL;
    cmh_k8s_api_free(&d->api);
    cmh_k8s_api_req_free(&d->req);
    char **strs[] = {&d->ns, &d->selector, &d->cont, &d->line};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        cmh_free(*strs[i]);
        *strs[i] = NULL;
    }
}

int cmh_discovery_start(struct cmh_discovery *d, uv_loop_t *loop, struct cmh_curl_uv *curl,
                        const struct cmh_discovery_opts *opts, struct cmh_log *log,
                        cmh_discovery_change_cb on_change, void *arg)
{
    int rc = 0;
    char err[512];
    memset(d, 0, sizeof *d);
    d->loop = loop;
    d->curl = curl;
    d->log = log;
    d->on_change = on_change;
    d->arg = arg;
    if (cmh_discovery_check_opts(opts, err, sizeof err) != 0) {
        if (log != NULL)
            CMH_LOG(log, CMH_LOG_ERROR, "bad Kubernetes discovery settings", CMH_STR("error", err));
        return -EINVAL;
    }
    struct cmh_k8s_api_opts ao = {
        .server = opts->server,
        .token_file = opts->token_file,
        .ca_file = opts->ca_file,
        .token_max_age_ms = opts->token_max_age_ms ? opts->token_max_age_ms : DEFAULT_TOKEN_AGE};
    if (cmh_k8s_api_init(&d->api, &ao) != 0)
        rc = -ENOMEM; /* the server was checked */
    d->ns = cmh_strdup_opt(opts->namespace_name ? opts->namespace_name : DEFAULT_NAMESPACE, &rc);
    d->selector =
        cmh_strdup_opt(opts->label_selector ? opts->label_selector : DEFAULT_SELECTOR, &rc);
    d->set = cmh_discovery_set_build(&d->pods, 0);
    if (rc != 0 || d->set == NULL) {
        rc = -ENOMEM;
        goto fail;
    }
    d->watch_timeout_ms = opts->watch_timeout_ms ? opts->watch_timeout_ms : DEFAULT_WATCH_MS;
    d->request_timeout_ms =
        opts->request_timeout_ms ? opts->request_timeout_ms : DEFAULT_REQUEST_MS;
    d->backoff_base_ms = opts->backoff_base_ms ? opts->backoff_base_ms : DEFAULT_BASE_MS;
    d->backoff_cap_ms = opts->backoff_cap_ms ? opts->backoff_cap_ms : DEFAULT_CAP_MS;
    if (d->backoff_cap_ms < d->backoff_base_ms)
        d->backoff_cap_ms = d->backoff_base_ms;
    d->page_limit = opts->page_limit ? opts->page_limit : DEFAULT_PAGE;
    d->pods.max = d->listing.max = opts->max_pods ? opts->max_pods : CMH_DISCOVERY_MAX_PODS;
    d->rng = cmh_rng_seed(opts->seed);
    d->st.state = "listing";
    /* uv_timer_init cannot fail (libuv documents no error for it). */
    uv_timer_init(loop, &d->retry);
    uv_timer_init(loop, &d->notify);
    d->open_handles = 2;
    d->started = true;
    if (log != NULL)
        CMH_LOG(log, CMH_LOG_INFO, "kubernetes discovery starting",
                CMH_URL("server", d->api.server), CMH_STR("namespace", d->ns),
                CMH_STR("label_selector", d->selector));
    /* The first request starts from the loop, never inside this call. */
    d->mode = MODE_LIST;
    schedule(d, false);
    return 0;
fail:
    free_all(d);
    return rc;
}

static void closed_one(struct cmh_discovery *d)
{
    if (--d->open_handles > 0)
        return;
    free_all(d);
    if (d->close_cb != NULL)
        d->close_cb(d);
}

static void on_retry_closed(uv_handle_t *h)
{
    closed_one(container_of((uv_timer_t *)h, struct cmh_discovery, retry));
}

static void on_notify_closed(uv_handle_t *h)
{
    closed_one(container_of((uv_timer_t *)h, struct cmh_discovery, notify));
}

void cmh_discovery_close(struct cmh_discovery *d, cmh_discovery_close_cb close_cb)
{
    if (!d->started || d->stopping)
        return;
    d->stopping = true;
    d->close_cb = close_cb;
    d->st.state = "stopped";
    if (d->in_flight)
        cmh_curl_uv_cancel(d->curl, &d->req.curl);
    d->in_flight = false;
    uv_timer_stop(&d->retry);
    uv_timer_stop(&d->notify);
    uv_close((uv_handle_t *)&d->retry, on_retry_closed);
    uv_close((uv_handle_t *)&d->notify, on_notify_closed);
}

const struct cmh_discovery_target *cmh_discovery_targets(const struct cmh_discovery *d, size_t *n,
                                                         uint64_t *generation)
{
    if (d->set == NULL) {
        *n = 0;
        if (generation != NULL)
            *generation = 0;
        return NULL;
    }
    *n = d->set->n;
    if (generation != NULL)
        *generation = d->set->generation;
    return d->set->v;
}

struct cmh_discovery_set *cmh_discovery_acquire(struct cmh_discovery *d)
{
    if (d->set == NULL)
        return NULL;
    /* A round takes the pods as they are now; on_change still fires for this set. */
    if (!d->stopping && rebuild(d))
        d->unnotified = true;
    log_refused(d);
    d->set->refs++;
    return d->set;
}

void cmh_discovery_status(const struct cmh_discovery *d, struct cmh_discovery_status *st)
{
    *st = d->st;
    st->synced = d->synced;
    st->watching = d->watching;
    st->pods = d->pods.n;
    st->pods_refused = d->pods.refused;
    st->max_pods = d->pods.max;
    st->targets = d->pods.targets; /* the set a round acquires now */
    st->generation = d->set != NULL ? d->set->generation : 0;
    st->errors = d->err.count;
    st->last_error = d->err.text;
}
