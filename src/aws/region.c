/* Region and cluster id of the credential provider (see include/cmh/aws/aws_creds.h): what the
 * configuration and the node said, then IMDS (placement/region; the instance id when the caller
 * looks the cluster id up itself), else a default cluster id logged as a warning. */
#include "cmh/aws/aws_creds_int.h"

#include "cmh/aws/creds_parse.h"
#include "cmh/core/alloc.h"
#include "cmh/core/log.h"

#include <errno.h>
#include <stdio.h>

#define DEFAULT_CLUSTER_ID "k8s-cluster"

static void resolve_done(struct cmh_aws_job *j)
{
    struct cmh_aws_provider *p = j->p;
    p->resolved = 1;
    if (p->cluster_id[0] != '\0')
        CMH_LOG(p->log, CMH_LOG_INFO, "aws: region and cluster id", CMH_STR("region", p->region),
                CMH_STR("region_from", p->region_from != NULL ? p->region_from : "unknown"),
                CMH_STR("cluster_id", p->cluster_id), CMH_STR("cluster_id_from", p->cluster_from));
    else
        CMH_LOG(p->log, CMH_LOG_INFO, "aws: region and instance", CMH_STR("region", p->region),
                CMH_STR("region_from", p->region_from != NULL ? p->region_from : "unknown"),
                CMH_STR("instance_id", p->instance_id != NULL ? p->instance_id : "(unknown)"));
    cmh_aws_job_finish(j, 0, NULL);
}

/* Ends resolving with the default cluster id, logging why it is unknown. */
static void resolve_default_cluster(struct cmh_aws_job *j, const char *why)
{
    struct cmh_aws_provider *p = j->p;
    p->cluster_id = cmh_strdup(DEFAULT_CLUSTER_ID);
    if (p->cluster_id == NULL) {
        cmh_aws_job_finish(j, -ENOMEM, "out of memory");
        return;
    }
    p->cluster_from = "default";
    CMH_LOG(p->log, CMH_LOG_WARN,
            "aws: cluster id unknown, using the default: set AWS_CLUSTER_ID to your cluster name",
            CMH_STR("cluster_id", DEFAULT_CLUSTER_ID), CMH_STR("why", why));
    resolve_done(j);
}

/* With cluster_lookup the caller learns the cluster id itself (EC2 DescribeTags of the instance,
 * then what the cluster says): resolving ends with the region, the instance id when one could be
 * learnt, and an empty cluster id. why, when not NULL, says why the instance id is unknown. */
static void resolve_for_lookup(struct cmh_aws_job *j, const char *why)
{
    struct cmh_aws_provider *p = j->p;
    if (why != NULL)
        CMH_LOG(p->log, CMH_LOG_WARN, "aws: instance id unknown: IMDS not reachable",
                CMH_STR("why", why),
                CMH_STR("fix", "set NODE_NAME (the node's spec.providerID names the instance) or "
                               "AWS_CLUSTER_ID"));
    p->cluster_id = cmh_strdup("");
    if (p->cluster_id == NULL) {
        cmh_aws_job_finish(j, -ENOMEM, "out of memory");
        return;
    }
    p->cluster_from = "lookup";
    resolve_done(j);
}

/* The token step failed: with the region known (and so a lookup to come) resolving still ends;
 * else it fails with why. */
static void on_token_failed(struct cmh_aws_job *j, int rc, const char *why)
{
    if (j->p->region != NULL && j->p->cluster_lookup)
        resolve_for_lookup(j, why);
    else
        cmh_aws_job_finish(j, rc, "%s", why);
}

static void on_instance_id(struct cmh_aws_job *j, const struct cmh_curl_uv_response *res)
{
    struct cmh_aws_provider *p = j->p;
    if (cmh_aws_imds_retry(j, res))
        return;
    char *v = NULL;
    if (res->error == CMH_CURL_OK && res->status == 200 &&
        cmh_aws_imds_parse_text(res->body, res->body_len, 64, &v) == 0) {
        p->instance_id = v;
        resolve_for_lookup(j, NULL);
        return;
    }
    char d[320], why[CMH_AWS_WHY_MAX];
    cmh_aws_describe(res, d, sizeof d);
    snprintf(why, sizeof why, "IMDS instance-id: %s", d);
    resolve_for_lookup(j, why);
}

static void resolve_cluster_step(struct cmh_aws_job *j)
{
    struct cmh_aws_provider *p = j->p;
    if (p->cluster_id != NULL)
        resolve_done(j);
    else if (!p->cluster_lookup)
        resolve_default_cluster(j, "AWS_CLUSTER_ID is not set");
    else if (p->instance_id != NULL)
        resolve_for_lookup(j, NULL);
    else
        cmh_aws_imds_get(j, "/latest/meta-data/instance-id", on_instance_id);
}

static void on_region(struct cmh_aws_job *j, const struct cmh_curl_uv_response *res)
{
    struct cmh_aws_provider *p = j->p;
    char d[320];
    if (cmh_aws_imds_retry(j, res))
        return;
    if (res->error != CMH_CURL_OK || res->status != 200) {
        cmh_aws_describe(res, d, sizeof d);
        cmh_aws_job_finish(j, -EIO,
                           "region from IMDS (/latest/meta-data/placement/region): %s; set "
                           "AWS_REGION",
                           d);
        return;
    }
    char *r;
    int rc = cmh_aws_imds_parse_region(res->body, res->body_len, &r);
    if (rc != 0) {
        cmh_aws_job_finish(j, rc, "region from IMDS is not a region name; set AWS_REGION");
        return;
    }
    p->region = r;
    p->region_from = "imds";
    CMH_LOG(p->log, CMH_LOG_INFO, "aws: region from IMDS", CMH_STR("region", r));
    resolve_cluster_step(j);
}

static void resolve_after_token(struct cmh_aws_job *j)
{
    if (j->p->region == NULL)
        cmh_aws_imds_get(j, "/latest/meta-data/placement/region", on_region);
    else
        resolve_cluster_step(j);
}

void cmh_aws_region_resolve_start(struct cmh_aws_provider *p)
{
    struct cmh_aws_job *j = &p->rj;
    j->busy = 1;
    if (p->region != NULL && (p->cluster_id != NULL || !p->cluster_lookup)) {
        resolve_cluster_step(j); /* IMDS has nothing more to say */
        return;
    }
    if (p->cluster_lookup && p->region != NULL && (p->instance_id != NULL || p->imds_disabled)) {
        resolve_for_lookup(
            j, p->instance_id != NULL ? NULL : "IMDS is disabled by AWS_EC2_METADATA_DISABLED");
        return;
    }
    if (p->imds_disabled) {
        cmh_aws_job_finish(j, -ENOENT,
                           "region unknown: set AWS_REGION (IMDS is disabled by "
                           "AWS_EC2_METADATA_DISABLED)");
        return;
    }
    cmh_aws_imds_with_token(j, resolve_after_token, on_token_failed);
}
