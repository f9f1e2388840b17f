/* The EC2 client (include/cmh/aws/ec2.h): one call at a time, each a run of signed Query requests
 * (a page, a retry, the next id) started from the loop, whose answers stream into the parser of
 * ec2_xml.c. Requests go through curl_uv; credentials and the region come from aws_creds. */
#include "cmh/aws/ec2.h"
#include "cmh/aws/ec2_int.h"

#include "cmh/core/container_of.h"
#include "cmh/core/alloc.h"
#include "cmh/http/url.h"
#include "cmh/core/buf.h"
#include "cmh/core/log.h"
#include "cmh/core/rng.h"
#include "cmh/http/curl_uv.h"
#include "cmh/aws/aws_creds.h"
#include "cmh/aws/endpoint.h"
#include "cmh/aws/sigv4.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define MAX_PAGES 1000
/* A request's form: SUBNET_IDS is an environment variable, far below this. */
#define EC2_FORM_MAX (1u << 20)
#define MAX_HEADERS  10

struct cmh_ec2 {
    uv_loop_t *loop;
    struct cmh_curl_uv *curl;
    struct cmh_log *log;
    struct cmh_aws_provider *aws;
    struct cmh_ec2_opts o;
    char *region;
    char *override;
    char *endpoint, *host, *path;
    int allow_http;
    uint64_t rng;
    uv_timer_t timer;
    int freeing;
    cmh_ec2_close_cb close_cb;
    void *close_arg;
    int busy;
    int resolving;
    /* The call in progress: DescribeSubnets, or DescribeTags when tags_cb is set. */
    cmh_ec2_tags_cb tags_cb;
    char *tag_resource; /* DescribeTags: the resource-id filter */
    char **tag_keys;    /* and the key filter's values */
    size_t ntag_keys;
    char **ids; /* still to describe: an id EC2 does not know moves to missing */
    size_t nids;
    char **missing; /* room for every id of the call */
    size_t nmissing;
    int single;      /* one id per request: EC2 said an id is unknown but not which */
    size_t single_i; /* the id of ids being described in that mode */
    unsigned attempt;
    unsigned pages;
    size_t kept;   /* subnets of the pages answered so far: a failed attempt's are dropped */
    int refreshed; /* credentials were refreshed after ExpiredToken in this call */
    int64_t retry_after_ms;
    char token[CMH_EC2_TOKEN_MAX];
    struct cmh_subnet_list list;
    struct cmh_ec2_page page;
    struct cmh_ec2_xml *xml;
    int xml_rc;
    struct cmh_buf form; /* the request's body, EC2_FORM_MAX at most */
    char *hdr[MAX_HEADERS];
    size_t nhdr;
    struct cmh_curl_uv_req req;
    int in_flight;
    cmh_ec2_done_cb cb;
    void *arg;
    /* A usage call: DescribeNetworkInterfaces of one subnet, then its GetSubnetCidrReservations. */
    const char *action; /* the current request's */
    char usage_id[CMH_SUBNET_ID_MAX];
    struct cmh_ec2_cidrs used;
    size_t used_kept;
    cmh_ec2_usage_cb ucb;
    uint64_t requests;
    char why[768];
};

static int64_t wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec;
}

int cmh_ec2_endpoint(const char *region, const char *override, char *buf, size_t len)
{
    return cmh_aws_endpoint_url("ec2", region, override, buf, len);
}

static void free_request(struct cmh_ec2 *e)
{
    for (size_t i = 0; i < e->nhdr; i++)
        cmh_free_secret(e->hdr[i]); /* Authorization, X-Amz-Security-Token */
    e->nhdr = 0;
    cmh_buf_free(&e->form);
    cmh_ec2_xml_free(e->xml);
    e->xml = NULL;
}

/* The actions this client calls, spelled so the manifest tests can read them (IAM policy). */
#define EC2_ACTION(name) name

static void free_call(struct cmh_ec2 *e)
{
    free_request(e);
    cmh_free(e->tag_resource);
    e->tag_resource = NULL;
    for (size_t i = 0; i < e->ntag_keys; i++)
        cmh_free(e->tag_keys[i]);
    cmh_free(e->tag_keys);
    e->tag_keys = NULL;
    e->ntag_keys = 0;
    for (size_t i = 0; i < e->nids; i++)
        cmh_free(e->ids[i]);
    cmh_free(e->ids);
    e->ids = NULL;
    e->nids = 0;
    for (size_t i = 0; i < e->nmissing; i++)
        cmh_free(e->missing[i]);
    cmh_free(e->missing);
    e->missing = NULL;
    e->nmissing = 0;
    e->single = 0;
    e->single_i = 0;
    cmh_subnet_list_free(&e->list);
    cmh_ec2_cidrs_free(&e->used);
    e->used_kept = 0;
    e->ucb = NULL;
}

