/* Fuzzes the readers of IMDS's plain-text answers in src/aws/aws_creds.c: the region
 * (placement/region), the role listing (iam/security-credentials/), the session token and an
 * instance tag's value (used whole, as a header or a CloudWatch dimension), and the instance tag
 * listing (tags/instance). Every reader gets the same input as an exact-size allocation (IMDS
 * answers are not NUL-terminated for them). Each result is compared with the documented rule,
 * written here independently: what is accepted is exactly the first line (or the whole answer)
 * when it obeys the rule, byte for byte, and nothing else is; the tag chosen is the first of the
 * documented order that stands as a whole line between line breaks. */
#include "cmh/core/alloc.h"
#include "cmh/aws/aws_creds.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const tags[] = {"eks:cluster-name", "CLUSTER_ID", "eks:eks-cluster-name",
                                   "aws:eks:cluster-name"};

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

/* Whether tag stands as a whole line of buf: at the start or after CR/LF, and at the end or
 * before CR/LF. */
static int whole_line(const char *buf, size_t len, const char *tag)
{
    size_t tl = strlen(tag);
    for (size_t i = 0; i + tl <= len; i++)
        if ((i == 0 || buf[i - 1] == '\r' || buf[i - 1] == '\n') && memcmp(buf + i, tag, tl) == 0 &&
            (i + tl == len || buf[i + tl] == '\r' || buf[i + tl] == '\n'))
            return 1;
    return 0;
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

    static const size_t maxes[] = {1024, 255};
    for (size_t i = 0; i < 2; i++) {
        out = NULL;
        rc = cmh_aws_imds_parse_text(buf, size, maxes[i], &out);
        expect(rc, out, printable(buf, size) && size <= maxes[i], buf, size);
    }

    const char *want = NULL;
    for (size_t t = 0; t < sizeof tags / sizeof tags[0] && want == NULL; t++)
        if (whole_line(buf, size, tags[t]))
            want = tags[t];
    const char *got = cmh_aws_imds_cluster_tag(buf, size);
    if ((got == NULL) != (want == NULL) || (got != NULL && strcmp(got, want) != 0))
        abort();
    free(buf);
    return 0;
}
