/* Kubernetes list+watch of the aws-node pods. A full list (paginated) gives the pods and a
 * resourceVersion; a watch from there streams newline-delimited JSON events that keep the map
 * current; a 410 Gone (as an ERROR event or an HTTP status) forces a fresh list. Every error keeps
 * the last known pods and retries after a full-jitter backoff. The pods store, the parsers and
 * the target sets, which do no I/O, are in discovery_pods.c. */
#include "cmh/k8s/discovery.h"
#include "cmh/k8s/discovery_int.h"

#include "cmh/core/container_of.h"
#include "cmh/core/alloc.h"
#include "cmh/core/buf.h"
#include "cmh/core/rng.h"
#include "cmh/core/config.h"
#include "cmh/core/log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
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
#define PUBLISH_MIN_MS       1000ull
#define CHANGE_LOG_WINDOW_MS (10 * 1000ull)

enum { MODE_LIST, MODE_WATCH };

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
