/* Test helper for aws_creds_botocore_diff.py: reads one document per line on stdin, "J <hex>"
 * (credential JSON), "X <hex>" (STS XML) or "T <hex>" (a timestamp), runs our parser and writes
 * one JSON result per line: {"rc","akid","secret","token","expires_ms","code","message"}. */
#include "cmh/aws/creds_parse.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static json_t *str_or_null(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

int main(void)
{
    static char line[1 << 20];
    static char doc[1 << 19];
    while (fgets(line, sizeof line, stdin) != NULL) {
        size_t n = strcspn(line, "\r\n");
        line[n] = '\0';
        if (n < 2 || line[1] != ' ')
            return 2;
        size_t len = 0;
        for (size_t i = 2; i + 1 < n + 1 && line[i] != '\0'; i += 2) {
            int hi = hexval(line[i]), lo = hexval(line[i + 1]);
            if (hi < 0 || lo < 0 || len >= sizeof doc - 1)
                return 2;
            doc[len++] = (char)(hi * 16 + lo);
        }
        doc[len] = '\0';
        struct cmh_aws_creds_doc d = {0};
        int rc;
        if (line[0] == 'J')
            rc = cmh_aws_creds_parse_json(doc, len, &d);
        else if (line[0] == 'X')
            rc = cmh_aws_creds_parse_sts_xml(doc, len, &d);
        else
            rc = cmh_aws_parse_time(doc, &d.expires_ms);
        json_t *o =
            json_pack("{s:i,s:o,s:o,s:o,s:I,s:o,s:o}", "rc", rc, "akid",
                      str_or_null(d.access_key_id), "secret", str_or_null(d.secret_access_key),
                      "token", str_or_null(d.session_token), "expires_ms", (json_int_t)d.expires_ms,
                      "code", str_or_null(d.error_code), "message", str_or_null(d.error_message));
        if (line[0] != 'T')
            cmh_aws_creds_doc_clear(&d);
        char *s = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        if (s == NULL)
            return 2;
        puts(s);
        fflush(stdout);
        free(s);
    }
    return 0;
}
