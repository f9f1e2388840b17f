/* Fuzzes the AWS error-body parser: any bytes (not NUL-terminated) must give either a code made of
 * [A-Za-z0-9._:-] that fits, or -EPROTO with an empty code; the message is always terminated and
 * within its buffer; classification of whatever comes out never crashes. */
#include "cmh/aws/cloudwatch_int.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A private copy without a terminator, so reading past size is caught by ASan. */
    char *body = malloc(size ? size : 1);
    if (body == NULL)
        return 0;
    memcpy(body, data, size);
    char code[64], msg[96];
    memset(msg, 'x', sizeof msg);
    int rc = cmh_cloudwatch_parse_error(body, size, code, sizeof code, msg, sizeof msg);
    if (rc == 0) {
        size_t n = strlen(code);
        if (n == 0 || n >= sizeof code)
            abort();
        for (size_t i = 0; i < n; i++) {
            char c = code[i];
            if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == ':' || c == '-'))
                abort();
        }
        if (memchr(msg, '\0', sizeof msg) == NULL)
            abort();
        (void)cmh_cloudwatch_classify(CMH_CURL_OK, 400, code);
    } else if (rc != -EPROTO || code[0] != '\0') {
        abort();
    }
    /* A tiny code buffer must never overflow either. */
    char small[4];
    rc = cmh_cloudwatch_parse_error(body, size, small, sizeof small, NULL, 0);
    if (rc == 0 && strlen(small) >= sizeof small)
        abort();
    free(body);
    return 0;
}
