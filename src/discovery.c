/* Kubernetes list+watch of the aws-node pods. A full list (paginated) gives the pods and a
 * resourceVersion; a watch from there streams newline-delimited JSON events that keep the map
 * current; a 410 Gone (as an ERROR event or an HTTP status) forces a fresh list. Every error keeps
 * the last known pods and retries after a full-jitter backoff. The JSON-facing module: the only
 * one besides aws_creds that includes jansson. */
#include "cmh/discovery.h"

#include "cmh/alloc.h"
#include "cmh/k8s_token.h"
#include "cmh/rng.h"
#include "cmh/config.h"
#include "cmh/log.h"

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

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

#define DEFAULT_NAMESPACE  "kube-system"
#define DEFAULT_SELECTOR   "k8s-app=aws-node"
#define DEFAULT_WATCH_MS   (5 * 60 * 1000ull)
#define DEFAULT_REQUEST_MS (30 * 1000ull)
#define DEFAULT_BASE_MS    500ull
#define DEFAULT_CAP_MS     (30 * 1000ull)
#define DEFAULT_TOKEN_AGE  (60 * 1000ull)
#define DEFAULT_PAGE       500
#define LIST_MAX_BODY      (256u * 1024 * 1024)
#define NAME_MAX_LEN       253

enum { MODE_LIST, MODE_WATCH };

/* ---- the pods map (pure) ---- */

static size_t pods_find(const struct cmh_discovery_pods *pods, const char *name, bool *found)
{
    size_t lo = 0, hi = pods->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(pods->v[mid].name, name);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
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
}

/* Inserts or replaces; *changed says whether anything differs from before. */
enum { PUT_KEPT, PUT_ADDED, PUT_REFUSED };

/* Adds or updates a pod. Returns PUT_KEPT (known pod, *changed says whether it changed),
 * PUT_ADDED, PUT_REFUSED (new, but max pods are kept already), or -ENOMEM. */
static int pods_put(struct cmh_discovery_pods *pods, const char *name, const char *node,
                    const char *ip, bool running, bool *changed)
{
    bool found;
    size_t i = pods_find(pods, name, &found);
    if (found) {
        struct cmh_discovery_pod *p = &pods->v[i];
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
        snprintf(p->ip, sizeof p->ip, "%s", ip);
        p->running = running;
        *changed = true;
        return PUT_KEPT;
    }
    if (pods->max != 0 && pods->n >= pods->max) {
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
        .name = cmh_strdup(name), .node = cmh_strdup(node), .running = running};
    if (p.name == NULL || p.node == NULL) {
        pod_free(&p);
        return -ENOMEM;
    }
    snprintf(p.ip, sizeof p.ip, "%s", ip);
    memmove(&pods->v[i + 1], &pods->v[i], (pods->n - i) * sizeof *pods->v);
    pods->v[i] = p;
    pods->n++;
    *changed = true;
    return PUT_ADDED;
}

