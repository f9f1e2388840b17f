/* The service-account token kept between requests: when the file is read again (age, refusal),
 * rotation, failed reads keeping the token held, and the file checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/k8s/token.h"
#include "cmh/k8s/token_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[] = "/tmp/cmh-k8s-token-XXXXXX";
static char path[sizeof dir + 16];

static void put(const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static int setup(void **state)
{
    (void)state;
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(path, sizeof path, "%s/token", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(path);
    return rmdir(dir);
}

static void read_checks_the_file(void **state)
{
    (void)state;
    char *tok = NULL, why[256];
    put("abc.def\n \t");
    assert_int_equal(cmh_k8s_token_read(path, &tok, why, sizeof why), 0);
    assert_string_equal(tok, "abc.def");
    free(tok);
    const char *bad[] = {"", " \n", "two\nlines", "cr\rin"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        put(bad[i]);
        assert_int_equal(cmh_k8s_token_read(path, &tok, why, sizeof why), -EINVAL);
        assert_non_null(strstr(why, path));
    }
    char *big = malloc(CMH_K8S_TOKEN_MAX + 2);
    assert_non_null(big);
    memset(big, 'x', CMH_K8S_TOKEN_MAX + 1);
    big[CMH_K8S_TOKEN_MAX + 1] = '\0';
    put(big);
    assert_int_equal(cmh_k8s_token_read(path, &tok, why, sizeof why), -EINVAL);
    big[CMH_K8S_TOKEN_MAX] = '\0';
    put(big);
    assert_int_equal(cmh_k8s_token_read(path, &tok, why, sizeof why), 0);
    assert_int_equal(strlen(tok), CMH_K8S_TOKEN_MAX);
    free(tok);
    free(big);
    unlink(path);
    assert_int_equal(cmh_k8s_token_read(path, &tok, why, sizeof why), -ENOENT);
    assert_non_null(strstr(why, "No such file"));
}

static void kept_token_read_on_age_and_refusal(void **state)
{
    (void)state;
    struct cmh_k8s_token t;
    char why[256];
    put("one");
    assert_int_equal(cmh_k8s_token_init(&t, path, 1000), 0);
    assert_null(t.header);
    /* First use: read, not a rotation. */
    assert_int_equal(cmh_k8s_token_refresh(&t, 5000, why, sizeof why), 0);
    assert_string_equal(t.header, "Authorization: Bearer one");
    assert_int_equal(t.reads, 1);
    /* Not due: the file is not read even though it changed. */
    put("two");
    assert_int_equal(cmh_k8s_token_refresh(&t, 5999, why, sizeof why), 0);
    assert_string_equal(t.token, "one");
    assert_int_equal(t.reads, 1);
    /* Due by age: a rotation. */
    assert_int_equal(cmh_k8s_token_refresh(&t, 6000, why, sizeof why), 1);
    assert_string_equal(t.header, "Authorization: Bearer two");
    assert_int_equal(t.reads, 2);
    /* Due by age, same token: read, no rotation. */
    assert_int_equal(cmh_k8s_token_refresh(&t, 7000, why, sizeof why), 0);
    assert_int_equal(t.reads, 3);
    /* Refused: read at the next use, however young. */
    put("three");
    cmh_k8s_token_refused(&t);
    assert_int_equal(cmh_k8s_token_refresh(&t, 7001, why, sizeof why), 1);
    assert_string_equal(t.token, "three");
    assert_int_equal(cmh_k8s_token_refresh(&t, 7002, why, sizeof why), 0);
    assert_int_equal(t.reads, 4);
    /* A failed read keeps the token, and is not retried before it is due again. */
    unlink(path);
    cmh_k8s_token_refused(&t);
    assert_int_equal(cmh_k8s_token_refresh(&t, 7003, why, sizeof why), -ENOENT);
    assert_string_equal(t.header, "Authorization: Bearer three");
    assert_int_equal(cmh_k8s_token_refresh(&t, 7004, why, sizeof why), 0);
    put("four");
    assert_int_equal(cmh_k8s_token_refresh(&t, 8003, why, sizeof why), 1);
    assert_string_equal(t.header, "Authorization: Bearer four");
    cmh_k8s_token_free(&t);
    assert_null(t.token);
    assert_null(t.file);
}

static void no_file_means_no_token(void **state)
{
    (void)state;
    struct cmh_k8s_token t;
    char why[64];
    assert_int_equal(cmh_k8s_token_init(&t, NULL, 1000), 0);
    cmh_k8s_token_refused(&t);
    assert_int_equal(cmh_k8s_token_refresh(&t, 1, why, sizeof why), 0);
    assert_null(t.header);
    assert_int_equal(t.reads, 0);
    cmh_k8s_token_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(read_checks_the_file),
        cmocka_unit_test(kept_token_read_on_age_and_refusal),
        cmocka_unit_test(no_file_means_no_token),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
