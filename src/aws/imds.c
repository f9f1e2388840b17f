/* The IMDSv2 client of the credential provider (see include/cmh/aws/aws_creds_int.h): the session
 * token (PUT /latest/api/token, reused until shortly before its TTL) and the GETs that carry it.
 * IMDS is link-local plain HTTP, reached directly, never through a proxy. */
#include "cmh/aws/aws_creds_int.h"

#include "cmh/aws/creds_parse.h"
#include "cmh/core/alloc.h"
#include "cmh/core/log.h"

#include <errno.h>
#include <stdio.h>

#define IMDS_TOKEN_TTL_S 21600
#define IMDS_TOKEN_MAX   1024

static void token_failed(struct cmh_aws_job *j, int rc, const char *why)
{
    if (j->token_failed != NULL)
        j->token_failed(j, rc, why);
    else
        cmh_aws_job_finish(j, rc, "%s", why);
}

static void on_imds_token(struct cmh_aws_job *j, const struct cmh_curl_uv_response *res)
{
    struct cmh_aws_provider *p = j->p;
    char d[320], why[CMH_AWS_WHY_MAX];
    if (cmh_aws_job_retry(j, res))
        return;
    if (res->error == CMH_CURL_ERR_TIMEOUT) {
        CMH_LOG(p->log, CMH_LOG_ERROR,
                "aws: IMDSv2 token request timed out: likely the instance's metadata hop limit",
                CMH_STR("reason", "imds-hop-limit"),
                CMH_STR("hint", "set HttpPutResponseHopLimit to 2 (aws ec2 "
                                "modify-instance-metadata-options --http-put-response-hop-limit "
                                "2), or use IRSA / EKS Pod Identity"),
                CMH_UINT("timeout_ms", p->imds_timeout_ms));
        snprintf(why, sizeof why,
                 "IMDSv2 token request (PUT /latest/api/token) timed out after %llu ms: likely "
                 "the metadata PUT response hop limit is 1, too low for a pod; set it to 2, or "
                 "use IRSA / EKS Pod Identity",
                 (unsigned long long)p->imds_timeout_ms);
        token_failed(j, -ETIMEDOUT, why);
        return;
    }
    if (res->error == CMH_CURL_OK && res->status == 403) {
        token_failed(j, -EACCES, "IMDSv2 token request forbidden (403): IMDS is disabled");
        return;
    }
    if (res->error != CMH_CURL_OK || res->status != 200 || res->body_len == 0 ||
        res->body_len > IMDS_TOKEN_MAX) {
        cmh_aws_describe(res, d, sizeof d);
        snprintf(why, sizeof why, "IMDSv2 token request failed: %s", d);
        token_failed(j, res->error == CMH_CURL_ERR_CONNECT ? -ECONNREFUSED : -EIO, why);
        return;
    }
    char *tok;
    int rc = cmh_aws_imds_parse_text(res->body, res->body_len, IMDS_TOKEN_MAX, &tok);
    if (rc != 0) {
        cmh_aws_job_finish(j, rc, "IMDSv2 token unusable");
        return;
    }
    cmh_free_secret(p->imds_token);
    p->imds_token = tok;
    p->imds_token_until = uv_now(p->loop) + (uint64_t)(IMDS_TOKEN_TTL_S - 60) * 1000;
    j->after_token(j);
}

void cmh_aws_imds_with_token(struct cmh_aws_job *j, cmh_aws_next_fn next, cmh_aws_fail_fn on_fail)
{
    struct cmh_aws_provider *p = j->p;
    j->after_token = next;
    j->token_failed = on_fail;
    if (p->imds_token != NULL && uv_now(p->loop) < p->imds_token_until) {
        next(j);
        return;
    }
    char *hdr[] = {cmh_aws_strf("X-aws-ec2-metadata-token-ttl-seconds: %d", IMDS_TOKEN_TTL_S)};
    int rc = cmh_aws_job_request(j, "PUT", cmh_aws_strf("%s/latest/api/token", p->imds_base), hdr,
                                 1, NULL, 1, 1, p->imds_timeout_ms, on_imds_token);
    if (rc != 0)
        cmh_aws_job_finish(j, rc, "cannot start the IMDSv2 token request");
}

void cmh_aws_imds_get(struct cmh_aws_job *j, const char *path, cmh_aws_step_fn on_resp)
{
    struct cmh_aws_provider *p = j->p;
    char *hdr[] = {cmh_aws_strf("X-aws-ec2-metadata-token: %s", p->imds_token)};
    int rc = cmh_aws_job_request(j, "GET", cmh_aws_strf("%s%s", p->imds_base, path), hdr, 1, NULL,
                                 1, 1, p->imds_timeout_ms, on_resp);
    if (rc != 0)
        cmh_aws_job_finish(j, rc, "cannot start the IMDS request %s", path);
}

int cmh_aws_imds_retry(struct cmh_aws_job *j, const struct cmh_curl_uv_response *res)
{
    if (cmh_aws_job_retry(j, res))
        return 1;
    /* The token string stays (the other job may be about to use it) until a new token replaces
     * it. */
    if (res->error == CMH_CURL_OK && res->status == 401)
        j->p->imds_token_until = 0;
    return 0;
}
