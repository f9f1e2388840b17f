/* AWS service endpoints shared by the EC2 and CloudWatch clients: the default URL from a region,
 * the AWS_ENDPOINT_URL_<SERVICE> override, the host/path split (cmh_url_split: loopback-only plain
 * http) rule, and the curl header lines of a signed request. No state: what these functions
 * allocate is the caller's to cmh_free; thread: any. */
#ifndef CMH_AWS_ENDPOINT_H
#define CMH_AWS_ENDPOINT_H

#include <stddef.h>

/* The value of name in envp ("NAME=value"), or NULL when absent or empty. */
const char *cmh_aws_env_get(char *const *envp, const char *name);

/* The endpoint override of a service: service_var (e.g. "AWS_ENDPOINT_URL_EC2") if set, else
 * AWS_ENDPOINT_URL, else NULL. Borrowed from envp. */
const char *cmh_aws_endpoint_override(char *const *envp, const char *service_var);

/* Writes the endpoint URL: override when non-empty, else https://<prefix>.<region>.<suffix> with
 * the suffix of the region's partition (amazonaws.com, amazonaws.com.cn for cn-*, c2s.ic.gov for
 * us-iso-*, sc2s.sgov.gov for us-isob-*). Returns the length; -EINVAL for an empty region or one
 * with characters other than [a-z0-9-], -ENOSPC when buf is too small. */
int cmh_aws_endpoint_url(const char *prefix, const char *region, const char *override, char *buf,
                         size_t len);

/* Appends the curl header line "name: value" (cmh_malloc'ed) to hdr[*n], at most max lines.
 * Returns 0, -ENOSPC when full, -ENOMEM. */
int cmh_aws_header_add(char **hdr, size_t *n, size_t max, const char *name, const char *value);

#endif
