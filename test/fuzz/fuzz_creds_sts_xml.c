/* Fuzzes the reader of the STS AssumeRoleWithWebIdentity XML answer
 * (cmh_aws_creds_parse_sts_xml): credentials with all four fields, an error with a code, or a
 * rejection; never a mix, never a control character in a credential string. */
#include "cmh/aws/creds_parse.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

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
    int rc = cmh_aws_creds_parse_sts_xml((const char *)data, size, &doc);
    if (rc != 0 && rc != -EPROTO && rc != -ENOMEM)
        abort();
    if (rc == 0) {
        int creds = doc.access_key_id != NULL && doc.secret_access_key != NULL &&
                    doc.session_token != NULL && doc.expires_ms != 0;
        int error = doc.error_code != NULL && doc.error_code[0] != '\0';
        if (creds == error)
            abort();
        check_text(doc.access_key_id);
        check_text(doc.secret_access_key);
        check_text(doc.session_token);
    } else if (doc.access_key_id != NULL || doc.error_code != NULL) {
        abort();
    }
    cmh_aws_creds_doc_clear(&doc);
    return 0;
}
