/* AWS credentials, region and cluster id: the provider chain (environment keys, the shared files'
 * profile, web identity, container credentials, IMDSv2), evaluated asynchronously on the loop
 * through curl_uv, cached and refreshed before expiry. Owned by its user (the publisher, the EC2
 * client: cmh_aws_provider_new/_free); thread: the loop thread only. The parsers it uses are in
 * creds_parse.h. */
#ifndef CMH_AWS_CREDS_H
#define CMH_AWS_CREDS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct cmh_log;
struct cmh_curl_uv;

/* A set of credentials. Strings are owned by the provider; valid until the next refresh. */
struct cmh_aws_credentials {
    /* read-only */
    const char *access_key_id;
    const char *secret_access_key;
    const char *session_token; /* NULL when none */
    int64_t expires_ms;        /* wall clock, ms since the epoch; 0 = never */
    const char *source;        /* "environment", "web-identity", "container", "imds" */
};

/* Where every endpoint is, and the environment (a NULL-terminated "NAME=value" array, like
 * environ, read at init: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
 * AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_SESSION_NAME,
 * AWS_CONTAINER_CREDENTIALS_FULL_URI, AWS_CONTAINER_CREDENTIALS_RELATIVE_URI,
 * AWS_CONTAINER_AUTHORIZATION_TOKEN, AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE,
 * AWS_EC2_METADATA_DISABLED, AWS_EC2_METADATA_SERVICE_ENDPOINT,
 * AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE, AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_STS, AWS_REGION,
 * AWS_DEFAULT_REGION, AWS_CLUSTER_ID). The envp array is only read during new(). */
struct cmh_aws_creds_opts {
    /* public */
    char *const *envp;
    const char *region;       /* already known (AWS_REGION from the config), or NULL */
    const char *cluster_id;   /* already known (AWS_CLUSTER_ID), or NULL */
    uint64_t imds_timeout_ms; /* the IMDSv2 token PUT and GETs; 0 = 1000 */
    /* Base URL for AWS_CONTAINER_CREDENTIALS_RELATIVE_URI; NULL = http://169.254.170.2 (ECS).
     * Tests point it at loopback; the container allow-list applies to it as to FULL_URI. */
    const char *ecs_endpoint;
    uint64_t sts_timeout_ms; /* STS and container-credential requests; 0 = 5000 */
    /* What the cluster says (the node's spec.providerID), or NULL: the region, used after
     * AWS_REGION and AWS_DEFAULT_REGION and before IMDS; the instance this runs on. */
    const char *region_hint;
    const char *instance_id;
    /* Set: the caller looks the cluster id up itself (EC2 DescribeTags, the cluster). Resolving
     * then learns the region and the instance id (instance_id, else IMDS's instance-id) and ends
     * with cluster id "" (never the default) unless AWS_CLUSTER_ID is set; an unreachable IMDS
     * then only leaves the instance id unknown (cmh_aws_provider_instance_id NULL). */
    int cluster_lookup;
};

struct cmh_aws_provider;

/* Fires once per cmh_aws_creds_get, never inside it. rc is 0 with creds, or a negative code with
 * creds NULL and a reason (for the log and /readyz) in why. */
typedef void (*cmh_aws_creds_cb)(struct cmh_aws_provider *p, int rc,
                                 const struct cmh_aws_credentials *creds, const char *why,
                                 void *arg);

/* Fires once per cmh_aws_resolve: region and cluster id (never NULL when rc is 0). */
typedef void (*cmh_aws_resolve_cb)(struct cmh_aws_provider *p, int rc, const char *region,
                                   const char *cluster_id, const char *why, void *arg);

/* Reads opts->envp and picks the credential source once, in the SDKs' order: AWS_ACCESS_KEY_ID +
 * AWS_SECRET_ACCESS_KEY; AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE; AWS_CONTAINER_CREDENTIALS_
 * RELATIVE_URI or _FULL_URI; IMDSv2 unless AWS_EC2_METADATA_DISABLED=true. The first configured
 * source is the one used (a failure is reported, never papered over by the next source). curl and
 * log are borrowed (log may be NULL). Returns 0; -EINVAL for a malformed region, endpoint or
 * token; -EPERM for a container-credentials URL on a plain-http host outside the allow-list;
 * -ENOMEM. Each failure is logged with the variable to fix. Touches no network. */
int cmh_aws_provider_new(struct cmh_aws_provider **out, uv_loop_t *loop, struct cmh_curl_uv *curl,
                         const struct cmh_aws_creds_opts *opts, struct cmh_log *log);

/* Credentials now: from the cache when they expire more than 5 minutes from now, else from the
 * chain. Concurrent calls share one refresh. */
int cmh_aws_creds_get(struct cmh_aws_provider *p, cmh_aws_creds_cb cb, void *arg);

/* Drops the cache (after ExpiredToken): the next get refreshes. */
void cmh_aws_creds_invalidate(struct cmh_aws_provider *p);

/* Region (AWS_REGION, AWS_DEFAULT_REGION, the profile, the node's providerID, then IMDS) and
 * cluster id (AWS_CLUSTER_ID; with cluster_lookup "" and the instance id; else a default logged as
 * a warning). IMDS is asked only for what is still unknown (the region; with cluster_lookup, the
 * instance id). */
int cmh_aws_resolve(struct cmh_aws_provider *p, cmh_aws_resolve_cb cb, void *arg);

/* After a resolve: the instance id (cluster_lookup), or NULL; where the region came from
 * ("AWS_REGION", "AWS_DEFAULT_REGION", "node-provider-id", "imds", or "unknown"). */
const char *cmh_aws_provider_instance_id(const struct cmh_aws_provider *p);
const char *cmh_aws_provider_region_from(const struct cmh_aws_provider *p);

/* Fires once per cmh_aws_provider_close, from the loop, when p's timer has closed and a pending
 * token-file read has finished, just before its memory goes. */
typedef void (*cmh_aws_provider_close_cb)(struct cmh_aws_provider *p, void *arg);

/* Cancels what is in flight, the requests included (callbacks fire with -ECANCELED, before this
 * returns), and closes p (NULL: nothing to do); nothing of p may be used any more. close_cb (may
 * be NULL) fires with arg once the loop has finished with p, then its memory goes: keep running
 * the loop. */
void cmh_aws_provider_close(struct cmh_aws_provider *p, cmh_aws_provider_close_cb close_cb,
                            void *arg);

/* Requests sent since new (every attempt counts), for self-metrics and tests. */
uint64_t cmh_aws_provider_requests(const struct cmh_aws_provider *p);

#endif
