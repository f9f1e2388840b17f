/* The pure parsers of the credential layer: the credential documents (IMDS and container-agent
 * JSON, STS XML), IMDS's text answers, ISO 8601 expiration times, and the checks on what goes into
 * a header or a URL (region names, tokens, the container-credentials URL). No I/O, no loop, no
 * state: the credential provider (aws_creds.h) uses them, and so do the fuzzers and the botocore
 * differential. Thread: any. */
#ifndef CMH_AWS_CREDS_PARSE_H
#define CMH_AWS_CREDS_PARSE_H

#include <stddef.h>
#include <stdint.h>

/* Largest credential document (JSON or XML) accepted. */
#define CMH_AWS_DOC_MAX (256 * 1024)

/* A parsed credential document. Strings are allocated (cmh_malloc) and released by
 * cmh_aws_creds_doc_clear; the caller may take one over (setting the field to NULL). */
struct cmh_aws_creds_doc {
    /* public */
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

/* The XML answer of STS AssumeRoleWithWebIdentity or AssumeRole (…Result/Credentials/…) or an
 * ErrorResponse (Error/Code, Error/Message). Rejects DOCTYPE, duplicate fields, misplaced
 * elements. Same returns as the JSON parser. */
int cmh_aws_creds_parse_sts_xml(const char *buf, size_t len, struct cmh_aws_creds_doc *doc);

void cmh_aws_creds_doc_clear(struct cmh_aws_creds_doc *doc);

/* "2021-09-21T04:16:53Z" (optional .fraction, Z or ±hh:mm) to ms since the epoch; -EINVAL else. */
int cmh_aws_parse_time(const char *s, int64_t *ms);

/* IMDS's text answers: body is len bytes (no terminator needed). Each returns 0 with a
 * cmh_malloc'd copy in *out, -EPROTO (*out NULL) when the answer is unusable, -ENOMEM. The region
 * (placement/region): its first line (up to CR or LF) when a region name. */
int cmh_aws_imds_parse_region(const char *body, size_t len, char **out);
/* The role (iam/security-credentials/): its first line when 1..128 bytes, printable (no control
 * byte or DEL), without '/'. */
int cmh_aws_imds_parse_role(const char *body, size_t len, char **out);
/* A whole answer used as a header value or an id (the session token, max 1024; the instance id,
 * max 64): 1..max printable bytes (no CR, LF, NUL or other control byte). */
int cmh_aws_imds_parse_text(const char *body, size_t len, size_t max, char **out);

/* 1 when s[0..n) is a region name: 1..32 of [a-z0-9-]; else 0. */
int cmh_aws_region_valid(const char *s, size_t n);
/* 1 when s[0..n) may go into a header value: not empty, no control byte (CR, LF, NUL...) or DEL;
 * else 0. */
int cmh_aws_token_valid(const char *s, size_t n);

/* The AWS_CONTAINER_CREDENTIALS_* URL gate: 1 when url has no user information and is https://
 * to any host, or http:// to a host of the AWS SDKs' allow-list (127.0.0.0/8, ::1, localhost,
 * 169.254.170.2, 169.254.170.23, fd00:ec2::23); else 0 with a sentence in why. */
int cmh_aws_container_url_allowed(const char *url, char *why, size_t whylen);

#endif