__attribute__((format(printf, 3, 4))) static void finish(struct cmh_ec2 *e, int rc, const char *fmt,
                                                         ...)
{
    e->why[0] = '\0';
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->why, sizeof e->why, fmt, ap);
        va_end(ap);
    }
    e->busy = 0;
    free_request(e);
    if (e->ucb != NULL) {
        /* The call is over before the callback runs, so it may start the next one. */
        cmh_ec2_usage_cb ucb = e->ucb;
        void *arg = e->arg;
        struct cmh_ec2_cidrs used = e->used;
        memset(&e->used, 0, sizeof e->used);
        free_call(e);
        ucb(e, rc, &used, rc == 0 ? NULL : e->why, arg);
        cmh_ec2_cidrs_free(&used);
        return;
    }
    if (e->tags_cb != NULL) {
        cmh_ec2_tags_cb tcb = e->tags_cb;
        free_call(e);
        e->tags_cb = NULL;
        tcb(e, rc, e->page.tags, rc == 0 ? e->page.ntags : 0, rc == 0 ? NULL : e->why, e->arg);
        return;
    }
    if (rc == 0)
        cmh_subnet_list_sort(&e->list);
    cmh_ec2_done_cb cb = e->cb;
    e->cb = NULL;
    cb(e, rc, &e->list, rc == 0 ? NULL : e->why, e->arg);
    free_call(e);
}

static void on_timer(uv_timer_t *t);

static void later(struct cmh_ec2 *e, uint64_t ms)
{
    uv_timer_start(&e->timer, on_timer, ms, 0);
}

/* A failed attempt of the current page: again after a full-jitter wait, or the end of the call. */
static void retry(struct cmh_ec2 *e, const char *what)
{
    e->attempt++;
    if (e->attempt >= e->o.max_attempts) {
        finish(e, -EAGAIN, "EC2 %s failed %u times, last: %s", e->action, e->attempt, what);
        return;
    }
    uint64_t delay =
        cmh_backoff_full_jitter(&e->rng, e->attempt - 1, e->o.backoff_base_ms, e->o.backoff_cap_ms);
    if (e->retry_after_ms > 0 && (uint64_t)e->retry_after_ms > delay)
        delay = (uint64_t)e->retry_after_ms > e->o.backoff_cap_ms ? e->o.backoff_cap_ms
                                                                  : (uint64_t)e->retry_after_ms;
    CMH_LOG(e->log, CMH_LOG_DEBUG, "ec2 retry", CMH_STR("reason", what),
            CMH_UINT("attempt", e->attempt), CMH_UINT("delay_ms", delay));
    later(e, delay);
}

static int add_header(struct cmh_ec2 *e, const char *name, const char *value)
{
    return cmh_aws_header_add(e->hdr, &e->nhdr, MAX_HEADERS, name, value);
}

/* Appends "&name=value" (value encoded) to the form; the buffer keeps a failure for the end. */
static void form_add(struct cmh_buf *f, const char *name, const char *value)
{
    if (cmh_buf_len(f) > 0)
        cmh_buf_addc(f, '&');
    cmh_buf_addstr(f, name);
    cmh_buf_addc(f, '=');
    cmh_buf_add_pct(f, value, strlen(value), 0);
}

