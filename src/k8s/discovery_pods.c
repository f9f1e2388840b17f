/* The pure half of discovery (include/cmh/k8s/discovery.h, discovery_int.h): the pods store, an
 * AVL tree by name; the PodList page parsed as it streams; the watch event parser; the target
 * sets built from the store. No I/O, so the fuzzers and benchmarks run it alone. A JSON-facing
 * file: includes jansson. */
#include "cmh/k8s/discovery.h"
#include "cmh/k8s/discovery_int.h"

#include "cmh/core/alloc.h"

#include <jansson.h>

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_LEN 253

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
    struct cmh_discovery_pod *v = cmh_grow(pods->v, &pods->cap, pods->n + 1, sizeof *v, 16);
    if (v == NULL)
        return -ENOMEM;
    pods->v = v;
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

void cmh_discovery_set_release(struct cmh_discovery_set *set)
{
    if (set != NULL && --set->refs == 0)
        cmh_free(set);
}
