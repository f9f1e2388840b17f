#include "cmh/scrape/scrape_mode.h"
#include "cmh/scrape/scrape_mode_int.h"

#include "cmh/core/alloc.h"

#include <errno.h>
#include <string.h>
#include <strings.h>

static const char *const mode_names[] = {"auto", "direct", "proxy"};

const char *cmh_scrape_mode_name(enum cmh_scrape_mode m)
{
    return (unsigned)m < sizeof mode_names / sizeof mode_names[0] ? mode_names[m] : "unknown";
}

enum cmh_scrape_result cmh_scrape_mode_proxy_result(enum cmh_curl_uv_error err, long status,
                                                    enum cmh_scrape_mode_abort abort,
                                                    int content_type_ok)
{
    /* What we cut short ourselves says more than the error curl reports for it. */
    switch (abort) {
    case CMH_PROXY_ABORT_TOO_LARGE:
        return CMH_SCRAPE_BODY_TOO_LARGE;
    case CMH_PROXY_ABORT_CONSUMER:
        return CMH_SCRAPE_PARSE_ERROR;
    case CMH_PROXY_ABORT_DEADLINE:
        return CMH_SCRAPE_RESPONSE_TIMEOUT;
    case CMH_PROXY_ABORT_ENCODING:
        return CMH_SCRAPE_CONTENT_ENCODING;
    case CMH_PROXY_ABORT_GZIP_TOO_LARGE:
        return CMH_SCRAPE_GZIP_TOO_LARGE;
    case CMH_PROXY_ABORT_GZIP_ERROR:
        return CMH_SCRAPE_GZIP_ERROR;
    case CMH_PROXY_ABORT_STATUS:
    case CMH_PROXY_ABORT_NONE:
        break;
    }
    if (status != 0 && status != 200) {
        /* The API server's own answers when the dial to the pod fails or times out. */
        if (status == 502 || status == 503)
            return CMH_SCRAPE_CONNECT_ERROR;
        if (status == 504)
            return CMH_SCRAPE_CONNECT_TIMEOUT;
        return CMH_SCRAPE_HTTP_STATUS;
    }
    switch (err) {
    case CMH_CURL_OK:
        if (status != 200)
            return CMH_SCRAPE_MALFORMED_HTTP;
        return content_type_ok ? CMH_SCRAPE_OK : CMH_SCRAPE_CONTENT_TYPE;
    case CMH_CURL_ERR_TIMEOUT:
        /* With one shared connection, a timeout is the response's: connecting to the API server
         * is not connecting to the node. */
        return CMH_SCRAPE_RESPONSE_TIMEOUT;
    case CMH_CURL_ERR_CONNECT:
    case CMH_CURL_ERR_TLS:
        return CMH_SCRAPE_CONNECT_ERROR;
    case CMH_CURL_ERR_RESET:
        /* A 200 whose body broke off is a truncated response; no status, a broken connection. */
        return status == 200 ? CMH_SCRAPE_TRUNCATED : CMH_SCRAPE_RESET;
    case CMH_CURL_ERR_TOO_LARGE:
        return CMH_SCRAPE_BODY_TOO_LARGE;
    case CMH_CURL_ERR_PROTOCOL:
        /* Over HTTP/2 this is mostly RST_STREAM: how a proxy says the pod's answer broke off
         * (libcurl then drops the partial body, and with it the status). */
        return status == 200 ? CMH_SCRAPE_TRUNCATED : CMH_SCRAPE_RESET;
    case CMH_CURL_ERR_CANCELLED:
        return CMH_SCRAPE_RESPONSE_TIMEOUT;
    case CMH_CURL_ERR_OTHER:
    case CMH_CURL_ERR_COUNT:
        break;
    }
    return CMH_SCRAPE_CONNECT_ERROR;
}

int cmh_scrape_mode_content_type_ok(const char *ct)
{
    if (ct == NULL)
        return 1;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    if (strncasecmp(ct, "text/plain", 10) != 0)
        return 0;
    ct += 10;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    return *ct == '\0' || *ct == ';';
}

int cmh_scrape_mode_is_connect_failure(enum cmh_scrape_result r)
{
    return r == CMH_SCRAPE_CONNECT_REFUSED || r == CMH_SCRAPE_CONNECT_TIMEOUT ||
           r == CMH_SCRAPE_CONNECT_ERROR;
}

/* FNV-1a: node names are short and not chosen by an attacker who could profit from collisions. */
static size_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return (size_t)h;
}

void cmh_fallback_init(struct cmh_fallback *f, uint64_t recheck_ms)
{
    memset(f, 0, sizeof *f);
    f->recheck_ms = recheck_ms;
}

void cmh_fallback_free(struct cmh_fallback *f)
{
    for (size_t i = 0; i < f->cap; i++)
        cmh_free(f->v[i].name);
    cmh_free(f->v);
    f->v = NULL;
    f->cap = f->n = 0;
}