/* The form of the current request into e->form. Returns 0, -ENOMEM or -E2BIG (EC2_FORM_MAX). */
static int build_form(struct cmh_ec2 *e)
{
    struct cmh_buf *f = &e->form;
    char name[48];
    cmh_buf_reset(f);
    form_add(f, "Action", e->action);
    form_add(f, "Version", "2016-11-15");
    if (e->tags_cb != NULL) {
        /* The tags of one resource with these keys: at most one tag per key, one page. */
        form_add(f, "Filter.1.Name", "resource-id");
        form_add(f, "Filter.1.Value.1", e->tag_resource);
        if (e->ntag_keys > 0)
            form_add(f, "Filter.2.Name", "key");
        for (size_t i = 0; i < e->ntag_keys; i++) {
            snprintf(name, sizeof name, "Filter.2.Value.%zu", i + 1);
            form_add(f, name, e->tag_keys[i]);
        }
    } else if (e->ucb != NULL) {
        /* The largest page both actions allow: fewest calls against the shared throttle. */
        int enis = strcmp(e->action, "DescribeNetworkInterfaces") == 0;
        if (enis)
            form_add(f, "Filter.1.Name", "subnet-id");
        form_add(f, enis ? "Filter.1.Value.1" : "SubnetId", e->usage_id);
        form_add(f, "MaxResults", "1000");
    } else if (e->single && e->single_i < e->nids) {
        form_add(f, "SubnetId.1", e->ids[e->single_i]);
    } else {
        for (size_t i = 0; i < e->nids; i++) {
            snprintf(name, sizeof name, "SubnetId.%zu", i + 1);
            form_add(f, name, e->ids[i]);
        }
    }
    /* MaxResults only when listing everything (EC2 refuses it together with ids). */
    if (e->nids == 0 && e->ucb == NULL && e->tags_cb == NULL)
        form_add(f, "MaxResults", "1000");
    if (e->token[0] != '\0')
        form_add(f, "NextToken", e->token);
    return cmh_buf_err(f);
}

static int on_data(struct cmh_curl_uv_req *req, long status, const char *data, size_t len)
{
    struct cmh_ec2 *e = container_of(req, struct cmh_ec2, req);
    (void)status;
    /* The body streams into the parser; success and error documents alike. */
    if (e->xml_rc == 0)
        e->xml_rc = cmh_ec2_xml_feed(e->xml, data, len, 0);
    return 0;
}

static void on_done(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res);

static void send_page(struct cmh_ec2 *e, const struct cmh_sigv4_credentials *creds)
{
    struct cmh_sigv4_result sig;
    memset(&sig, 0, sizeof sig);
    free_request(e);
    e->list.n = e->kept;
    e->used.n = e->used_kept;
    e->page.action = e->action;
    e->page.used = &e->used;
    int rc = build_form(e);
    const char *form = cmh_buf_str(&e->form);
    size_t form_len = cmh_buf_len(&e->form);
    if (rc == 0)
        rc = cmh_ec2_xml_new(&e->xml, &e->page);
    e->xml_rc = 0;
    const struct cmh_sigv4_kv headers[] = {
        {"Host", e->host},
        {"Content-Type", "application/x-www-form-urlencoded; charset=utf-8"},
    };
    if (rc == 0) {
        struct cmh_sigv4_request sreq = {
            .method = "POST",
            .path = e->path,
            .headers = headers,
            .nheaders = sizeof headers / sizeof headers[0],
            .payload = form,
            .payload_len = form_len,
            .region = e->region,
            .service = "ec2",
            .time_s = wall_s(),
            .creds = creds,
        };
        rc = cmh_sigv4_sign(&sreq, &sig);
    }
    for (size_t i = 0; rc == 0 && i < sizeof headers / sizeof headers[0]; i++)
        rc = add_header(e, headers[i].name, headers[i].value);
    for (size_t i = 0; rc == 0 && i < sig.nadd; i++)
        rc = add_header(e, sig.add[i].name, sig.add[i].value);
    cmh_sigv4_result_free(&sig);
    if (rc == 0) {
        memset(&e->req, 0, sizeof e->req);
        e->req.method = "POST";
        e->req.url = e->endpoint;
        e->req.headers = (const char *const *)e->hdr;
        e->req.nheaders = e->nhdr;
        e->req.body = form;
        e->req.body_len = form_len;
        e->req.allow_http = e->allow_http;
        e->req.on_data = on_data;
        e->req.timeout_ms = e->o.timeout_ms;
        rc = cmh_curl_uv_start(e->curl, &e->req, on_done);
    }
    if (rc != 0) {
        finish(e, rc, "EC2 request could not be built or started (error %d)", rc);
        return;
    }
    e->in_flight = 1;
    e->requests++;
}

static void on_creds(struct cmh_aws_provider *p, int rc, const struct cmh_aws_credentials *creds,
                     const char *why, void *arg)
{
    struct cmh_ec2 *e = arg;
    (void)p;
    if (e->freeing || !e->busy)
        return;
    if (rc != 0) {
        char what[512];
        snprintf(what, sizeof what, "no AWS credentials: %s", why ? why : "unknown");
        retry(e, what);
        return;
    }
    struct cmh_sigv4_credentials c = {creds->access_key_id, creds->secret_access_key,
                                      creds->session_token};
    send_page(e, &c);
}

