/* Inside the credential provider (aws_creds.h): the provider's state and the pieces its files
 * share. creds.c is the provider chain (configuration, sources, cache, waiters, the public
 * functions), creds_job.c runs a job's requests and token-file reads, imds.c is the IMDSv2 client,
 * region.c resolves the region and the cluster id. Nothing outside those files includes this.
 * Thread: the loop thread only. */
#ifndef CMH_AWS_CREDS_INT_H
#define CMH_AWS_CREDS_INT_H

#include "cmh/aws/aws_creds.h"
#include "cmh/http/curl_uv.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define CMH_AWS_WHY_MAX 512

enum cmh_aws_source {
    CMH_AWS_SRC_NONE,
    CMH_AWS_SRC_ENV,
    CMH_AWS_SRC_WEB_IDENTITY,
    CMH_AWS_SRC_CONTAINER,
    CMH_AWS_SRC_IMDS,
    CMH_AWS_SRC_PROFILE,    /* static keys of a profile in the shared files */
    CMH_AWS_SRC_ASSUME_ROLE /* a profile's role_arn, assumed with its source_profile's keys */
};

struct cmh_aws_job;
struct cmh_aws_waiter;
/* A step: the response to the job's request (never a cancelled one: free ignores those). */
typedef void (*cmh_aws_step_fn)(struct cmh_aws_job *j, const struct cmh_curl_uv_response *res);
/* A token file read: rc 0 with the contents (trailing white space dropped), or -errno and NULL. */
typedef void (*cmh_aws_file_fn)(struct cmh_aws_job *j, int rc, const char *data);
typedef void (*cmh_aws_next_fn)(struct cmh_aws_job *j);
/* The IMDSv2 token could not be had; why is a sentence for the log and /readyz. */
typedef void (*cmh_aws_fail_fn)(struct cmh_aws_job *j, int rc, const char *why);

/* A sequence of steps (refresh the credentials, or resolve region + cluster id), one request or
 * one file read at a time, its result delivered to its waiters from the provider's 0 ms timer. */
struct cmh_aws_job {
    struct cmh_aws_provider *p;
    struct cmh_curl_uv_req req; /* the request in flight when in_flight */
    int in_flight;
    cmh_aws_step_fn on_resp;
    int busy;
    int finished; /* result set, waiting for the defer timer */
    int rc;
    char why[CMH_AWS_WHY_MAX];
    struct cmh_aws_waiter *waiting; /* want the result of the run in progress */
    struct cmh_aws_waiter *ready;   /* served from what is known, from the defer timer */
    /* the request being made, kept for a retry */
    char *url;
    char *hdr[8];
    size_t nhdr;
    char *body;
    unsigned attempts;
    cmh_aws_next_fn after_token;
    cmh_aws_fail_fn token_failed;
    /* a token file being read with uv_fs */
    uv_fs_t fs;
    int fs_busy;
    uv_file fd;
    char *fbuf;
    size_t flen;
    cmh_aws_file_fn on_file;
    char *role; /* the IMDS role whose credentials are being fetched */
};

struct cmh_aws_provider {
    uv_loop_t *loop;
    struct cmh_curl_uv *curl;
    struct cmh_log *log;
    enum cmh_aws_source source;
    /* configuration, read from the environment at new() */
    char *role_arn, *token_file, *session_name, *sts_url;
    char *src_akid, *src_secret, *src_token, *external_id; /* ASSUME_ROLE's source profile */
    char *container_url, *container_token, *container_token_file;
    char *imds_base;
    int imds_disabled;
    uint64_t imds_timeout_ms, sts_timeout_ms;
    /* results */
    char *region, *cluster_id;
    const char *cluster_from, *region_from;
    char *instance_id;  /* the instance this runs on: opts->instance_id, or IMDS with lookup */
    int cluster_lookup; /* opts->cluster_lookup: no default cluster id */
    int resolved;
    struct cmh_aws_credentials creds;
    char *c_akid, *c_secret, *c_token;
    int have_creds;
    char *imds_token;
    uint64_t imds_token_until; /* uv_now */
    struct cmh_aws_job cj, rj; /* credentials, resolve */
    uv_timer_t defer;
    int defer_open;
    int closing;
    cmh_aws_provider_close_cb close_cb; /* cmh_aws_provider_close */
    void *close_arg;
    uint64_t requests;
};

/* creds_job.c. Takes url, hdr[0..nhdr) (NULL entries skipped) and body (allocated, may be NULL,
 * owned by the job from here, also on failure) and starts the request; on_resp gets its response.
 * A credential endpoint (link-local or loopback: IMDS, Pod Identity, ECS) is reached directly,
 * never through a proxy; STS honours HTTPS_PROXY / NO_PROXY as the AWS SDKs do. Returns 0,
 * -ENOMEM (url NULL) or cmh_curl_uv_start's failure. */
int cmh_aws_job_request(struct cmh_aws_job *j, const char *method, char *url, char **hdr,
                        size_t nhdr, char *body, int allow_http, int credential_endpoint,
                        uint64_t timeout_ms, cmh_aws_step_fn on_resp);
/* From a step: sends the same request again after a 5xx or a broken connection, at most 3
 * attempts (IMDS). 1 when it did (the step ends there), else 0. */
int cmh_aws_job_retry(struct cmh_aws_job *j, const struct cmh_curl_uv_response *res);
/* Reads path with uv_fs (token files are read again on every refresh: the kubelet rotates them);
 * on_file fires from the loop. Returns 0 or a negative UV error (on_file then never fires). */
int cmh_aws_job_read_file(struct cmh_aws_job *j, const char *path, cmh_aws_file_fn on_file);
/* Sets the job's result (why formatted, may be NULL) for the defer timer to deliver. */
void cmh_aws_job_finish(struct cmh_aws_job *j, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Ends what the job has in flight without a step (free): the request is cancelled. */
void cmh_aws_job_cancel(struct cmh_aws_job *j);
/* Frees the job's strings. */
void cmh_aws_job_clear(struct cmh_aws_job *j);
/* "HTTP 503" or "timeout (libcurl's text)", for a why. */
void cmh_aws_describe(const struct cmh_curl_uv_response *res, char *buf, size_t len);
/* An allocated printf, NULL when out of memory. */
char *cmh_aws_strf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* creds.c: starts the defer timer (results and cache hits are delivered from it); frees p once
 * it is closing and nothing is pending any more. */
void cmh_aws_provider_kick(struct cmh_aws_provider *p);
void cmh_aws_provider_maybe_release(struct cmh_aws_provider *p);

/* imds.c: fetches (or reuses) the IMDSv2 session token, then runs next; on failure token_failed
 * (NULL: the job finishes with the failure). */
void cmh_aws_imds_with_token(struct cmh_aws_job *j, cmh_aws_next_fn next,
                             cmh_aws_fail_fn token_failed);
/* GETs path with the token; on_resp gets the answer (the job finishes when it cannot start). */
void cmh_aws_imds_get(struct cmh_aws_job *j, const char *path, cmh_aws_step_fn on_resp);
/* From a step answering a GET: sends it again after a 5xx or a broken connection (1: the step
 * ends there); else 0, and after a 401 (the token expired or was revoked) the next run gets a new
 * token. */
int cmh_aws_imds_retry(struct cmh_aws_job *j, const struct cmh_curl_uv_response *res);

/* region.c: starts resolving region and cluster id on p->rj. */
void cmh_aws_region_resolve_start(struct cmh_aws_provider *p);

#endif