static struct cmh_fallback_entry *find(const struct cmh_fallback *f, const char *name)
{
    if (f->cap == 0)
        return NULL;
    size_t mask = f->cap - 1;
    for (size_t i = hash_name(name) & mask;; i = (i + 1) & mask) {
        if (f->v[i].name == NULL)
            return NULL;
        if (strcmp(f->v[i].name, name) == 0)
            return &f->v[i];
    }
}

/* Places e (its name moved in) into v of capacity cap; there is always a free slot. */
static struct cmh_fallback_entry *place(struct cmh_fallback_entry *v, size_t cap,
                                        const struct cmh_fallback_entry *e)
{
    size_t mask = cap - 1;
    size_t i = hash_name(e->name) & mask;
    while (v[i].name != NULL)
        i = (i + 1) & mask;
    v[i] = *e;
    return &v[i];
}

/* Rebuilds the table with capacity cap, keeping the entries for which keep says so. */
static int rebuild(struct cmh_fallback *f, size_t cap, uint64_t keep_round)
{
    struct cmh_fallback_entry *v = NULL;
    if (cap > 0) {
        v = cmh_calloc(cap, sizeof *v);
        if (v == NULL)
            return -ENOMEM;
    }
    size_t n = 0;
    for (size_t i = 0; i < f->cap; i++) {
        struct cmh_fallback_entry *e = &f->v[i];
        if (e->name == NULL)
            continue;
        if (e->seen_round >= keep_round && v != NULL) {
            place(v, cap, e);
            n++;
        } else {
            cmh_free(e->name);
        }
    }
    cmh_free(f->v);
    f->v = v;
    f->cap = cap;
    f->n = n;
    return 0;
}

int cmh_fallback_round_begin(struct cmh_fallback *f)
{
    int rc = 0;
    /* Nodes not routed in the round that just ended are gone from the target set. */
    size_t stale = 0;
    for (size_t i = 0; i < f->cap; i++)
        stale += f->v[i].name != NULL && f->v[i].seen_round < f->round;
    if (stale > 0)
        rc = rebuild(f, f->cap, f->round);
    f->round++;
    return rc;
}

enum cmh_route cmh_fallback_route(struct cmh_fallback *f, const char *name, uint64_t now_ms)
{
    struct cmh_fallback_entry *e = find(f, name);
    if (e == NULL)
        return CMH_ROUTE_DIRECT;
    e->seen_round = f->round;
    return now_ms >= e->recheck_at_ms ? CMH_ROUTE_DIRECT : CMH_ROUTE_PROXY;
}

int cmh_fallback_on_proxy(const struct cmh_fallback *f, const char *name)
{
    return find(f, name) != NULL;
}

/* Removes e by backward-shift deletion, so lookups never need tombstones. */
static void remove_entry(struct cmh_fallback *f, struct cmh_fallback_entry *e)
{
    size_t mask = f->cap - 1;
    size_t i = (size_t)(e - f->v);
    cmh_free(e->name);
    f->v[i].name = NULL;
    f->n--;
    for (size_t j = (i + 1) & mask; f->v[j].name != NULL; j = (j + 1) & mask) {
        size_t k = hash_name(f->v[j].name) & mask;
        /* The entry at j may move to the hole at i unless its home k lies cyclically in (i, j]. */
        int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (!stays) {
            f->v[i] = f->v[j];
            f->v[j].name = NULL;
            i = j;
        }
    }
}

int cmh_fallback_direct_result(struct cmh_fallback *f, const char *name, enum cmh_scrape_result r,
                               uint64_t now_ms, enum cmh_fallback_event *ev)
{
    struct cmh_fallback_entry *e = find(f, name);
    int failed = cmh_scrape_mode_is_connect_failure(r);
    *ev = CMH_FALLBACK_NONE;
    if (e != NULL) {
        if (failed) {
            e->recheck_at_ms = now_ms + f->recheck_ms;
            e->seen_round = f->round;
            *ev = CMH_FALLBACK_STAYED;
        } else {
            /* The node's port answered (whatever it said): the direct path works again. */
            remove_entry(f, e);
            *ev = CMH_FALLBACK_BACK;
        }
        return 0;
    }
    if (!failed)
        return 0;
    /* Load at most one half keeps the linear probes short. */
    if ((f->n + 1) * 2 > f->cap) {
        int rc = rebuild(f, f->cap ? f->cap * 2 : 16, 0);
        if (rc != 0)
            return rc;
    }
    struct cmh_fallback_entry ne = {cmh_strdup(name), now_ms + f->recheck_ms, f->round};
    if (ne.name == NULL)
        return -ENOMEM;
    place(f->v, f->cap, &ne);
    f->n++;
    *ev = CMH_FALLBACK_SWITCHED;
    return 0;
}