static void get_creds(struct cmh_ec2 *e)
{
    int rc = cmh_aws_creds_get(e->aws, on_creds, e);
    if (rc != 0)
        finish(e, rc, "the credential chain refused the call (error %d)", rc);
}

static void on_resolved(struct cmh_aws_provider *p, int rc, const char *region,
                        const char *cluster_id, const char *why, void *arg)
{
    struct cmh_ec2 *e = arg;
    (void)p;
    (void)cluster_id;
    e->resolving = 0;
    if (e->freeing || !e->busy)
        return;
    if (rc != 0) {
        finish(e, rc, "no AWS region for EC2: %s; set AWS_REGION", why ? why : "unknown");
        return;
    }
    char url[512];
    int n = cmh_ec2_endpoint(region, e->override, url, sizeof url);
    e->region = cmh_strdup(region);
    e->endpoint = n >= 0 ? cmh_strdup(url) : NULL;
    if (n < 0 || e->region == NULL || e->endpoint == NULL) {
        finish(e, n < 0 ? n : -ENOMEM, "bad region '%s' for the EC2 endpoint", region);
        return;
    }
    rc = cmh_url_split(e->endpoint, &e->host, &e->path, &e->allow_http);
    if (rc != 0) {
        char shown[512];
        cmh_url_redact(e->endpoint, shown, sizeof shown);
        finish(e, rc, "EC2 endpoint %s refused (https://, or http:// to a loopback address)",
               shown);
        return;
    }
    CMH_LOG(e->log, CMH_LOG_INFO, "ec2 endpoint", CMH_STR("region", region),
            CMH_URL("endpoint", e->endpoint));
    get_creds(e);
}

static void on_timer(uv_timer_t *t)
{
    struct cmh_ec2 *e = container_of(t, struct cmh_ec2, timer);
    if (e->freeing || !e->busy)
        return;
    if (e->region == NULL) {
        if (e->resolving)
            return;
        e->resolving = 1;
        int rc = cmh_aws_resolve(e->aws, on_resolved, e);
        if (rc != 0) {
            e->resolving = 0;
            finish(e, rc, "cannot resolve the AWS region (error %d)", rc);
        }
        return;
    }
    get_creds(e);
}

static int code_is(const char *code, const char *const *list)
{
    for (; *list != NULL; list++)
        if (strcmp(code, *list) == 0)
            return 1;
    return 0;
}

/* 1 when msg names id as a whole word ("The subnet ID 'subnet-0a1b2c3d' does not exist"): a
 * character that cannot be part of an id on both sides, so a message cut short in the middle of
 * a longer id does not name its prefix. */
static int names_id(const char *msg, const char *id)
{
    size_t n = strlen(id);
    for (const char *p = strstr(msg, id); p != NULL; p = strstr(p + 1, id)) {
        unsigned char before = p > msg ? (unsigned char)p[-1] : 0;
        unsigned char after = (unsigned char)p[n];
        if (before != 0 && after != 0 && !isalnum(before) && before != '-' && !isalnum(after) &&
            after != '-')
            return 1;
    }
    return 0;
}

/* Moves ids[i] to the missing ones (their room was made when the call started). */
static void drop_id(struct cmh_ec2 *e, size_t i)
{
    e->missing[e->nmissing++] = e->ids[i];
    memmove(&e->ids[i], &e->ids[i + 1], (e->nids - i - 1) * sizeof e->ids[0]);
    e->nids--;
}

/* InvalidSubnetID.NotFound for a call with ids: one deleted subnet must not hide the others. The
 * ids the message names are left out and the rest asked again; when it names none of ours (the
 * wording changed), the ids are described one request each, so that only the unknown ones are
 * left out. Every pass drops at least one id, so a call makes at most nids more requests. */
