/* Scraping through the API server's pod proxy: one curl_uv instance limited to one connection, so
 * every scrape is an HTTP/2 stream on it; a fixed pool of request slots (the stream budget) and a
 * FIFO of the scrapes waiting for one. */
#include "cmh/scrape/proxy_scrape.h"
#include "cmh/scrape/proxy_scrape_int.h"

#include "cmh/core/container_of.h"
#include "cmh/core/alloc.h"
#include "cmh/core/config.h"
#include "cmh/k8s/api.h"
#include "cmh/core/log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define DEFAULT_STREAMS   100
#define DEFAULT_TOKEN_AGE 60000

struct cmh_proxy_scrape_req {
    struct cmh_k8s_api_req req;
    struct cmh_proxy_scrape *p;
    struct cmh_proxy_scrape_req *next_free;
    size_t target;
    void *ctx;
    int began;
    long status;
    enum cmh_scrape_mode_abort abort;
    uint64_t bytes;
    uint64_t start_ns;
    struct cmh_gunzip *gz; /* while a gzip body is read; from p->gz */
    char url[640];
};

/* A DNS-1123 subdomain (pod names) or label (namespaces): lower-case alphanumerics, '-' and '.'. */
static int dns_name(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

int cmh_proxy_scrape_url(char *buf, size_t len, const char *server, const char *ns, const char *pod,
                         uint16_t port)
{
    if (server == NULL || ns == NULL || pod == NULL || !dns_name(ns, 63) || !dns_name(pod, 253))
        return -EINVAL;
    int n = snprintf(buf, len, "%s/api/v1/namespaces/%s/pods/%s:%u/proxy/metrics", server, ns, pod,
                     (unsigned)port);
    return n < 0 || (size_t)n >= len ? -ENOSPC : 0;
}

/* Reads the token when due (see cmh_k8s_token). A few bytes from the kubelet's tmpfs, at most
 * once a minute or after a refusal: a blocking read is fine. A failure is logged once until it
 * changes or a read succeeds. */
static void refresh_token(struct cmh_proxy_scrape *p)
{
    char why[256];
    int rc = cmh_k8s_api_refresh(&p->api, uv_now(p->loop), why, sizeof why);
    if (rc < 0) {
        if (strcmp(why, p->last_token_error) != 0)
            CMH_LOG(p->log, CMH_LOG_WARN, "proxy scraping: cannot read the token",
                    CMH_STR("error", why));
        snprintf(p->last_token_error, sizeof p->last_token_error, "%s", why);
    } else if (p->api.tok.reads != p->stats.token_reads) {
        p->last_token_error[0] = '\0';
    }
    p->stats.token_reads = p->api.tok.reads;
}

static void on_req_done(struct cmh_curl_uv_req *creq, const struct cmh_curl_uv_response *res);

static int to_consumer(void *arg, const char *buf, size_t len)
{
    struct cmh_proxy_scrape_req *r = arg;
    struct cmh_proxy_scrape *p = r->p;
    return p->consumer.body != NULL ? p->consumer.body(r->ctx, buf, len) : 0;
}

/* The Content-Encoding of the response: gzip gets an inflater, identity nothing, anything else (a
 * second gzip, a list, another coding) aborts. */
static int check_coding(struct cmh_proxy_scrape_req *r)
{
    struct cmh_proxy_scrape *p = r->p;
    size_t amount = 0;
    int gzip = 0;
    for (size_t i = 0; i == 0 || i < amount; i++) {
        const char *v = cmh_curl_uv_header(&r->req.curl, "Content-Encoding", i, &amount);
        if (v == NULL)
            break;
        int coding = cmh_gzip_coding(v, strlen(v));
        if (coding < 0 || (coding == 1 && gzip)) {
            r->abort = CMH_PROXY_ABORT_ENCODING;
            return -1;
        }
        gzip |= coding;
    }
    if (gzip) {
        /* The inflated body has the same bound as one sent as is. */
        r->gz = cmh_gunzip_take(&p->gz, p->max_body);
        if (r->gz == NULL) {
            r->abort = CMH_PROXY_ABORT_CONSUMER;
            return -1;
        }
    }
    return 0;
}

/* A gunzip failure as the reason we aborted. */
static enum cmh_scrape_mode_abort gunzip_abort(int rc)
{
    switch (rc) {
    case CMH_GUNZIP_ERR_LIMIT:
        return CMH_PROXY_ABORT_GZIP_TOO_LARGE;
    case CMH_GUNZIP_ERR_DATA:
        return CMH_PROXY_ABORT_GZIP_ERROR;
    default:
        return CMH_PROXY_ABORT_CONSUMER;
    }
}

/* Body bytes as they arrive: begin on the first of a 200, then body; a cap and status check. A
 * gzip body is inflated on its way to the consumer, its inflated size bounded by the same cap. */
static int on_data(struct cmh_curl_uv_req *creq, long status, const char *data, size_t len)
{
    struct cmh_proxy_scrape_req *r = container_of(creq, struct cmh_proxy_scrape_req, req.curl);
    struct cmh_proxy_scrape *p = r->p;
    r->status = status;
    if (status != 200) {
        /* An error page is not read: the stream is reset, the connection stays. */
        r->abort = CMH_PROXY_ABORT_STATUS;
        return -1;
    }
    r->bytes += len;
    if (r->bytes > p->max_body) {
        r->abort = CMH_PROXY_ABORT_TOO_LARGE;
        return -1;
    }
    if (!r->began) {
        if (check_coding(r) != 0)
            return -1;
        if (p->consumer.begin == NULL ||
            p->consumer.begin(p->consumer.arg, r->target, &r->ctx) != 0) {
            r->abort = CMH_PROXY_ABORT_CONSUMER;
            return -1;
        }
        r->began = 1;
    }
    if (r->gz != NULL) {
        int rc = cmh_gunzip_feed(r->gz, data, len, p->gz.out, CMH_GUNZIP_OUT_LEN, to_consumer, r);
        if (rc < 0) {
            r->abort = gunzip_abort(rc);
            return -1;
        }
    } else if (to_consumer(r, data, len) != 0) {
        r->abort = CMH_PROXY_ABORT_CONSUMER;
        return -1;
    }
    return 0;
}

/* Starts job in slot r. Returns 0 or a negative code (then r is still the caller's). */
static int start_req(struct cmh_proxy_scrape *p, struct cmh_proxy_scrape_req *r,
                     const struct cmh_proxy_scrape_job *job)
{
    int rc = cmh_proxy_scrape_url(r->url, sizeof r->url, p->api.server, p->ns, job->pod, job->port);
    if (rc != 0)
        return rc;
    refresh_token(p);
    cmh_k8s_api_begin(&p->api, &r->req, "GET");
    struct cmh_curl_uv_req *c = &r->req.curl;
    c->url = r->url;
    r->req.accept = "Accept: text/plain";
    if (p->gzip)
        r->req.extra = "Accept-Encoding: gzip";
    c->on_data = on_data;
    c->timeout_ms = job->timeout_ms ? job->timeout_ms : p->timeout_ms;
    c->http2 = 1;
    r->target = job->target;
    r->ctx = NULL;
    r->began = 0;
    r->status = 0;
    r->abort = CMH_PROXY_ABORT_NONE;
    r->bytes = 0;
    r->gz = NULL;
    r->start_ns = uv_hrtime();
    rc = cmh_k8s_api_start(&p->api, &p->curl, &r->req, on_req_done);
    if (rc != 0)
        return rc;
    p->inflight++;
    p->stats.requests++;
    return 0;
}

static void report(struct cmh_proxy_scrape *p, size_t target, const struct cmh_scrape_record *rec)
{
    if (p->done != NULL)
        p->done(p, target, rec, p->arg);
}

/* Moves queued jobs into free slots. A job that cannot start fails as a connect error (we never
 * reached the API server with it); we are inside a callback here, never inside start. */
static void pump(struct cmh_proxy_scrape *p)
{
    while (!p->cancelling && !p->closing && p->qlen > 0 && p->free_reqs != NULL) {
        struct cmh_proxy_scrape_job job = p->queue[p->qhead];
        p->qhead = (p->qhead + 1) % p->qcap;
        p->qlen--;
        struct cmh_proxy_scrape_req *r = p->free_reqs;
        p->free_reqs = r->next_free;
        int rc = start_req(p, r, &job);
        if (rc != 0) {
            r->next_free = p->free_reqs;
            p->free_reqs = r;
            CMH_LOG(p->log, CMH_LOG_ERROR, "proxy scrape not started", CMH_STR("pod", job.pod),
                    CMH_INT("error", rc));
            struct cmh_scrape_record rec = {.result = CMH_SCRAPE_CONNECT_ERROR};
            report(p, job.target, &rec);
        }
    }
}

static void on_req_done(struct cmh_curl_uv_req *creq, const struct cmh_curl_uv_response *res)
{
    struct cmh_proxy_scrape_req *r = container_of(creq, struct cmh_proxy_scrape_req, req.curl);
    struct cmh_proxy_scrape *p = r->p;
    long status = r->status ? r->status : res->status;
    if (r->gz != NULL) {
        /* A gzip stream cut short inside a complete response would lose the body's tail. */
        int rc = cmh_gunzip_finish(r->gz);
        if (rc < 0 && res->error == CMH_CURL_OK && r->abort == CMH_PROXY_ABORT_NONE)
            r->abort = gunzip_abort(rc);
        cmh_gunzip_give(&p->gz, r->gz);
        r->gz = NULL;
    }
    int ct_ok = cmh_scrape_mode_content_type_ok(res->content_type);
    enum cmh_scrape_result result =
        cmh_scrape_mode_proxy_result(res->error, status, r->abort, ct_ok);
    if (result == CMH_SCRAPE_OK && !r->began) {
        /* An empty 200: the consumer still sees begin and end, as for the direct engine. */
        if (p->consumer.begin == NULL ||
            p->consumer.begin(p->consumer.arg, r->target, &r->ctx) != 0)
            result = CMH_SCRAPE_PARSE_ERROR;
        else
            r->began = 1;
    }
    if (r->began) {
        int rc = p->consumer.end != NULL ? p->consumer.end(r->ctx, result) : 0;
        if (result == CMH_SCRAPE_OK && rc != 0)
            result = CMH_SCRAPE_PARSE_ERROR;
    }
    if (status == 401) {
        cmh_k8s_api_refused(&p->api);
        p->stats.unauthorized++;
    }
    if (res->http_version == 2)
        p->stats.h2++;
    if (res->new_connections > 0)
        p->stats.connections += (uint64_t)res->new_connections;
    uint64_t us = (uv_hrtime() - r->start_ns) / 1000;
    struct cmh_scrape_record rec = {
        .result = (uint8_t)result,
        .reused = res->new_connections == 0,
        .http_status = (uint16_t)(status > 0 && status < 1000 ? status : 0),
        .duration_us = (uint32_t)(us > UINT32_MAX ? UINT32_MAX : us),
        .bytes = (uint32_t)(r->bytes > UINT32_MAX ? UINT32_MAX : r->bytes),
    };
    size_t target = r->target;
    p->inflight--;
    r->next_free = p->free_reqs;
    p->free_reqs = r;
    pump(p);
    report(p, target, &rec);
}

int cmh_proxy_scrape_init(struct cmh_proxy_scrape *p, uv_loop_t *loop,
                          const struct cmh_proxy_scrape_opts *o,
                          const struct cmh_scrape_consumer *consumer, cmh_proxy_scrape_done_cb done,
                          void *arg, struct cmh_log *log)
{
    memset(p, 0, sizeof *p);
    if (o->server == NULL || o->namespace_name == NULL)
        return -EINVAL;
    p->loop = loop;
    p->log = log;
    p->consumer = *consumer;
    p->done = done;
    p->arg = arg;
    p->timeout_ms = o->timeout_ms ? o->timeout_ms : 5000;
    p->max_body = o->max_body ? o->max_body : 4u << 20;
    p->streams = o->streams ? o->streams : DEFAULT_STREAMS;
    p->gzip = o->gzip;
    struct cmh_k8s_api_opts ao = {.server = o->server,
                                  .token_file = o->token_file,
                                  .ca_file = o->ca_file,
                                  .token_max_age_ms = o->token_max_age_ms ? o->token_max_age_ms
                                                                          : DEFAULT_TOKEN_AGE};
    int rc = cmh_k8s_api_init(&p->api, &ao);
    p->ns = cmh_strdup_opt(o->namespace_name, &rc);
    p->reqs = cmh_calloc(p->streams, sizeof *p->reqs);
    if (rc != 0 || p->reqs == NULL) {
        rc = -ENOMEM;
        goto fail;
    }
    for (unsigned i = p->streams; i-- > 0;) {
        p->reqs[i].p = p;
        p->reqs[i].next_free = p->free_reqs;
        p->free_reqs = &p->reqs[i];
    }
    /* One connection: every scrape is a stream on it; more would only be more TLS handshakes and
     * more load on the API server. */
    struct cmh_curl_uv_opts co = {.timeout_ms = p->timeout_ms,
                                  .ca_file = o->ca_file,
                                  .max_body = (size_t)p->max_body,
                                  .max_host_connections = 1};
    rc = cmh_curl_uv_init(&p->curl, loop, &co, log);
    if (rc != 0)
        goto fail;
    return 0;

fail:
    cmh_k8s_api_free(&p->api);
    cmh_free(p->ns);
    cmh_free(p->reqs);
    memset(p, 0, sizeof *p);
    return rc;
}

int cmh_proxy_scrape_start(struct cmh_proxy_scrape *p, size_t target, const char *pod,
                           uint16_t port, uint64_t timeout_ms)
{
    if (p->closing)
        return -ESHUTDOWN;
    if (pod == NULL || !dns_name(pod, 253))
        return -EINVAL;
    struct cmh_proxy_scrape_job job = {target, pod, port, timeout_ms};
    if (p->free_reqs != NULL && p->qlen == 0) {
        struct cmh_proxy_scrape_req *r = p->free_reqs;
        p->free_reqs = r->next_free;
        int rc = start_req(p, r, &job);
        if (rc == 0)
            return 0;
        r->next_free = p->free_reqs;
        p->free_reqs = r;
        return rc;
    }
    if (p->qlen == p->qcap) {
        size_t cap = p->qcap ? p->qcap * 2 : 64;
        struct cmh_proxy_scrape_job *q = cmh_reallocarray(NULL, cap, sizeof *q);
        if (q == NULL)
            return -ENOMEM;
        for (size_t i = 0; i < p->qlen; i++)
            q[i] = p->queue[(p->qhead + i) % p->qcap];
        cmh_free(p->queue);
        p->queue = q;
        p->qcap = cap;
        p->qhead = 0;
    }
    p->queue[(p->qhead + p->qlen) % p->qcap] = job;
    p->qlen++;
    return 0;
}

size_t cmh_proxy_scrape_pending(const struct cmh_proxy_scrape *p)
{
    return p->qlen + p->inflight;
}

void cmh_proxy_scrape_cancel_all(struct cmh_proxy_scrape *p)
{
    if (p->cancelling)
        return;
    p->cancelling = 1;
    while (p->qlen > 0) {
        struct cmh_proxy_scrape_job job = p->queue[p->qhead];
        p->qhead = (p->qhead + 1) % p->qcap;
        p->qlen--;
        struct cmh_scrape_record rec = {.result = CMH_SCRAPE_SKIPPED};
        report(p, job.target, &rec);
    }
    for (unsigned i = 0; i < p->streams; i++) {
        struct cmh_proxy_scrape_req *r = &p->reqs[i];
        if (r->req.curl.easy != NULL) {
            r->abort = CMH_PROXY_ABORT_DEADLINE;
            cmh_curl_uv_cancel(&p->curl, &r->req.curl);
        }
    }
    p->cancelling = 0;
}

static void on_curl_closed(struct cmh_curl_uv *c)
{
    struct cmh_proxy_scrape *p = container_of(c, struct cmh_proxy_scrape, curl);
    cmh_k8s_api_free(&p->api);
    cmh_free(p->ns);
    for (unsigned i = 0; i < p->streams; i++)
        cmh_k8s_api_req_free(&p->reqs[i].req);
    cmh_free(p->reqs);
    cmh_free(p->queue);
    cmh_gunzip_pool_free(&p->gz);
    p->ns = NULL;
    p->reqs = p->free_reqs = NULL;
    p->queue = NULL;
    if (p->close_cb != NULL)
        p->close_cb(p);
}

void cmh_proxy_scrape_close(struct cmh_proxy_scrape *p, cmh_proxy_scrape_close_cb close_cb)
{
    if (p->closing)
        return;
    cmh_proxy_scrape_cancel_all(p);
    p->closing = 1;
    p->close_cb = close_cb;
    cmh_curl_uv_close(&p->curl, on_curl_closed);
}

void cmh_proxy_scrape_opts_from_config(struct cmh_proxy_scrape_opts *o,
                                       const struct cmh_config *cfg, const char *server)
{
    *o = (struct cmh_proxy_scrape_opts){.server = server,
                                        .namespace_name = cfg->k8s_namespace,
                                        .token_file = cfg->k8s_token_file,
                                        .ca_file = cfg->k8s_ca_file,
                                        .gzip = cfg->scrape_gzip};
}
