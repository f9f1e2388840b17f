/* Leader election over a coordination.k8s.io/v1 Lease, with client-go's leaderelection semantics.
 * An attempt GETs the Lease; absent, it is created with us as holder; held by another replica, it
 * is taken over (an update carrying the resourceVersion, so a concurrent writer gets 409) only
 * when the record has not changed, by our own monotonic clock, for the lease duration the record
 * gives (the holder's, as client-go reads it; ours when it gives none); held by us, it is renewed.
 * The leader attempts every retry period; a candidate every half to whole retry period, and also
 * at the moment the lease it saw would expire, so a crashed leader is replaced within one lease
 * duration and one retry period of its last renewal. A leader whose last successful renewal
 * attempt started more than the renew deadline ago stops leading (a timer, so a hung request
 * cannot delay it): since the others measure the lease duration, which is longer, from when they
 * saw that renewal, which is later, the old leader has stopped before anybody can take over.
 * A JSON-facing module: includes jansson. */
#include "cmh/k8s/leader.h"
#include "cmh/k8s/leader_int.h"

#include "cmh/core/container_of.h"
#include "cmh/core/alloc.h"
#include "cmh/core/buf.h"
#include "cmh/core/rng.h"
#include "cmh/core/config.h"
#include "cmh/core/log.h"

#include <jansson.h>

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_NAMESPACE "kube-system"
#define DEFAULT_LEASE     "cni-metrics-helper"
#define DEFAULT_LEASE_MS  15000ull
#define DEFAULT_RENEW_MS  10000ull
#define DEFAULT_RETRY_MS  2000ull
#define RELEASE_MAX_MS    3000ull
#define TOKEN_MAX_AGE_MS  60000ull
#define LEASE_MAX_BODY    (64u * 1024)

enum { STEP_GET, STEP_CREATE, STEP_UPDATE, STEP_RELEASE };

/* ---- options ---- */

void cmh_leader_opts_from_config(struct cmh_leader_opts *opts, const struct cmh_config *cfg)
{
    memset(opts, 0, sizeof *opts);
    opts->namespace_name = cfg->k8s_namespace;
    opts->lease_name = cfg->leader_lease_name;
    opts->token_file = cfg->k8s_token_file;
    opts->ca_file = cfg->k8s_ca_file;
    opts->lease_duration_ms = cfg->leader_lease_duration_ms;
    opts->renew_deadline_ms = cfg->leader_renew_deadline_ms;
    opts->retry_period_ms = cfg->leader_retry_period_ms;
}

/* DNS-1123: a label (max 63) or, with dots, a subdomain (max 253). */
static bool dns_name(const char *s, bool dots, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max || !isalnum((unsigned char)s[0]) || !isalnum((unsigned char)s[n - 1]))
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(islower(c) || isdigit(c) || c == '-' || (dots && c == '.')))
            return false;
    }
    return true;
}

static uint64_t or_default(uint64_t v, uint64_t def)
{
    return v ? v : def;
}

