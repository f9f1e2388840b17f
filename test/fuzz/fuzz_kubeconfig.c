/* Fuzzes the kubeconfig reader (cmh_kubeconfig_parse, libyaml underneath) and the ExecCredential
 * reader. A file is accepted with a context and a server, or refused with a reason and nothing
 * held; never more exec arguments than the bound. */
#include "cmh/k8s/kubeconfig.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cmh/core/alloc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cmh_kubeconfig kc;
    char why[256] = "";
    int rc = cmh_kubeconfig_parse((const char *)data, size, NULL, &kc, why, sizeof why);
    if (rc != 0 && rc != -EINVAL && rc != -ENOMEM)
        abort();
    if (rc == 0) {
        if (kc.context == NULL || kc.server == NULL || kc.exec_nargs > CMH_KUBECONFIG_EXEC_MAX ||
            kc.exec_nenv > CMH_KUBECONFIG_EXEC_MAX)
            abort();
        for (size_t i = 0; i < kc.exec_nenv; i++)
            if (strchr(kc.exec_env[i], '=') == NULL)
                abort();
        cmh_kubeconfig_clear(&kc);
    } else {
        if (kc.server != NULL || kc.context != NULL || kc.exec_nargs != 0)
            abort();
        if (rc == -EINVAL && why[0] == '\0')
            abort();
    }
    char *tok = NULL;
    why[0] = '\0';
    rc = cmh_kubeconfig_exec_token((const char *)data, size, &tok, why, sizeof why);
    if (rc == 0 && (tok == NULL || tok[0] == '\0' || strpbrk(tok, "\r\n") != NULL))
        abort();
    if (rc != 0 && (tok != NULL || (rc == -EINVAL && why[0] == '\0')))
        abort();
    cmh_free(tok);
    return 0;
}
