/* Fuzzes configuration values: the first byte picks a variable of the table, the rest is its
 * value. Every value must either parse (and print back) or be rejected with a message. */
#include "cmh/core/alloc.h"
#include "cmh/core/config_int.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const struct cmh_config_var *var = &cmh_config_vars[data[0] % cmh_config_nvars];
    char *value = cmh_strndup((const char *)data + 1, size - 1);
    if (value == NULL)
        return 0;
    /* A path variable opens its file: only names in the working directory, never a device. */
    if ((var->flags & CMH_CFG_READABLE) && strchr(value, '/') != NULL) {
        cmh_free(value);
        return 0;
    }
    struct cmh_config cfg;
    char err[CMH_CONFIG_ERR_MAX];
    char *env[] = {NULL};
    if (cmh_config_load(&cfg, env, err) != 0)
        abort();
    err[0] = '\0';
    int rc = cmh_config_set(&cfg, var, value, err);
    if (rc != 0 && err[0] == '\0')
        abort(); /* a rejection must say why */
    char text[4096];
    cmh_config_value_text(&cfg, var, text, sizeof text);
    cmh_config_free(&cfg);
    cmh_free(value);
    return 0;
}