int cmh_leader_check_opts(const struct cmh_leader_opts *opts, char *err, size_t errlen)
{
    const char *ns = opts->namespace_name ? opts->namespace_name : DEFAULT_NAMESPACE;
    const char *name = opts->lease_name ? opts->lease_name : DEFAULT_LEASE;
    uint64_t lease = or_default(opts->lease_duration_ms, DEFAULT_LEASE_MS);
    uint64_t renew = or_default(opts->renew_deadline_ms, DEFAULT_RENEW_MS);
    uint64_t retry = or_default(opts->retry_period_ms, DEFAULT_RETRY_MS);
    if (opts->server == NULL || opts->server[0] == '\0') {
        snprintf(err, errlen,
                 "no Kubernetes API server for leader election: KUBERNETES_SERVICE_HOST and "
                 "KUBERNETES_SERVICE_PORT are unset (not running in a pod?)");
        return -EINVAL;
    }
    if (!dns_name(ns, false, 63)) {
        snprintf(err, errlen,
                 "K8S_NAMESPACE=%s: not a namespace name (1-63 of a-z, 0-9, '-', alphanumeric "
                 "at both ends)",
                 ns);
        return -EINVAL;
    }
    if (!dns_name(name, true, 253)) {
        snprintf(err, errlen,
                 "LEADER_ELECTION_LEASE_NAME=%s: not an object name (1-253 of a-z, 0-9, '-', '.', "
                 "alphanumeric at both ends)",
                 name);
        return -EINVAL;
    }
    if (opts->identity != NULL && (opts->identity[0] == '\0' || strlen(opts->identity) > 253)) {
        snprintf(err, errlen, "leader election identity must be 1-253 characters");
        return -EINVAL;
    }
    if (renew >= lease) {
        snprintf(err, errlen,
                 "LEADER_ELECTION_RENEW_DEADLINE (%llu ms) must be shorter than "
                 "LEADER_ELECTION_LEASE_DURATION (%llu ms): a leader must stop before the others "
                 "may take over",
                 (unsigned long long)renew, (unsigned long long)lease);
        return -EINVAL;
    }
    if (retry >= renew) {
        snprintf(err, errlen,
                 "LEADER_ELECTION_RETRY_PERIOD (%llu ms) must be shorter than "
                 "LEADER_ELECTION_RENEW_DEADLINE (%llu ms): the leader must get to retry a "
                 "failed renewal",
                 (unsigned long long)retry, (unsigned long long)renew);
        return -EINVAL;
    }
    return 0;
}

/* ---- helpers ---- */

/* Records an error (the last one for /readyz, the count for self-metrics) and logs it. */
#define set_error(l, ...)                                                                          \
    cmh_k8s_api_fail(                                                                              \
        &(l)->err, (l)->log, "leader election error",                                              \
        (const struct cmh_kv[]){CMH_BOOL("leader", (l)->leader), CMH_STR("lease", (l)->name)}, 2,  \
        __VA_ARGS__)

/* Wall-clock time as Kubernetes MicroTime: RFC 3339 with microseconds, UTC. */
static void micro_time(char *buf, size_t len)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%06ldZ", (long)(ts.tv_nsec / 1000));
}

static const char *jstr(json_t *obj, const char *key)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* Copies the string (or null/absent: "") member key of obj into buf; false when it is another
 * type or does not fit. */
static bool copy_member(json_t *obj, const char *key, char *buf, size_t len)
{
    json_t *v = json_object_get(obj, key);
    buf[0] = '\0';
    if (v == NULL || json_is_null(v))
        return true;
    if (!json_is_string(v) || json_string_length(v) >= len)
        return false;
    memcpy(buf, json_string_value(v), json_string_length(v) + 1);
    return true;
}

/* The Lease in body and what the elector reads from it; NULL (rec zeroed) when it is not one. */
static json_t *lease_load(const char *body, size_t len, struct cmh_lease_record *rec)
{
    json_error_t jerr;
    memset(rec, 0, sizeof *rec);
    json_t *root = body != NULL ? json_loadb(body, len, 0, &jerr) : NULL;
    json_t *meta = json_is_object(root) ? json_object_get(root, "metadata") : NULL;
    json_t *spec = json_is_object(root) ? json_object_get(root, "spec") : NULL;
    if (json_is_null(spec))
        spec = NULL;
    if ((spec != NULL && !json_is_object(spec)) ||
        !copy_member(meta, "resourceVersion", rec->resource_version,
                     sizeof rec->resource_version) ||
        rec->resource_version[0] == '\0' ||
        !copy_member(spec, "holderIdentity", rec->holder, sizeof rec->holder) ||
        !copy_member(spec, "renewTime", rec->renew_time, sizeof rec->renew_time)) {
        json_decref(root);
        memset(rec, 0, sizeof *rec);
        return NULL;
    }
    json_t *secs = json_object_get(spec, "leaseDurationSeconds");
    if (json_is_integer(secs) && json_integer_value(secs) > 0) {
        json_int_t v = json_integer_value(secs);
        rec->duration_ms =
            (uint64_t)(v < CMH_LEADER_LEASE_MAX_S ? v : CMH_LEADER_LEASE_MAX_S) * 1000;
    }
    json_t *tr = json_object_get(spec, "leaseTransitions");
    if (json_is_integer(tr) && json_integer_value(tr) >= 0)
        rec->transitions = (int64_t)json_integer_value(tr);
    return root;
}

