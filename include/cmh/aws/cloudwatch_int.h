/* Test seams of the CloudWatch publisher (include/cmh/aws/cloudwatch.h): its pure parts, for the
 * unit tests and the fuzzer; the publisher itself calls them on every request and answer. */
#ifndef CMH_CLOUDWATCH_INT_H
#define CMH_CLOUDWATCH_INT_H

#include "cmh/aws/cloudwatch.h"

#include <stddef.h>

struct cmh_buf;

/* Pure: classifies an attempt from curl_uv's error, the HTTP status and the AWS error code
 * (NULL or "" when there is none). */
enum cmh_cw_class cmh_cloudwatch_classify(enum cmh_curl_uv_error error, long status,
                                          const char *code);

/* Pure: extracts Code and Message from an AWS Query error body
 * (<ErrorResponse><Error><Type/><Code/><Message/></Error>...</ErrorResponse>, or a bare <Error>).
 * code gets at most code_len-1 bytes of [A-Za-z0-9._:-]; message (may be NULL) the text with the
 * five XML entities decoded, truncated to msg_len-1. Returns 0, or -EPROTO when body holds no
 * well-formed Code element (then code is ""). */
int cmh_cloudwatch_parse_error(const char *body, size_t len, char *code, size_t code_len,
                               char *message, size_t msg_len);

/* Pure: appends the form encoding of datum d as MetricData.member.<index>.* (each field preceded
 * by '&') to b. storage_resolution 0 leaves the field out. Returns 0, or b's failure (-E2BIG past
 * its cap, -ENOMEM: b is then failed, see include/cmh/core/buf.h). */
int cmh_cloudwatch_encode_datum(struct cmh_buf *b, const struct cmh_datum *d, unsigned index,
                                unsigned storage_resolution);

/* Pure: 0 when CloudWatch would accept d (name 1-255, dims <= 30 with non-empty names and values,
 * finite values within CloudWatch's range, sample count > 0, min <= max), else -EINVAL. */
int cmh_cloudwatch_datum_valid(const struct cmh_datum *d);

#endif
