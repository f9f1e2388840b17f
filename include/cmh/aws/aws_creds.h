/* AWS credentials, region and cluster id: the provider chain (environment keys, web identity,
 * container credentials, IMDSv2), evaluated asynchronously on the loop through curl_uv, cached
 * and refreshed before expiry. Owned by the daemon (cmh_aws_provider_new/_free); thread: the loop
 * thread only. */
#ifndef CMH_AWS_CREDS_H
#define CMH_AWS_CREDS_H

#include <stddef.h>
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
 * AWS_EC2_METADATA_DISABLED, AWS_EC2_METADATA_SERVICE_ENDPOINT,
 * AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE, AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_STS, AWS_REGION,
 * AWS_DEFAULT_REGION, AWS_CLUSTER_ID). The envp array is only read during new(). */
struct cmh_aws_creds_opts {
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

/* Region (AWS_REGION, AWS_DEFAULT_REGION, then IMDS) and cluster id (AWS_CLUSTER_ID, then what
 * can be learnt without extra IAM permissions, then a default logged as a warning). With both
 * given, touches nothing. */
int cmh_aws_resolve(struct cmh_aws_provider *p, cmh_aws_resolve_cb cb, void *arg);

/* After a resolve: the instance id (cluster_lookup), or NULL; where the region came from
 * ("AWS_REGION", "AWS_DEFAULT_REGION", "node-provider-id", "imds", or "unknown"). */
const char *cmh_aws_provider_instance_id(const struct cmh_aws_provider *p);
const char *cmh_aws_provider_region_from(const struct cmh_aws_provider *p);

/* Cancels what is in flight (callbacks fire with -ECANCELED, before this returns) and frees p.
 * The memory itself goes once p's timers have closed and a pending token-file read has finished:
 * keep running the loop. A request already handed to curl_uv is abandoned (curl_uv cannot cancel
 * one request); it ends on its own, or when curl_uv is closed. */
void cmh_aws_provider_free(struct cmh_aws_provider *p);

/* Requests sent since new (every attempt counts), for self-metrics and tests. */
uint64_t cmh_aws_provider_requests(const struct cmh_aws_provider *p);

/* Pure parsers of the credential documents, exposed for tests and fuzzing (no I/O, no loop).
 * Strings are allocated (cmh_malloc) and released by cmh_aws_creds_doc_clear. */
struct cmh_aws_creds_doc {
    char *access_key_id;
    char *secret_access_key;
    char *session_token; /* NULL when none */
    int64_t expires_ms;  /* 0 when the document has no expiration */
    char *error_code;    /* set when the document is an error answer */
    char *error_message;
};

/* The JSON of IMDS (`"Code" : "Success"`, AccessKeyId, SecretAccessKey, Token, Expiration) and of
 * the ECS / EKS Pod Identity agents (same keys, or {"code","message"} on error). Returns 0 when
 * doc holds credentials or an error code, -EPROTO when the document is neither, -ENOMEM. */
int cmh_aws_creds_parse_json(const char *buf, size_t len, struct cmh_aws_creds_doc *doc);

/* The XML answer of STS AssumeRoleWithWebIdentity (…Result/Credentials/…) or an ErrorResponse
 * (Error/Code, Error/Message). Rejects DOCTYPE, duplicate fields, misplaced elements. Same
 * returns as the JSON parser. */
int cmh_aws_creds_parse_sts_xml(const char *buf, size_t len, struct cmh_aws_creds_doc *doc);

void cmh_aws_creds_doc_clear(struct cmh_aws_creds_doc *doc);

/* "2021-09-21T04:16:53Z" (optional .fraction, Z or ±hh:mm) to ms since the epoch; -EINVAL else. */
int cmh_aws_parse_time(const char *s, int64_t *ms);

/* Pure parsers of IMDS's text answers, exposed for tests and fuzzing: body is len bytes (no
 * terminator needed). Each returns 0 with a cmh_malloc'd copy in *out, -EPROTO (*out NULL) when
 * the answer is unusable, -ENOMEM. The region (placement/region): its first line (up to CR or LF)
 * when a region name, 1..32 of [a-z0-9-]. */
int cmh_aws_imds_parse_region(const char *body, size_t len, char **out);
/* The role (iam/security-credentials/): its first line when 1..128 bytes, printable (no control
 * byte or DEL), without '/'. */
int cmh_aws_imds_parse_role(const char *body, size_t len, char **out);
/* A whole answer used as a header or dimension value (the session token, max 1024; an instance
 * tag's value, max 255): 1..max printable bytes (no CR, LF, NUL or other control byte). */
int cmh_aws_imds_parse_text(const char *body, size_t len, size_t max, char **out);
/* The instance tag listing (tags/instance, one key per line): the first of the tags naming the
 * cluster (eks:cluster-name, CLUSTER_ID, eks:eks-cluster-name, aws:eks:cluster-name, in that
 * order of preference) that is a whole line of it; a static string, or NULL. */
const char *cmh_aws_imds_cluster_tag(const char *body, size_t len);

/* The AWS_CONTAINER_CREDENTIALS_* URL gate: 1 when url has no user information and is https://
 * to any host, or http:// to a host of the AWS SDKs' allow-list (127.0.0.0/8, ::1, localhost,
 * 169.254.170.2, 169.254.170.23, fd00:ec2::23); else 0 with a sentence in why. */
int cmh_aws_container_url_allowed(const char *url, char *why, size_t whylen);

#endif