int cmh_leader_lease_parse(const char *body, size_t len, struct cmh_lease_record *out)
{
    json_t *root = lease_load(body, len, out);
    if (root == NULL)
        return -EPROTO;
    json_decref(root);
    return 0;
}

/* Reads the token when due (see cmh_k8s_token). Synchronous: a few bytes from the kubelet's
 * tmpfs, at most once a minute or after a refusal. */
static void refresh_token(struct cmh_leader *l)
{
    char why[300];
    if (cmh_k8s_api_refresh(&l->api, uv_now(l->loop), why, sizeof why) < 0)
        set_error(l, "%s", why);
}

/* ---- leadership ---- */

static void set_leader(struct cmh_leader *l, bool on, const char *why)
{
    if (l->leader == on)
        return;
    l->leader = on;
    l->st.is_leader = on;
    if (on) {
        l->st.transitions++;
    } else {
        uv_timer_stop(&l->deadline);
    }
    if (l->log != NULL)
        CMH_LOG(l->log, on ? CMH_LOG_INFO : CMH_LOG_WARN,
                on ? "leader election: now leading" : "leader election: stopped leading",
                CMH_STR("identity", l->identity), CMH_STR("lease", l->name),
                CMH_STR("reason", why));
    if (l->on_change != NULL)
        l->on_change(l, on, l->arg);
}

static void on_deadline(uv_timer_t *t)
{
    struct cmh_leader *l = container_of(t, struct cmh_leader, deadline);
    if (!l->stopping)
        set_leader(l, false, "could not renew the lease within the renew deadline");
}

static void attempt(struct cmh_leader *l);

static void on_retry(uv_timer_t *t)
{
    struct cmh_leader *l = container_of(t, struct cmh_leader, retry);
    if (!l->stopping)
        attempt(l);
}

/* True while another replica holds the lease we saw and it has not expired by our clock. */
static bool held_by_other(const struct cmh_leader *l, uint64_t now)
{
    return l->holder[0] != '\0' && strcmp(l->holder, l->identity) != 0 &&
           now < l->observed_ms + l->observed_lease_ms;
}

/* The next attempt: the leader renews every retry period. Candidates wait a jittered half to
 * whole retry period, so that they do not all ask at once (client-go waits 1 to 2.2 periods), and
 * so that they see the holder's last renewal within one retry period of it; and they attempt at
 * the very moment the lease they saw expires, not at the next period after it. */
static void schedule(struct cmh_leader *l)
{
    uint64_t delay = l->retry_ms;
    if (!l->leader) {
        uint64_t now = uv_now(l->loop);
        delay = l->retry_ms / 2 + cmh_rng_next(&l->rng) % (l->retry_ms / 2 + 1);
        if (held_by_other(l, now) && l->observed_ms + l->observed_lease_ms - now < delay)
            delay = l->observed_ms + l->observed_lease_ms - now;
    }
    int rc = uv_timer_start(&l->retry, on_retry, delay, 0);
    if (rc != 0 && l->log != NULL)
        CMH_LOG(l->log, CMH_LOG_ERROR, "cannot arm the leader election timer",
                CMH_STR("error", uv_strerror(rc)));
}

/* Remembers the record (lease, taken, read into rec); the observation time moves only when
 * something in it changed, and the lease duration is the record's (client-go: a follower waits
 * the holder's duration, not its own). */
static void observe(struct cmh_leader *l, json_t *lease, const struct cmh_lease_record *rec)
{
    const struct cmh_lease_record *o = &l->observed;
    if (strcmp(o->holder, rec->holder) != 0 || strcmp(o->renew_time, rec->renew_time) != 0 ||
        strcmp(o->resource_version, rec->resource_version) != 0 ||
        o->duration_ms != rec->duration_ms) {
        l->observed = *rec;
        l->observed_ms = uv_now(l->loop);
        l->observed_lease_ms = rec->duration_ms ? rec->duration_ms : l->lease_ms;
    }
    snprintf(l->holder, sizeof l->holder, "%s", rec->holder);
    json_decref(l->record);
    l->record = lease;
}

