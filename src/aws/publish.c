#include "cmh/aws/publish.h"

#include "cmh/core/alloc.h"
#include "cmh/aws/aws_creds.h"
#include "cmh/aws/endpoint.h"
#include "cmh/aws/cluster_id.h"
#include "cmh/core/log.h"
#include "cmh/aws/sigv4.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

struct cmh_publish {
    uv_loop_t *loop;
    struct cmh_log *log;
    struct cmh_curl_uv *curl;
    const struct cmh_config *cfg;
    struct cmh_aws_provider *aws;
    struct cmh_cloudwatch *cw;
    char *endpoint_override;
    char *cluster_id;
    char cluster_source[64];           /* where cluster_id came from */
    char cluster_degraded[768];        /* "" unless it is the shared default */
    struct cmh_cluster_finder *finder; /* AWS_CLUSTER_ID empty: the lookup */
    char *region;
    char *const *envp; /* borrowed, read while the finder starts the provider */
    int resolving;
    int freeing;  /* callbacks cancelled by free reach no one */
    bool standby; /* not the leader (cmh_publish_standby), applied once cw exists */
    char why[256];
    /* Why the last credentials request failed ("" when it did not): with no credentials nothing
     * is published, which /readyz must say. */
    char creds_why[320];
    char ready_why[160]; /* the sentence of the last cmh_publish_ready that built one */
    cmh_publish_ready_cb cb;
    void *arg;
    void (*flush_cb)(void *arg);
    void *flush_arg;
};

/* One credentials request of the publisher, carried through the provider's callback. */
struct creds_call {
    struct cmh_publish *p;
    cmh_cloudwatch_creds_cb cb;
    void *arg;
};

static void on_aws_creds(struct cmh_aws_provider *prov, int rc,
                         const struct cmh_aws_credentials *creds, const char *why, void *arg)
{
    struct creds_call *call = arg;
    struct cmh_publish *p = call->p;
    (void)prov;
    if (!p->freeing)
        snprintf(p->creds_why, sizeof p->creds_why, "%s",
                 rc == 0       ? ""
                 : why != NULL ? why
                               : "no AWS credentials");
    if (rc == 0) {
        struct cmh_sigv4_credentials c = {creds->access_key_id, creds->secret_access_key,
                                          creds->session_token};
        call->cb(call->arg, 0, &c, NULL);
    } else {
        call->cb(call->arg, rc, NULL, why);
    }
    cmh_free(call);
}

static int creds_get(void *ctx, cmh_cloudwatch_creds_cb cb, void *arg)
{
    struct cmh_publish *p = ctx;
    struct creds_call *call = cmh_malloc(sizeof *call);
    if (call == NULL)
        return -ENOMEM;
    call->p = p;
    call->cb = cb;
    call->arg = arg;
    int rc = cmh_aws_creds_get(p->aws, on_aws_creds, call);
    if (rc != 0)
        cmh_free(call);
    return rc;
}

static void creds_invalidate(void *ctx)
{
    struct cmh_publish *p = ctx;
    cmh_aws_creds_invalidate(p->aws);
}

static void start_cloudwatch(struct cmh_publish *p, const char *region, const char *cluster_id);

static void on_cluster_found(struct cmh_cluster_finder *f, const char *cluster_id,
                             const char *source, const char *degraded, void *arg)
{
    struct cmh_publish *p = arg;
    (void)f;
    snprintf(p->cluster_source, sizeof p->cluster_source, "%s", source);
    snprintf(p->cluster_degraded, sizeof p->cluster_degraded, "%s", degraded ? degraded : "");
    start_cloudwatch(p, p->region, cluster_id);
}

