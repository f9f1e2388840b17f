/* The kubeconfig reader against the file `aws eks update-kubeconfig` writes (committed in the fuzz
 * corpus): the current context's server, CA data and exec plugin with its args and env in order;
 * another context by name; the refusals; and the ExecCredential reader. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/core/alloc.h"
#include "cmh/k8s/kubeconfig.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *slurp(const char *name, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/test/fuzz/corpus/kubeconfig/%s", CMH_SOURCE_DIR, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static char buf[1 << 16];
    *len = fread(buf, 1, sizeof buf - 1, f);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

static void eks_exec_kubeconfig(void **state)
{
    (void)state;
    size_t len;
    const char *b = slurp("eks_exec.yaml", &len);
    struct cmh_kubeconfig kc;
    char why[256];
    assert_int_equal(cmh_kubeconfig_parse(b, len, NULL, &kc, why, sizeof why), 0);
    assert_string_equal(kc.context, "arn:aws:eks:us-west-2:111122223333:cluster/prod");
    assert_string_equal(kc.server, "https://ABCDEF0123456789.gr7.us-west-2.eks.amazonaws.com");
    assert_non_null(kc.ca_data);
    assert_null(kc.token);
    assert_string_equal(kc.exec_command, "aws");
    static const char *const args[] = {"--region",       "us-west-2", "eks",      "get-token",
                                       "--cluster-name", "prod",      "--output", "json"};
    assert_int_equal(kc.exec_nargs, 8);
    for (size_t i = 0; i < 8; i++)
        assert_string_equal(kc.exec_args[i], args[i]);
    assert_int_equal(kc.exec_nenv, 1);
    assert_string_equal(kc.exec_env[0], "AWS_PROFILE=admin");
    cmh_kubeconfig_clear(&kc);
    /* A context the file does not have. */
    assert_int_equal(cmh_kubeconfig_parse(b, len, "nope", &kc, why, sizeof why), -EINVAL);
    assert_non_null(strstr(why, "nope"));
}

static void token_and_refusals(void **state)
{
    (void)state;
    size_t len;
    const char *b = slurp("token.yaml", &len);
    struct cmh_kubeconfig kc;
    char why[256];
    assert_int_equal(cmh_kubeconfig_parse(b, len, NULL, &kc, why, sizeof why), 0);
    assert_string_equal(kc.server, "https://127.0.0.1:6443/");
    assert_string_equal(kc.ca_file, "ca.crt");
    assert_string_equal(kc.token, "abc.def");
    assert_string_equal(kc.token_file, "t");
    cmh_kubeconfig_clear(&kc);
    b = slurp("refused.yaml", &len);
    assert_int_equal(cmh_kubeconfig_parse(b, len, NULL, &kc, why, sizeof why), -EINVAL);
    assert_non_null(strstr(why, "insecure-skip-tls-verify"));
    assert_null(kc.server);
    b = slurp("broken.yaml", &len);
    assert_int_equal(cmh_kubeconfig_parse(b, len, NULL, &kc, why, sizeof why), -EINVAL);
    assert_non_null(strstr(why, "not YAML"));
    b = slurp("aliases.yaml", &len);
    assert_int_equal(cmh_kubeconfig_parse(b, len, NULL, &kc, why, sizeof why), -EINVAL);
}

static void exec_credential(void **state)
{
    (void)state;
    size_t len;
    const char *b = slurp("exec_credential.json", &len);
    char *tok = NULL, why[256];
    assert_int_equal(cmh_kubeconfig_exec_token(b, len, &tok, why, sizeof why), 0);
    assert_string_equal(tok, "k8s-aws-v1.abc");
    cmh_free(tok);
    static const char *const bad[] = {
        "{\"kind\":\"ExecCredential\",\"status\":{}}",
        "{\"kind\":\"Other\",\"status\":{\"token\":\"x\"}}",
        "{\"kind\":\"ExecCredential\",\"status\":{\"clientCertificateData\":\"x\"}}",
        "not json",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(cmh_kubeconfig_exec_token(bad[i], strlen(bad[i]), &tok, why, sizeof why),
                         -EINVAL);
        assert_null(tok);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(eks_exec_kubeconfig),
        cmocka_unit_test(token_and_refusals),
        cmocka_unit_test(exec_credential),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