static void on_done(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res);

/* Sends one request of step with body (taken; may be NULL). */
static int send_request(struct cmh_leader *l, int step, char *body)
{
    int rc;
    cmh_free(l->body);
    l->body = body;
    refresh_token(l);
    static const char *const methods[] = {"GET", "POST", "PUT", "PUT"};
    struct cmh_buf *u = cmh_k8s_api_begin(&l->api, &l->req, methods[step]);
    cmh_buf_addstr(u, "/apis/coordination.k8s.io/v1/namespaces/");
    cmh_buf_addstr(u, l->ns); /* checked: a DNS label */
    cmh_buf_addstr(u, "/leases");
    if (step != STEP_CREATE) {
        cmh_buf_addc(u, '/');
        cmh_buf_addstr(u, l->name); /* checked: a DNS subdomain */
    }
    struct cmh_curl_uv_req *c = &l->req.curl;
    c->body = body;
    c->body_len = body ? strlen(body) : 0;
    c->max_body = LEASE_MAX_BODY;
    c->timeout_ms = l->request_ms;
    if (step == STEP_RELEASE && c->timeout_ms > RELEASE_MAX_MS)
        c->timeout_ms = RELEASE_MAX_MS;
    rc = cmh_k8s_api_start(&l->api, l->curl, &l->req, on_done);
    if (rc != 0)
        return rc;
    l->step = step;
    l->in_flight = true;
    return 0;
}

/* The Lease we write: the last record (keeping its metadata and resourceVersion) or a new one,
 * with us as holder. release clears the holder, as client-go does on a graceful stop. */
static char *lease_body(struct cmh_leader *l, bool release)
{
    char now[40];
    micro_time(now, sizeof now);
    json_t *obj = NULL, *spec = NULL;
    char *out = NULL;
    const char *old_holder = "";
    json_int_t transitions = 0;
    if (l->record != NULL) {
        obj = json_deep_copy(l->record);
        json_t *old = json_object_get(obj, "spec");
        old_holder = l->holder;
        json_t *tr = json_object_get(old, "leaseTransitions");
        transitions = json_is_integer(tr) ? json_integer_value(tr) : 0;
    } else {
        obj = json_pack("{s:s, s:s, s:{s:s, s:s}}", "apiVersion", "coordination.k8s.io/v1", "kind",
                        "Lease", "metadata", "name", l->name, "namespace", l->ns);
    }
    if (obj == NULL)
        goto out;
    spec = json_object_get(obj, "spec");
    if (!json_is_object(spec)) {
        spec = json_object();
        if (spec == NULL || json_object_set_new(obj, "spec", spec) != 0)
            goto out;
    }
    json_int_t secs = (json_int_t)((l->lease_ms + 999) / 1000);
    bool same = strcmp(old_holder, l->identity) == 0;
    if (release) {
        secs = 1;
        json_object_set_new(spec, "holderIdentity", json_string(""));
        json_object_set_new(spec, "acquireTime", json_string(now));
    } else {
        json_object_set_new(spec, "holderIdentity", json_string(l->identity));
        if (!same || jstr(spec, "acquireTime") == NULL)
            json_object_set_new(spec, "acquireTime", json_string(now));
        if (!same && l->record != NULL)
            transitions++;
    }
    json_object_set_new(spec, "leaseDurationSeconds", json_integer(secs));
    json_object_set_new(spec, "renewTime", json_string(now));
    json_object_set_new(spec, "leaseTransitions", json_integer(transitions));
    out = json_dumps(obj, JSON_COMPACT);
out:
    json_decref(obj);
    /* json_dumps allocates with malloc: copy into our allocator's memory. */
    char *copy = out ? cmh_strdup(out) : NULL;
    free(out);
    return copy;
}

static void failed(struct cmh_leader *l)
{
    schedule(l);
}

