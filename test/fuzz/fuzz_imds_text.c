/* Fuzzes the readers of IMDS's plain-text answers in src/aws/creds_parse.c: the region
 * (placement/region), the role listing (iam/security-credentials/), and the answers used whole
 * (the session token, sent as a header; the instance id). Every reader gets the same input as an
 * exact-size allocation (IMDS answers are not NUL-terminated for them). Each result is compared
 * with the documented rule, written here independently: what is accepted is exactly the first line
 * (or the whole answer) when it obeys the rule, byte for byte, and nothing else is. */
#include "cmh/core/alloc.h"
#include "cmh/aws/creds_parse.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int printable(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return n > 0;
}

static int region_chars(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return 0;
    return n > 0 && n <= 32;
}

/* rc and *out must say accepted exactly when ok, with the n bytes of want. */
static void expect(int rc, char *out, int ok, const char *want, size_t n)
{
    if (ok) {
        if (rc != 0 || out == NULL || strlen(out) != n || memcmp(out, want, n) != 0)
            abort();
    } else if (rc != -EPROTO || out != NULL) {
        abort();
    }
    cmh_free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    size_t line = 0;
    while (line < size && buf[line] != '\r' && buf[line] != '\n')
        line++;
    char *out = NULL;
    int rc = cmh_aws_imds_parse_region(buf, size, &out);
    expect(rc, out, region_chars(buf, line), buf, line);

    out = NULL;
    rc = cmh_aws_imds_parse_role(buf, size, &out);
    expect(rc, out, printable(buf, line) && line <= 128 && memchr(buf, '/', line) == NULL, buf,
           line);

    static const size_t maxes[] = {1024, 64};
    for (size_t i = 0; i < 2; i++) {
        out = NULL;
        rc = cmh_aws_imds_parse_text(buf, size, maxes[i], &out);
        expect(rc, out, printable(buf, size) && size <= maxes[i], buf, size);
    }

    free(buf);
    return 0;
}
