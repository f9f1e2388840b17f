/* Fuzzes curl_uv's one parser of a response header, Retry-After (cmh_curl_uv_parse_retry_after).
 * The input up to its first NUL is the header value. Delay-seconds values are checked against an
 * independent oracle (digits between optional blanks; the value in ms, saturating at INT64_MAX;
 * -1 past 2^64-1); anything else must give -1 or a delay >= 0 (an HTTP date). */
#include "cmh/http/curl_uv.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* -2: not of the delay-seconds form; else what the parser must return. */
static int64_t oracle(const char *v)
{
    while (*v == ' ' || *v == '\t')
        v++;
    if (!(*v >= '0' && *v <= '9'))
        return -2;
    unsigned long long s = 0;
    int overflow = 0;
    for (; *v >= '0' && *v <= '9'; v++) {
        unsigned d = (unsigned)(*v - '0');
        if (s > (~0ULL - d) / 10)
            overflow = 1;
        else
            s = s * 10 + d;
    }
    while (*v == ' ' || *v == '\t')
        v++;
    if (*v != '\0' || overflow)
        return -1;
    return s > (unsigned long long)INT64_MAX / 1000 ? INT64_MAX : (int64_t)s * 1000;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    char *v = malloc(size + 1);
    if (v == NULL)
        return 0;
    memcpy(v, data, size);
    v[size] = '\0';
    int64_t got = cmh_curl_uv_parse_retry_after(v);
    int64_t want = oracle(v);
    if (want != -2 && got != want)
        abort();
    if (got < -1)
        abort();
    free(v);
    return 0;
}