static void on_resolved(struct cmh_aws_provider *prov, int rc, const char *region,
                        const char *cluster_id, const char *why, void *arg)
{
    struct cmh_publish *p = arg;
    (void)prov;
    p->resolving = 0;
    if (p->freeing)
        return;
    if (rc != 0) {
        snprintf(p->why, sizeof p->why, "cannot learn the AWS region or cluster id: %s",
                 why ? why : "unknown error");
        p->cb(p, rc, p->why,
              "set AWS_REGION and AWS_CLUSTER_ID, or let the pod reach IMDS (hop limit 2)", p->arg);
        return;
    }
    if (cluster_id[0] == '\0' && p->finder != NULL) {
        /* AWS_CLUSTER_ID is empty: the finder looks it up, from the instance the provider or the
         * node named. */
        const char *instance = cmh_aws_provider_instance_id(p->aws);
        if (instance == NULL)
            instance = cmh_cluster_finder_instance(p->finder);
        p->region = cmh_strdup(region);
        if (p->region == NULL ||
            cmh_cluster_finder_find(p->finder, region, instance, on_cluster_found, p) != 0) {
            snprintf(p->why, sizeof p->why, "cannot look the cluster id up");
            p->cb(p, -ENOMEM, p->why, "set AWS_CLUSTER_ID", p->arg);
        }
        return;
    }
    if (p->cluster_source[0] == '\0')
        snprintf(p->cluster_source, sizeof p->cluster_source, "AWS_CLUSTER_ID");
    start_cloudwatch(p, region, cluster_id);
}

static void start_cloudwatch(struct cmh_publish *p, const char *region, const char *cluster_id)
{
    int rc;
    char endpoint[512];
    int n = cmh_cloudwatch_endpoint(region, p->endpoint_override, endpoint, sizeof endpoint);
    p->cluster_id = cmh_strdup(cluster_id);
    if (n < 0 || p->cluster_id == NULL) {
        snprintf(p->why, sizeof p->why, "bad region '%s' for the CloudWatch endpoint", region);
        p->cb(p, n < 0 ? n : -ENOMEM, p->why, "set AWS_REGION to a region name", p->arg);
        return;
    }
    struct cmh_cloudwatch_opts o;
    cmh_cloudwatch_opts_from_config(&o, p->cfg);
    o.region = region;
    o.endpoint = endpoint;
    o.creds = (struct cmh_cloudwatch_creds){creds_get, creds_invalidate, p};
    o.unready_after_ms = CMH_PUBLISH_UNREADY_INTERVALS * p->cfg->interval_ms;
    rc = cmh_cloudwatch_new(&p->cw, p->loop, p->curl, &o, p->log);
    if (rc != 0) {
        snprintf(p->why, sizeof p->why, "cannot set up the CloudWatch publisher (see the log)");
        p->cb(p, rc, p->why, "see the error logged before this line", p->arg);
        return;
    }
    cmh_cloudwatch_standby(p->cw, p->standby);
    CMH_LOG(p->log, CMH_LOG_INFO, "publishing to CloudWatch", CMH_STR("region", region),
            CMH_URL("endpoint", endpoint), CMH_STR("cluster_id", cluster_id),
            CMH_STR("namespace", p->cfg->cw_namespace));
    p->cb(p, 0, NULL, NULL, p->arg);
}

static int start_provider(struct cmh_publish *p)
{
    const struct cmh_config *cfg = p->cfg;
    struct cmh_aws_creds_opts ao = {.envp = p->envp,
                                    .region = cfg->aws_region,
                                    .cluster_id = cfg->cluster_id,
                                    .imds_timeout_ms = 1000,
                                    .cluster_lookup = p->finder != NULL};
    if (p->finder != NULL) {
        ao.region_hint = cmh_cluster_finder_region(p->finder);
        ao.instance_id = cmh_cluster_finder_instance(p->finder);
    }
    int rc = cmh_aws_provider_new(&p->aws, p->loop, p->curl, &ao, p->log);
    if (rc == 0) {
        p->resolving = 1;
        snprintf(p->why, sizeof p->why, "learning the AWS region and cluster id");
        rc = cmh_aws_resolve(p->aws, on_resolved, p);
    }
    return rc;
}

static void on_node_known(struct cmh_cluster_finder *f, void *arg)
{
    struct cmh_publish *p = arg;
    (void)f;
    int rc = start_provider(p);
    if (rc != 0) {
        p->resolving = 0;
        snprintf(p->why, sizeof p->why, "cannot set up AWS access (error %d, see the log)", rc);
        p->cb(p, rc, p->why, "see the error logged before this line", p->arg);
    }
}