static void not_found(struct cmh_ec2 *e, const char *code, const char *msg)
{
    size_t before = e->nids;
    if (e->single) {
        drop_id(e, e->single_i); /* single_i now names the next id */
    } else {
        for (size_t i = 0; i < e->nids;) {
            if (names_id(msg, e->ids[i]))
                drop_id(e, i);
            else
                i++;
        }
        if (e->nids == before) {
            CMH_LOG(e->log, CMH_LOG_WARN,
                    "EC2 says a subnet of SUBNET_IDS does not exist but not which; asking for each "
                    "id on its own",
                    CMH_STR("code", code), CMH_STR("message", msg), CMH_UINT("ids", e->nids));
            e->single = 1;
            e->single_i = 0;
        }
        e->kept = 0; /* start over: the dropped ids' subnets were never answered */
    }
    if (e->nids == 0) {
        finish(e, -ENOENT,
               "EC2 knows none of the %zu subnets of SUBNET_IDS (%s: %s); fix SUBNET_IDS",
               e->nmissing, code, msg);
        return;
    }
    if (e->single && e->single_i >= e->nids) {
        finish(e, 0, NULL);
        return;
    }
    e->attempt = 0;
    e->token[0] = '\0';
    later(e, 0);
}

static void on_done(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res)
{
    static const char *const throttled[] = {"RequestLimitExceeded",
                                            "Throttling",
                                            "ThrottlingException",
                                            "RequestThrottled",
                                            "SlowDown",
                                            "InternalError",
                                            "InternalFailure",
                                            "ServiceUnavailable",
                                            "Unavailable",
                                            NULL};
    static const char *const denied[] = {"UnauthorizedOperation", "AccessDenied",
                                         "AccessDeniedException", "Blocked",
                                         "OptInRequired",         NULL};
    static const char *const expired[] = {"ExpiredToken",          "RequestExpired",
                                          "AuthFailure",           "InvalidClientTokenId",
                                          "SignatureDoesNotMatch", NULL};
    struct cmh_ec2 *e = container_of(req, struct cmh_ec2, req);
    e->in_flight = 0;
    if (e->freeing || !e->busy)
        return;
    e->retry_after_ms = res->retry_after_ms;
    char what[768];
    if (res->error != CMH_CURL_OK) {
        snprintf(what, sizeof what, "%s: %s", cmh_curl_uv_error_name(res->error),
                 res->error_text ? res->error_text : "");
        retry(e, what);
        return;
    }
    if (e->xml_rc == 0)
        e->xml_rc = cmh_ec2_xml_feed(e->xml, NULL, 0, 1);
    const char *code = e->page.error_code, *msg = e->page.error_message;
    if (res->status >= 200 && res->status < 300) {
        if (e->xml_rc == 0 && code[0] == '\0' && e->page.tags_answer != (e->tags_cb != NULL))
            e->xml_rc = -EPROTO; /* the answer of another action */
        if (e->xml_rc != 0 || code[0] != '\0') {
            snprintf(what, sizeof what, "HTTP %ld with %s", res->status,
                     e->xml_rc == -E2BIG ? "more subnets than we keep" : "a malformed answer");
            if (e->xml_rc == -E2BIG)
                finish(e, -E2BIG, "EC2 answered %s (%d); set SUBNET_IDS", what,
                       CMH_EC2_MAX_SUBNETS);
            else
                retry(e, what);
            return;
        }
        e->attempt = 0;
        e->refreshed = 0;
        if (e->tags_cb != NULL) {
            finish(e, 0, NULL); /* filtered by resource and keys: everything is on one page */
            return;
        }
        e->kept = e->list.n;
        e->used_kept = e->used.n;
        if (e->page.next_token[0] == '\0' && e->ucb != NULL &&
            strcmp(e->action, "DescribeNetworkInterfaces") == 0) {
            e->action = EC2_ACTION("GetSubnetCidrReservations"); /* the interfaces are done */
            e->token[0] = '\0';
            e->pages = 0;
            later(e, 0);
            return;
        }
        if (e->page.next_token[0] == '\0') {
            if (e->single && ++e->single_i < e->nids) {
                e->token[0] = '\0';
                later(e, 0); /* the next id on its own */
                return;
            }
            finish(e, 0, NULL);
            return;
        }
        if (++e->pages >= MAX_PAGES) {
            finish(e, -E2BIG, "EC2 %s: more than %d pages", e->action, MAX_PAGES);
            return;
        }
        memcpy(e->token, e->page.next_token, sizeof e->token);
        later(e, 0);
        return;
    }
    if (code[0] == '\0') {
        snprintf(what, sizeof what, "HTTP %ld without an EC2 error document", res->status);
        if (res->status >= 500 || res->status == 429)
            retry(e, what);
        else
            finish(e, -EPROTO, "EC2 %s: %s", e->action, what);
        return;
    }
    snprintf(what, sizeof what, "HTTP %ld %s: %s", res->status, code, msg);
    if (code_is(code, throttled) || res->status >= 500) {
        retry(e, what);
    } else if (code_is(code, denied) && e->tags_cb != NULL) {
        finish(e, -EACCES,
               "EC2 DescribeTags denied (%s: %s): grant ec2:DescribeTags to this role, or set "
               "AWS_CLUSTER_ID",
               code, msg);
    } else if (code_is(code, denied)) {
        int usage = e->ucb != NULL;
        finish(e, -EACCES,
               "EC2 %s denied (%s: %s): grant ec2:%s to this role (manifests/iam/%s) or set "
               "%s=false",
               e->action, code, msg, e->action,
               usage ? "subnet-prefix-metrics-policy.json" : "subnet-metrics-policy.json",
               usage ? "SUBNET_PREFIX_METRICS" : "SUBNET_METRICS");
    } else if (code_is(code, expired) && !e->refreshed) {
        e->refreshed = 1;
        cmh_aws_creds_invalidate(e->aws);
        retry(e, what);
    } else if (strcmp(code, "InvalidSubnetID.NotFound") == 0 && e->nids > 0 && e->ucb == NULL) {
        not_found(e, code, msg);
    } else if (strncmp(code, "InvalidSubnetID", 15) == 0) {
        finish(e, -ENOENT, "EC2 refused a subnet id of SUBNET_IDS (%s: %s)", code, msg);
    } else {
        finish(e, -EPROTO, "EC2 %s refused: %s", e->action, what);
    }
}