static bool pods_del(struct cmh_discovery_pods *pods, const char *name)
{
    bool found;
    size_t i = pods_find(pods, name, &found);
    if (!found)
        return false;
    pod_free(&pods->v[i]);
    memmove(&pods->v[i], &pods->v[i + 1], (pods->n - i - 1) * sizeof *pods->v);
    pods->n--;
    return true;
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

int cmh_discovery_parse_list(struct cmh_discovery_pods *pods, const char *buf, size_t len, char *rv,
                             size_t rvlen, char *cont, size_t contlen)
{
    int rc = 0;
    json_error_t jerr;
    json_t *root = json_loadb(buf, len, 0, &jerr);
    if (!json_is_object(root)) {
        rc = -EBADMSG;
        goto out;
    }
    json_t *meta = json_object_get(root, "metadata");
    json_t *items = json_object_get(root, "items");
    if (!json_is_object(meta) || !(json_is_array(items) || json_is_null(items))) {
        rc = -EBADMSG;
        goto out;
    }
    rc = copy_field(rv, rvlen, jstr(meta, "resourceVersion"));
    if (rc == 0)
        rc = copy_field(cont, contlen, jstr(meta, "continue"));
    if (rc != 0)
        goto out;
    size_t i;
    json_t *item;
    json_array_foreach(items, i, item)
    {
        struct pod_view v;
        bool changed;
        if (pod_view(item, &v) != 0)
            continue; /* one odd item does not hide the others */
        rc = pods_put(pods, v.name, v.node, v.ip, v.running, &changed);
        if (rc < 0)
            goto out;
        pods->refused += rc == PUT_REFUSED;
        rc = 0;
    }
out:
    json_decref(root);
    return rc;
}

int cmh_discovery_parse_event(struct cmh_discovery_pods *pods, const char *line, size_t len,
                              struct cmh_discovery_event *ev)
{
    int rc = 0;
    json_error_t jerr;
    json_t *root = json_loadb(line, len, 0, &jerr);
    memset(ev, 0, sizeof *ev);
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

static bool is_target(const struct cmh_discovery_pod *p)
{
    return p->running && p->ip[0] != '\0';
}

struct cmh_discovery_set *cmh_discovery_set_build(const struct cmh_discovery_pods *pods,
                                                  uint64_t generation)
{
    size_t n = 0, bytes = 0;
    for (size_t i = 0; i < pods->n; i++) {
        const struct cmh_discovery_pod *p = &pods->v[i];
        if (!is_target(p))
            continue;
        n++;
        bytes += strlen(p->name) + strlen(p->node) + strlen(p->ip) + 3;
    }
    /* One block: the header, the array, then the strings. */
    size_t head = sizeof(struct cmh_discovery_set) + n * sizeof(struct cmh_discovery_target);
    struct cmh_discovery_set *set = cmh_malloc(head + bytes);
    if (set == NULL)
        return NULL;
    set->refs = 1;
    set->generation = generation;
    set->n = n;
    set->v = (struct cmh_discovery_target *)(set + 1);
    char *s = (char *)set + head;
    size_t k = 0;
    for (size_t i = 0; i < pods->n; i++) {
        const struct cmh_discovery_pod *p = &pods->v[i];
        if (!is_target(p))
            continue;
        const char *src[3] = {p->node, p->name, p->ip};
        const char **dst[3] = {&set->v[k].node, &set->v[k].pod, &set->v[k].ip};
        for (int j = 0; j < 3; j++) {
            size_t len = strlen(src[j]) + 1;
            memcpy(s, src[j], len);
            *dst[j] = s;
            s += len;
        }
        k++;
    }
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

int cmh_discovery_server_url(char *buf, size_t len, const char *host, const char *port)
{
    if (host == NULL || host[0] == '\0' || port == NULL || port[0] == '\0')
        return -EINVAL;
    char *end;
    errno = 0;
    unsigned long p = strtoul(port, &end, 10);
    if (errno != 0 || *end != '\0' || p == 0 || p > 65535 || !isdigit((unsigned char)port[0]))
        return -EINVAL;
    if (strpbrk(host, "/?#@ \t\r\n[]") != NULL)
        return -EINVAL;
    bool v6 = strchr(host, ':') != NULL;
    int n = snprintf(buf, len, v6 ? "https://[%s]:%lu" : "https://%s:%lu", host, p);
    return n < 0 || (size_t)n >= len ? -ENOSPC : 0;
}

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

static void set_error(struct cmh_discovery *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_error(struct cmh_discovery *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->last_error, sizeof d->last_error, fmt, ap);
    va_end(ap);
    d->st.errors++;
    if (d->log != NULL)
        CMH_LOG(d->log, CMH_LOG_WARN, "kubernetes discovery error", CMH_STR("error", d->last_error),
                CMH_UINT("attempt", d->attempt + 1), CMH_UINT("pods_kept", d->pods.n));
}

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

static void publish(struct cmh_discovery *d)
{
    struct cmh_discovery_set *set = cmh_discovery_set_build(&d->pods, d->set->generation + 1);
    if (set == NULL) {
        /* Keep the old set; try again on the next change. */
        d->dirty = true;
        return;
    }
    if (d->pods.refused > d->refused_logged && d->log != NULL)
        CMH_LOG(d->log, CMH_LOG_WARN,
                "more aws-node pods than SCRAPE_MAX_NODES: the ones beyond it are not scraped",
                CMH_UINT("max_nodes", d->pods.max), CMH_UINT("not_kept", d->pods.refused));
    d->refused_logged = d->pods.refused;
    bool was_empty = d->st.no_pods;
    d->st.no_pods = d->synced && d->pods.n == 0;
    if (d->st.no_pods && !was_empty && d->log != NULL)
        CMH_LOG(d->log, CMH_LOG_WARN,
                "no aws-node pods: the Kubernetes API lists no pod matching the selector (EKS Auto "
                "Mode has none); nothing to scrape",
                CMH_STR("namespace", d->ns), CMH_STR("label_selector", d->selector));
    /* The first list is always told, even when it found nothing: a caller waits for it. */
    if (set_equal(set, d->set) && (d->sync_told || !d->synced)) {
        cmh_discovery_set_release(set);
        return;
    }
    d->sync_told = d->synced;
    cmh_discovery_set_release(d->set);
    d->set = set;
    if (d->log != NULL)
        CMH_LOG(d->log, CMH_LOG_INFO, "scrape targets changed", CMH_UINT("targets", set->n),
                CMH_UINT("pods", d->pods.n), CMH_UINT("generation", set->generation));
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

static void mark_dirty(struct cmh_discovery *d)
{
    d->dirty = true;
    if (!uv_is_active((uv_handle_t *)&d->notify))
        uv_timer_start(&d->notify, on_notify, 0, 0);
}

/* Reads the token when due (see cmh_k8s_token). Synchronous: a few bytes from the kubelet's
 * tmpfs, at most once a minute or after a refusal. */
static void refresh_token(struct cmh_discovery *d)
{
    char why[300];
    int rc = cmh_k8s_token_refresh(&d->tok, uv_now(d->loop), why, sizeof why);
    if (rc < 0)
        set_error(d, "%s", why);
    else if (rc == 1 && d->log != NULL)
        CMH_LOG(d->log, CMH_LOG_INFO, "service-account token rotated",
                CMH_STR("file", d->tok.file));
    d->st.token_reads = d->tok.reads;
}

/* Appends s to the growing buffer, percent-encoding it when enc is set. */
struct sbuf {
    char *p;
    size_t len, cap;
    int err;
};

static void sb_add(struct sbuf *b, const char *s, bool enc)
{
    for (; *s && b->err == 0; s++) {
        char tmp[4];
        size_t n = 1;
        unsigned char c = (unsigned char)*s;
        tmp[0] = (char)c;
        if (enc && !(isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~')) {
            static const char hex[] = "0123456789ABCDEF";
            tmp[0] = '%';
            tmp[1] = hex[c >> 4];
            tmp[2] = hex[c & 15];
            n = 3;
        }
        if (b->len + n + 1 > b->cap) {
            size_t cap = b->cap ? b->cap * 2 : 256;
            char *p = cmh_realloc(b->p, cap);
            if (p == NULL) {
                b->err = -ENOMEM;
                return;
            }
            b->p = p;
            b->cap = cap;
        }
        memcpy(b->p + b->len, tmp, n);
        b->len += n;
        b->p[b->len] = '\0';
    }
}

static int build_url(struct cmh_discovery *d, char **out)
{
    struct sbuf b = {0};
    char num[32];
    sb_add(&b, d->server, false);
    sb_add(&b, "/api/v1/namespaces/", false);
    sb_add(&b, d->ns, true);
    sb_add(&b, "/pods?labelSelector=", false);
    sb_add(&b, d->selector, true);
    if (d->mode == MODE_LIST) {
        snprintf(num, sizeof num, "%zu", d->page_limit);
        sb_add(&b, "&limit=", false);
        sb_add(&b, num, false);
        if (d->cont != NULL && d->cont[0] != '\0') {
            sb_add(&b, "&continue=", false);
            sb_add(&b, d->cont, true);
        }
    } else {
        snprintf(num, sizeof num, "%llu", (unsigned long long)((d->watch_timeout_ms + 999) / 1000));
        sb_add(&b, "&watch=1&allowWatchBookmarks=true&resourceVersion=", false);
        sb_add(&b, d->rv, true);
        sb_add(&b, "&timeoutSeconds=", false);
        sb_add(&b, num, false);
    }
    if (b.err != 0) {
        cmh_free(b.p);
        return b.err;
    }
    *out = b.p;
    return 0;
}

static void on_done(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res);
static int on_watch_data(struct cmh_curl_uv_req *req, long status, const char *data, size_t len);

static void start_request(struct cmh_discovery *d)
{
    int rc;
    if (d->stopping || d->in_flight)
        return;
    if (d->rv[0] == '\0')
        d->mode = MODE_LIST;
    refresh_token(d);
    cmh_free(d->url);
    d->url = NULL;
    rc = build_url(d, &d->url);
    if (rc != 0)
        goto fail;
    size_t nh = 0;
    d->headers[nh++] = "Accept: application/json";
    if (d->tok.header != NULL)
        d->headers[nh++] = d->tok.header;
    memset(&d->req, 0, sizeof d->req);
    d->req.method = "GET";
    d->req.url = d->url;
    d->req.headers = d->headers;
    d->req.nheaders = nh;
    d->req.ca_file = d->ca_file;
    if (d->mode == MODE_LIST) {
        d->req.max_body = LIST_MAX_BODY;
        d->req.timeout_ms = d->request_timeout_ms;
        d->st.state = "listing";
    } else {
        /* The server ends the watch at timeoutSeconds; the grace catches a stalled stream. */
        uint64_t grace = d->watch_timeout_ms / 4;
        grace = grace < 2000 ? 2000 : grace > 30000 ? 30000 : grace;
        d->req.timeout_ms = d->watch_timeout_ms + grace;
        d->req.on_data = on_watch_data;
        d->line_len = 0;
        d->abort_gone = d->abort_bad = d->abort_room = false;
        d->watch_got_data = false;
        d->st.watches++;
        d->st.state = "watching";
    }
    rc = cmh_curl_uv_start(d->curl, &d->req, on_done);
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
        set_error(d, "bad watch event (%s): %.*s", rc == -ENOMEM ? "out of memory" : "not JSON",
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

static int on_watch_data(struct cmh_curl_uv_req *req, long status, const char *data, size_t len)
{
    struct cmh_discovery *d = container_of(req, struct cmh_discovery, req);
    if (status != 200)
        return 0; /* an error body: the status decides in on_done */
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

static void list_done(struct cmh_discovery *d, const struct cmh_curl_uv_response *res)
{
    char rv[sizeof d->rv];
    char cont[4096];
    if (res->status == 410) {
        /* The continue token expired: start the list again from the beginning. */
        cmh_discovery_pods_free(&d->listing);
        cmh_free(d->cont);
        d->cont = NULL;
        d->st.relists_gone++;
        schedule(d, true);
        return;
    }
    if (res->status != 200) {
        if (res->status == 401 || res->status == 403)
            cmh_k8s_token_refused(&d->tok);
        if (res->error != CMH_CURL_OK)
            set_error(d, "pod list failed: %s (%s)", cmh_curl_uv_error_name(res->error),
                      res->error_text);
        else
            set_error(d, "pod list answered HTTP %ld: %.120s", res->status, res->body);
        goto retry;
    }
    int rc = cmh_discovery_parse_list(&d->listing, res->body, res->body_len, rv, sizeof rv, cont,
                                      sizeof cont);
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
                  (unsigned long long)d->req.timeout_ms);
        schedule(d, false);
        return;
    }
    if (res->status == 401 || res->status == 403)
        cmh_k8s_token_refused(&d->tok);
    if (res->error != CMH_CURL_OK)
        set_error(d, "pod watch failed: %s (%s)", cmh_curl_uv_error_name(res->error),
                  res->error_text);
    else if (res->status != 200)
        set_error(d, "pod watch answered HTTP %ld", res->status);
    /* Resume from the last resourceVersion; a 410 then sends us to a fresh list. */
    schedule(d, !d->watch_got_data || res->status != 200);
}

static void on_done(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res)
{
    struct cmh_discovery *d = container_of(req, struct cmh_discovery, req);
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
    cmh_discovery_set_release(d->set);
    d->set = NULL;
    cmh_k8s_token_free(&d->tok);
    char **strs[] = {&d->server, &d->ns, &d->selector, &d->ca_file, &d->cont, &d->url, &d->line};
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
    d->server = cmh_strdup_opt(opts->server, &rc);
    d->ns = cmh_strdup_opt(opts->namespace_name ? opts->namespace_name : DEFAULT_NAMESPACE, &rc);
    d->selector =
        cmh_strdup_opt(opts->label_selector ? opts->label_selector : DEFAULT_SELECTOR, &rc);
    d->ca_file = cmh_strdup_opt(opts->ca_file, &rc);
    if (cmh_k8s_token_init(&d->tok, opts->token_file,
                           opts->token_max_age_ms ? opts->token_max_age_ms : DEFAULT_TOKEN_AGE))
        rc = -ENOMEM;
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
    d->last_error[0] = '\0';
    d->st.state = "listing";
    /* uv_timer_init cannot fail (libuv documents no error for it). */
    uv_timer_init(loop, &d->retry);
    uv_timer_init(loop, &d->notify);
    d->open_handles = 2;
    d->started = true;
    if (log != NULL)
        CMH_LOG(log, CMH_LOG_INFO, "kubernetes discovery starting", CMH_STR("server", d->server),
                CMH_STR("namespace", d->ns), CMH_STR("label_selector", d->selector));
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

void cmh_discovery_stop(struct cmh_discovery *d, cmh_discovery_close_cb close_cb)
{
    if (!d->started || d->stopping)
        return;
    d->stopping = true;
    d->close_cb = close_cb;
    d->st.state = "stopped";
    if (d->in_flight)
        cmh_curl_uv_cancel(d->curl, &d->req);
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
    if (d->set != NULL)
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
    st->targets = d->set != NULL ? d->set->n : 0;
    st->generation = d->set != NULL ? d->set->generation : 0;
    st->last_error = d->last_error;
}