static void attempt(struct cmh_leader *l)
{
    if (l->stopping || l->in_flight)
        return;
    l->attempt_ms = uv_now(l->loop);
    l->st.attempts++;
    int rc = send_request(l, STEP_GET, NULL);
    if (rc != 0) {
        set_error(l, "cannot start a Lease request: %s", strerror(-rc));
        if (rc != -EBUSY) /* -EBUSY: the curl instance is closing with the daemon */
            failed(l);
    }
}

/* A create or update went through: we hold the lease as of attempt_ms. */
static void renewed(struct cmh_leader *l)
{
    uint64_t now = uv_now(l->loop);
    uint64_t until = l->attempt_ms + l->renew_ms;
    l->st.renewals++;
    l->err.text[0] = '\0';
    schedule(l);
    if (until <= now) {
        /* The attempt itself took longer than the renew deadline: the others may already be
         * counting; do not lead on it. */
        set_leader(l, false, "the renewal took longer than the renew deadline");
        return;
    }
    uv_timer_start(&l->deadline, on_deadline, until - now, 0);
    set_leader(l, true, "acquired or renewed the lease");
}

static void get_done(struct cmh_leader *l, const struct cmh_curl_uv_response *res)
{
    int rc;
    if (res->status == 404) {
        /* Deleted while another replica held it: that one may still be leading, so let its
         * lease lapse by our clock first, as if the record were still there. */
        if (!l->leader && held_by_other(l, uv_now(l->loop))) {
            schedule(l);
            return;
        }
        /* No Lease yet: create it. A concurrent create answers 409. */
        json_decref(l->record);
        l->record = NULL;
        l->holder[0] = '\0';
        char *body = lease_body(l, false);
        rc = body ? send_request(l, STEP_CREATE, body) : -ENOMEM;
        if (rc != 0) {
            set_error(l, "cannot start the Lease create: %s", strerror(-rc));
            failed(l);
        }
        return;
    }
    struct cmh_lease_record rec;
    json_t *lease = res->status == 200 ? lease_load(res->body, res->body_len, &rec) : NULL;
    if (lease == NULL) {
        if (res->status == 200)
            set_error(l, "the Lease answer is not a Lease: %.120s", res->body);
        failed(l);
        return;
    }
    observe(l, lease, &rec);
    if (l->holder[0] != '\0' && strcmp(l->holder, l->identity) != 0) {
        if (l->leader) {
            /* Another replica wrote itself in: we lost the lease (after a partition, say). */
            schedule(l);
            set_leader(l, false, "the lease is held by another replica");
            return;
        }
        if (held_by_other(l, uv_now(l->loop))) {
            schedule(l); /* held, and not yet expired by our own clock */
            return;
        }
        if (l->log != NULL)
            CMH_LOG(l->log, CMH_LOG_INFO, "leader election: taking over an expired lease",
                    CMH_STR("holder", l->holder), CMH_STR("lease", l->name));
    }
    char *body = lease_body(l, false);
    rc = body ? send_request(l, STEP_UPDATE, body) : -ENOMEM;
    if (rc != 0) {
        set_error(l, "cannot start the Lease update: %s", strerror(-rc));
        failed(l);
    }
}

static void write_done(struct cmh_leader *l, const struct cmh_curl_uv_response *res)
{
    if (res->status == 409) {
        l->st.conflicts++;
        set_error(l, "another replica wrote the Lease first (409 Conflict)");
        failed(l);
        return;
    }
    struct cmh_lease_record rec;
    json_t *lease = (res->status == 200 || res->status == 201)
                        ? lease_load(res->body, res->body_len, &rec)
                        : NULL;
    if (lease == NULL) {
        if (res->status == 200 || res->status == 201)
            set_error(l, "the Lease answer is not a Lease: %.120s", res->body);
        failed(l);
        return;
    }
    observe(l, lease, &rec);
    renewed(l);
}

static void finish_if_closed(struct cmh_leader *l);

static void release_done(struct cmh_leader *l, const struct cmh_curl_uv_response *res)
{
    if (l->log != NULL) {
        if (res->error == CMH_CURL_OK && res->status == 200)
            CMH_LOG(l->log, CMH_LOG_INFO, "leader election: lease released",
                    CMH_STR("lease", l->name));
        else
            CMH_LOG(l->log, CMH_LOG_WARN,
                    "leader election: could not release the lease (it expires by itself)",
                    CMH_STR("error", cmh_curl_uv_error_name(res->error)),
                    CMH_INT("status", res->status));
    }
    l->releasing = false;
    finish_if_closed(l);
}

