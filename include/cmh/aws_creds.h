/* AWS credentials, region and cluster id: the provider chain (environment keys, web identity,
 * container credentials, IMDSv2), evaluated asynchronously on the loop through curl_uv, cached
 * and refreshed before expiry. Owned by the daemon (embedded); thread: the loop thread only. */
#ifndef CMH_AWS_CREDS_H
#define CMH_AWS_CREDS_H

#include <stdint.h>
#include <uv.h>

struct cmh_log;
struct cmh_curl_uv;

/* A set of credentials. Strings are owned by the provider; valid until the next refresh. */
struct cmh_aws_credentials {
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
 * AWS_EC2_METADATA_DISABLED, AWS_EC2_METADATA_SERVICE_ENDPOINT, AWS_ENDPOINT_URL,
 * AWS_ENDPOINT_URL_STS, AWS_REGION, AWS_DEFAULT_REGION). */
struct cmh_aws_creds_opts {
    char *const *envp;
    const char *region;     /* already known (AWS_REGION from the config), or NULL */
    const char *cluster_id; /* already known (AWS_CLUSTER_ID), or NULL */
    uint64_t imds_timeout_ms; /* the IMDSv2 token PUT and GETs; 0 = 1000 */
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

int cmh_aws_provider_new(struct cmh_aws_provider **out, uv_loop_t *loop, struct cmh_curl_uv *curl,
                         const struct cmh_aws_creds_opts *opts, struct cmh_log *log);

/* Credentials now: from the cache when they expire more than 5 minutes from now, else from the
 * chain. Concurrent calls share one refresh. */
int cmh_aws_creds_get(struct cmh_aws_provider *p, cmh_aws_creds_cb cb, void *arg);

/* Drops the cache (after ExpiredToken): the next get refreshes. */
void cmh_aws_creds_invalidate(struct cmh_aws_provider *p);

/* Region (AWS_REGION, AWS_DEFAULT_REGION, then IMDS) and cluster id (AWS_CLUSTER_ID, then what
 * can be learnt without extra IAM permissions, then a default logged as a warning). With both
 * given, touches nothing. */
int cmh_aws_resolve(struct cmh_aws_provider *p, cmh_aws_resolve_cb cb, void *arg);

/* Cancels what is in flight (callbacks fire with -ECANCELED) and frees p. */
void cmh_aws_provider_free(struct cmh_aws_provider *p);

#endif
