/* Fuzzes the shared config/credentials reader (cmh_aws_ini_get): a value is found, absent, or the
 * file refused; a value never holds a line break and never begins or ends with a blank. */
#include "cmh/core/alloc.h"
#include "cmh/aws/ini.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const sections[] = {"default", "profile ops", "x"};
    static const char *const keys[] = {"region", "role_arn", "aws_access_key_id"};
    for (size_t s = 0; s < 3; s++)
        for (size_t k = 0; k < 3; k++) {
            char *v = NULL;
            unsigned line = 0;
            int rc = cmh_aws_ini_get((const char *)data, size, sections[s], keys[k], &v, &line);
            if (rc != 0 && rc != -ENOENT && rc != -EINVAL && rc != -ENOMEM)
                abort();
            if (rc != 0 && v != NULL)
                abort();
            if (rc == -EINVAL && size <= CMH_AWS_INI_MAX && line == 0)
                abort();
            if (v != NULL) {
                size_t n = strlen(v);
                if (strchr(v, '\n') != NULL ||
                    (n > 0 && (strchr(" \t\r", v[0]) != NULL || strchr(" \t\r", v[n - 1]) != NULL)))
                    abort();
                cmh_free(v);
            }
        }
    return 0;
}