/* Gives the lease up (holderIdentity cleared) when the record says we hold it. Best effort: on
 * failure it expires by itself. */
static void release(struct cmh_leader *l)
{
    int rc = -ENOENT;
    if (l->record != NULL && strcmp(l->holder, l->identity) == 0) {
        char *body = lease_body(l, true);
        rc = body ? send_request(l, STEP_RELEASE, body) : -ENOMEM;
    }
    l->releasing = rc == 0;
    if (rc != 0 && rc != -ENOENT && l->log != NULL)
        CMH_LOG(l->log, CMH_LOG_WARN,
                "leader election: could not release the lease (it expires by itself)",
                CMH_STR("error", strerror(-rc)));
}

static void on_done(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res)
{
    struct cmh_leader *l = container_of(req, struct cmh_leader, req.curl);
    l->in_flight = false;
    if (l->step == STEP_RELEASE) {
        release_done(l, res);
        return;
    }
    if (l->stopping) {
        /* Stopped while leading with this request in flight: it may have renewed the Lease, and
         * the release must carry the resourceVersion it left, or it gets 409 and the others wait a
         * whole lease duration. */
        if (!l->releasing)
            return;
        struct cmh_lease_record rec;
        json_t *lease = res->error == CMH_CURL_OK && (res->status == 200 || res->status == 201)
                            ? lease_load(res->body, res->body_len, &rec)
                            : NULL;
        if (lease != NULL)
            observe(l, lease, &rec);
        release(l);
        finish_if_closed(l);
        return;
    }
    if (res->error == CMH_CURL_ERR_CANCELLED)
        return;
    /* 404 (no Lease yet) and 409 (another replica wrote first) are the election's own. */
    char why[256];
    int rc = cmh_k8s_api_result(&l->api, res, NULL, 0, why, sizeof why);
    if (rc != 0 && rc != -ENOENT && rc != -EEXIST)
        set_error(l, "Lease request failed: %s", why);
    if (res->error != CMH_CURL_OK) {
        failed(l);
        return;
    }
    if (l->step == STEP_GET)
        get_done(l, res);
    else
        write_done(l, res);
}

/* ---- lifecycle ---- */

static void free_all(struct cmh_leader *l)
{
    json_decref(l->record);
    l->record = NULL;
    cmh_k8s_api_free(&l->api);
    cmh_k8s_api_req_free(&l->req);
    char **strs[] = {&l->ns, &l->name, &l->identity, &l->body};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        cmh_free(*strs[i]);
        *strs[i] = NULL;
    }
}

static char *default_identity(int *rc)
{
    const char *pod = getenv("POD_NAME");
    if (pod != NULL && pod[0] != '\0' && strlen(pod) <= 253)
        return cmh_strdup_opt(pod, rc);
    char host[256] = "";
    char buf[300];
    if (gethostname(host, sizeof host - 1) != 0 || host[0] == '\0')
        snprintf(host, sizeof host, "unknown");
    snprintf(buf, sizeof buf, "%s_%ld", host, (long)getpid());
    return cmh_strdup_opt(buf, rc);
}

