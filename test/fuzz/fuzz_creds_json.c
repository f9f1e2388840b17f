/* Fuzzes the credential JSON of IMDS and the container agents (cmh_aws_creds_parse_json) and the
 * ISO-8601 time reader. A document is credentials, an error, or rejected; never a mix, never
 * a string with a control character that would end up in a signed header. */
#include "cmh/core/alloc.h"
#include "cmh/aws/creds_parse.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_text(const char *s)
{
    for (; s != NULL && *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cmh_aws_creds_doc doc;
    int rc = cmh_aws_creds_parse_json((const char *)data, size, &doc);
    if (rc != 0 && rc != -EPROTO && rc != -ENOMEM)
        abort();
    if (rc == 0) {
        int creds = doc.access_key_id != NULL && doc.secret_access_key != NULL;
        int error = doc.error_code != NULL && doc.error_message != NULL;
        if (creds == error)
            abort();
        if (creds && (doc.access_key_id[0] == '\0' || doc.secret_access_key[0] == '\0'))
            abort();
        check_text(doc.access_key_id);
        check_text(doc.secret_access_key);
        check_text(doc.session_token);
    } else if (doc.access_key_id != NULL || doc.error_code != NULL) {
        abort(); /* a rejected document leaves nothing behind */
    }
    cmh_aws_creds_doc_clear(&doc);

    char *s = cmh_strndup((const char *)data, size);
    if (s != NULL) {
        int64_t ms = 0;
        rc = cmh_aws_parse_time(s, &ms);
        if (rc != 0 && rc != -EINVAL)
            abort();
        cmh_free(s);
    }
    return 0;
}