int cmh_ec2_new(struct cmh_ec2 **out, uv_loop_t *loop, struct cmh_curl_uv *curl,
                const struct cmh_ec2_opts *opts, struct cmh_log *log)
{
    *out = NULL;
    struct cmh_ec2 *e = cmh_calloc(1, sizeof *e);
    if (e == NULL)
        return -ENOMEM;
    e->loop = loop;
    e->curl = curl;
    e->log = log;
    e->o = *opts;
    if (e->o.max_attempts == 0)
        e->o.max_attempts = 5;
    if (e->o.backoff_base_ms == 0)
        e->o.backoff_base_ms = 200;
    if (e->o.backoff_cap_ms == 0)
        e->o.backoff_cap_ms = 20000;
    if (e->o.timeout_ms == 0)
        e->o.timeout_ms = 10000;
    e->o.envp = NULL;
    e->o.region = NULL;
    e->rng = cmh_rng_seed(opts->seed);
    cmh_buf_init(&e->form, EC2_FORM_MAX);
    int rc = 0;
    const char *ov = cmh_aws_endpoint_override(opts->envp, "AWS_ENDPOINT_URL_EC2");
    if (ov != NULL) {
        e->override = cmh_strdup(ov);
        if (e->override == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        /* Check it now: a bad override is a configuration error. */
        char *host = NULL, *path = NULL;
        int http;
        rc = cmh_url_split(ov, &host, &path, &http);
        cmh_free(host);
        cmh_free(path);
        if (rc != 0) {
            CMH_LOG(log, CMH_LOG_ERROR,
                    "EC2 endpoint refused: https://, or http:// to a loopback address",
                    CMH_URL("endpoint", ov), CMH_STR("variable", "AWS_ENDPOINT_URL_EC2"));
            rc = -EINVAL;
            goto out;
        }
    }
    /* A cluster id is passed so that resolving learns only the region. */
    struct cmh_aws_creds_opts ao = {.envp = opts->envp,
                                    .region = opts->region,
                                    .cluster_id = "-",
                                    .imds_timeout_ms = opts->imds_timeout_ms};
    rc = cmh_aws_provider_new(&e->aws, loop, curl, &ao, log);
    if (rc != 0)
        goto out;
    rc = uv_timer_init(loop, &e->timer);
    if (rc != 0)
        goto out;
out:
    if (rc != 0) {
        if (e->aws != NULL)
            cmh_aws_provider_close(e->aws, NULL, NULL);
        cmh_free(e->override);
        cmh_free(e);
        return rc;
    }
    *out = e;
    return 0;
}

/* Starts a call whose callback and inputs are set: its first request comes from the loop, never
 * inside the call. */
static void begin(struct cmh_ec2 *e, const char *action, void *arg)
{
    e->page.subnets = &e->list;
    e->action = action;
    e->token[0] = '\0';
    e->attempt = 0;
    e->pages = 0;
    e->kept = 0;
    e->used_kept = 0;
    e->refreshed = 0;
    e->arg = arg;
    e->busy = 1;
    later(e, 0); /* never call back inside this call */
}

int cmh_ec2_describe_subnets(struct cmh_ec2 *e, const char *const *ids, size_t nids,
                             cmh_ec2_done_cb cb, void *arg)
{
    if (e->busy || e->freeing)
        return -EBUSY;
    free_call(e);
    if (nids > 0) {
        e->ids = cmh_calloc(nids, sizeof *e->ids);
        if (e->ids == NULL)
            return -ENOMEM;
        for (size_t i = 0; i < nids; i++) {
            e->ids[i] = cmh_strdup(ids[i]);
            if (e->ids[i] == NULL) {
                e->nids = i;
                free_call(e);
                return -ENOMEM;
            }
        }
        e->nids = nids;
        e->missing = cmh_calloc(nids, sizeof *e->missing);
        if (e->missing == NULL) {
            free_call(e);
            return -ENOMEM;
        }
    }
    e->cb = cb;
    e->tags_cb = NULL;
    begin(e, EC2_ACTION("DescribeSubnets"), arg);
    return 0;
}

int cmh_ec2_subnet_usage(struct cmh_ec2 *e, const char *subnet_id, cmh_ec2_usage_cb cb, void *arg)
{
    if (e->busy || e->freeing)
        return -EBUSY;
    if (strlen(subnet_id) >= sizeof e->usage_id)
        return -EINVAL;
    free_call(e);
    snprintf(e->usage_id, sizeof e->usage_id, "%s", subnet_id);
    e->ucb = cb;
    e->tags_cb = NULL;
    begin(e, EC2_ACTION("DescribeNetworkInterfaces"), arg);
    return 0;
}

int cmh_ec2_describe_tags(struct cmh_ec2 *e, const char *resource_id, const char *const *keys,
                          size_t nkeys, cmh_ec2_tags_cb cb, void *arg)
{
    if (e->busy || e->freeing)
        return -EBUSY;
    if (resource_id == NULL || resource_id[0] == '\0' || nkeys > CMH_EC2_MAX_TAGS)
        return -EINVAL;
    free_call(e);
    e->tag_resource = cmh_strdup(resource_id);
    e->tag_keys = nkeys > 0 ? cmh_calloc(nkeys, sizeof *e->tag_keys) : NULL;
    int rc = e->tag_resource == NULL || (nkeys > 0 && e->tag_keys == NULL) ? -ENOMEM : 0;
    for (size_t i = 0; rc == 0 && i < nkeys; i++) {
        e->tag_keys[i] = cmh_strdup(keys[i]);
        if (e->tag_keys[i] == NULL)
            rc = -ENOMEM;
        e->ntag_keys = i + 1;
    }
    if (rc != 0) {
        free_call(e);
        return rc;
    }
    e->tags_cb = cb;
    e->cb = NULL;
    begin(e, EC2_ACTION("DescribeTags"), arg);
    return 0;
}

void cmh_ec2_take(struct cmh_subnet_list *src, struct cmh_subnet_list *dst)
{
    cmh_subnet_list_free(dst);
    *dst = *src;
    memset(src, 0, sizeof *src);
}

uint64_t cmh_ec2_requests(const struct cmh_ec2 *e)
{
    return e->requests;
}

size_t cmh_ec2_missing(const struct cmh_ec2 *e, const char *const **ids)
{
    *ids = (const char *const *)e->missing;
    return e->nmissing;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct cmh_ec2 *e = container_of((uv_timer_t *)h, struct cmh_ec2, timer);
    if (e->close_cb != NULL)
        e->close_cb(e, e->close_arg);
    cmh_free(e);
}

void cmh_ec2_close(struct cmh_ec2 *e, cmh_ec2_close_cb close_cb, void *arg)
{
    if (e == NULL)
        return;
    e->freeing = 1;
    e->close_cb = close_cb;
    e->close_arg = arg;
    if (e->in_flight)
        cmh_curl_uv_cancel(e->curl, &e->req);
    e->in_flight = 0;
    free_call(e);
    cmh_aws_provider_close(e->aws, NULL, NULL);
    cmh_free(e->override);
    cmh_free(e->region);
    cmh_free(e->endpoint);
    cmh_free(e->host);
    cmh_free(e->path);
    uv_close((uv_handle_t *)&e->timer, on_timer_closed);
}