int cmh_publish_new(struct cmh_publish **out, uv_loop_t *loop, struct cmh_curl_uv *curl,
                    const struct cmh_config *cfg, char *const *envp, struct cmh_log *log,
                    cmh_publish_ready_cb cb, void *arg)
{
    struct cmh_publish *p = cmh_calloc(1, sizeof *p);
    if (p == NULL)
        return -ENOMEM;
    p->loop = loop;
    p->log = log;
    p->curl = curl;
    p->cfg = cfg;
    p->cb = cb;
    p->arg = arg;
    const char *override = cmh_aws_endpoint_override(envp, "AWS_ENDPOINT_URL_CLOUDWATCH");
    int rc = 0;
    if (override != NULL && (p->endpoint_override = cmh_strdup(override)) == NULL)
        rc = -ENOMEM;
    p->envp = envp;
    if (rc == 0 && (cfg->cluster_id == NULL || cfg->cluster_id[0] == '\0')) {
        /* No AWS_CLUSTER_ID: the node this runs on first (its providerID names the region and
         * the instance without IMDS), then the provider, then the lookup. */
        rc = cmh_cluster_finder_new(&p->finder, loop, curl, cfg, envp, log);
        if (rc == 0)
            rc = cmh_cluster_finder_node(p->finder, on_node_known, p);
        if (rc == 0) {
            p->resolving = 1;
            snprintf(p->why, sizeof p->why, "learning the AWS region and cluster id");
        }
    } else if (rc == 0) {
        rc = start_provider(p);
    }
    if (rc != 0) {
        CMH_LOG(log, CMH_LOG_ERROR, "cannot set up AWS access", CMH_INT("error", rc));
        cmh_publish_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

const char *cmh_publish_cluster_id(const struct cmh_publish *p)
{
    return p->cluster_id;
}

const char *cmh_publish_cluster_id_source(const struct cmh_publish *p, const char **degraded)
{
    if (degraded != NULL)
        *degraded = p->cluster_degraded[0] != '\0' ? p->cluster_degraded : NULL;
    return p->cluster_source;
}

int cmh_publish_datums(struct cmh_publish *p, const struct cmh_datum *d, size_t n)
{
    if (p->cw == NULL)
        return -EAGAIN;
    return cmh_cloudwatch_enqueue(p->cw, d, n);
}

static void on_flushed(struct cmh_cloudwatch *cw, void *arg)
{
    struct cmh_publish *p = arg;
    (void)cw;
    p->flush_cb(p->flush_arg);
}

int cmh_publish_flush(struct cmh_publish *p, uint64_t deadline_ms, void (*cb)(void *arg), void *arg)
{
    p->flush_cb = cb;
    p->flush_arg = arg;
    if (p->cw == NULL)
        return -EAGAIN;
    return cmh_cloudwatch_flush(p->cw, deadline_ms, on_flushed, p);
}

void cmh_publish_standby(struct cmh_publish *p, bool standby)
{
    p->standby = standby;
    if (p->cw != NULL)
        cmh_cloudwatch_standby(p->cw, standby);
}

void cmh_publish_stats(const struct cmh_publish *p, struct cmh_cloudwatch_stats *out)
{
    if (p->cw != NULL)
        cmh_cloudwatch_stats(p->cw, out);
    else
        memset(out, 0, sizeof *out);
}

int cmh_publish_ready(struct cmh_publish *p, const char **why)
{
    if (p->cw == NULL) {
        *why = p->why;
        return -EAGAIN;
    }
    if (p->creds_why[0] != '\0') {
        *why = p->creds_why;
        return -EACCES;
    }
    int rc = cmh_cloudwatch_ready(p->cw);
    if (rc == -EACCES) {
        *why = "CloudWatch answers AccessDenied: grant cloudwatch:PutMetricData (see the log)";
        return rc;
    }
    if (rc != 0) {
        struct cmh_cloudwatch_stats st;
        cmh_cloudwatch_stats(p->cw, &st);
        snprintf(p->ready_why, sizeof p->ready_why,
                 "no CloudWatch PutMetricData has succeeded for %d intervals or more "
                 "(last error: %s)",
                 CMH_PUBLISH_UNREADY_INTERVALS, st.last_error[0] ? st.last_error : "unknown");
        *why = p->ready_why;
        return rc;
    }
    return 0;
}

void cmh_publish_free(struct cmh_publish *p)
{
    if (p == NULL)
        return;
    p->freeing = 1;
    if (p->cw != NULL)
        cmh_cloudwatch_close(p->cw, NULL, NULL);
    if (p->aws != NULL)
        cmh_aws_provider_close(p->aws, NULL, NULL);
    cmh_cluster_finder_close(p->finder, NULL, NULL);
    cmh_free(p->region);
    cmh_free(p->endpoint_override);
    cmh_free(p->cluster_id);
    cmh_free(p);
}