int cmh_leader_start(struct cmh_leader *l, uv_loop_t *loop, struct cmh_curl_uv *curl,
                     const struct cmh_leader_opts *opts, struct cmh_log *log,
                     cmh_leader_change_cb on_change, void *arg)
{
    int rc = 0;
    char err[512];
    memset(l, 0, sizeof *l);
    l->loop = loop;
    l->curl = curl;
    l->log = log;
    l->on_change = on_change;
    l->arg = arg;
    if (cmh_leader_check_opts(opts, err, sizeof err) != 0) {
        if (log != NULL)
            CMH_LOG(log, CMH_LOG_ERROR, "bad leader election settings", CMH_STR("error", err));
        return -EINVAL;
    }
    struct cmh_k8s_api_opts ao = {.server = opts->server,
                                  .token_file = opts->token_file,
                                  .ca_file = opts->ca_file,
                                  .token_max_age_ms = TOKEN_MAX_AGE_MS};
    if (cmh_k8s_api_init(&l->api, &ao) != 0)
        rc = -ENOMEM; /* the server was checked */
    l->ns = cmh_strdup_opt(opts->namespace_name ? opts->namespace_name : DEFAULT_NAMESPACE, &rc);
    l->name = cmh_strdup_opt(opts->lease_name ? opts->lease_name : DEFAULT_LEASE, &rc);
    l->identity = opts->identity ? cmh_strdup_opt(opts->identity, &rc) : default_identity(&rc);
    if (rc != 0) {
        free_all(l);
        return -ENOMEM;
    }
    l->lease_ms = or_default(opts->lease_duration_ms, DEFAULT_LEASE_MS);
    l->renew_ms = or_default(opts->renew_deadline_ms, DEFAULT_RENEW_MS);
    l->retry_ms = or_default(opts->retry_period_ms, DEFAULT_RETRY_MS);
    /* Two requests (GET then PUT) make one attempt: each gets half the renew deadline. */
    l->request_ms = l->renew_ms / 2;
    if (l->request_ms < 100)
        l->request_ms = 100;
    l->rng = cmh_rng_seed(opts->seed);
    l->st.identity = l->identity;
    /* uv_timer_init cannot fail (libuv documents no error for it). */
    uv_timer_init(loop, &l->retry);
    uv_timer_init(loop, &l->deadline);
    l->open_handles = 2;
    l->started = true;
    if (log != NULL)
        CMH_LOG(log, CMH_LOG_INFO, "leader election starting", CMH_STR("identity", l->identity),
                CMH_STR("namespace", l->ns), CMH_STR("lease", l->name),
                CMH_UINT("lease_duration_ms", l->lease_ms),
                CMH_UINT("renew_deadline_ms", l->renew_ms),
                CMH_UINT("retry_period_ms", l->retry_ms));
    /* The first attempt starts from the loop, never inside this call. */
    uv_timer_start(&l->retry, on_retry, 0, 0);
    return 0;
}

bool cmh_leader_is_leader(const struct cmh_leader *l)
{
    return l->started && !l->stopping && l->leader;
}

static void finish_if_closed(struct cmh_leader *l)
{
    if (l->open_handles > 0 || l->releasing)
        return;
    free_all(l);
    if (l->close_cb != NULL)
        l->close_cb(l);
}

static void on_retry_closed(uv_handle_t *h)
{
    struct cmh_leader *l = container_of((uv_timer_t *)h, struct cmh_leader, retry);
    l->open_handles--;
    finish_if_closed(l);
}

static void on_deadline_closed(uv_handle_t *h)
{
    struct cmh_leader *l = container_of((uv_timer_t *)h, struct cmh_leader, deadline);
    l->open_handles--;
    finish_if_closed(l);
}

void cmh_leader_close(struct cmh_leader *l, cmh_leader_close_cb close_cb)
{
    if (!l->started || l->stopping)
        return;
    l->stopping = true;
    l->close_cb = close_cb;
    bool was_leader = l->leader;
    l->leader = false;
    l->st.is_leader = false;
    uv_timer_stop(&l->retry);
    uv_timer_stop(&l->deadline);
    if (was_leader && l->in_flight) {
        l->releasing = true; /* on_done releases once the request in flight ended */
    } else {
        if (l->in_flight)
            cmh_curl_uv_cancel(l->curl, &l->req.curl);
        l->in_flight = false;
        if (was_leader)
            release(l);
    }
    uv_close((uv_handle_t *)&l->retry, on_retry_closed);
    uv_close((uv_handle_t *)&l->deadline, on_deadline_closed);
}

void cmh_leader_status(const struct cmh_leader *l, struct cmh_leader_status *st)
{
    *st = l->st;
    st->is_leader = cmh_leader_is_leader(l);
    st->holder = l->holder;
    st->identity = l->identity;
    st->errors = l->err.count;
    st->last_error = l->err.text;
}
