/* Secrets are wiped before their memory is released: an allocation hook (fault-injection build)
 * reads every block at the moment cmh_free releases it and records any that still holds a secret
 * marker. The oracle: a plain cmh_free of a marked string is seen by the same hook. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/core/alloc_int.h"
#include "cmh/aws/creds_parse.h"
#include "cmh/k8s/token.h"
#include "cmh/aws/sigv4.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MARKER "MARKERSECRET"

static unsigned long frees_seen, frees_with_marker;

static void on_free(void *p)
{
    size_t n = malloc_usable_size(p);
    frees_seen++;
    if (memmem(p, n, MARKER, strlen(MARKER)) != NULL)
        frees_with_marker++;
}

static void reset(void)
{
    frees_seen = frees_with_marker = 0;
    cmh_alloc_on_free(on_free);
}

static void hook_sees_a_marker_freed_unwiped(void **state)
{
    (void)state;
    reset();
    cmh_free(cmh_strdup("x-" MARKER "-y"));
    cmh_alloc_on_free(NULL);
    assert_int_equal(frees_seen, 1);
    assert_int_equal(frees_with_marker, 1);
    reset();
    cmh_free_secret(cmh_strdup("x-" MARKER "-y"));
    cmh_alloc_on_free(NULL);
    assert_int_equal(frees_seen, 1);
    assert_int_equal(frees_with_marker, 0);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void service_account_token_wiped_on_rotation_and_free(void **state)
{
    (void)state;
    char path[] = "/tmp/cmh-wipe-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    write_file(path, "sa." MARKER ".one\n");
    struct cmh_k8s_token t;
    char why[256];
    assert_int_equal(cmh_k8s_token_init(&t, path, 1000), 0);
    reset();
    assert_int_equal(cmh_k8s_token_refresh(&t, 1, why, sizeof why), 0);
    assert_non_null(strstr(t.header, MARKER));
    write_file(path, "sa." MARKER ".two\n");
    assert_int_equal(cmh_k8s_token_refresh(&t, 5000, why, sizeof why), 1); /* rotated */
    cmh_k8s_token_free(&t);
    cmh_alloc_on_free(NULL);
    unlink(path);
    assert_true(frees_seen >= 5); /* read buffers, the old token and header, the new ones */
    assert_int_equal(frees_with_marker, 0);
}

static void aws_credentials_wiped_on_clear(void **state)
{
    (void)state;
    static const char json[] = "{\"Code\":\"Success\",\"AccessKeyId\":\"ASIA" MARKER "\","
                               "\"SecretAccessKey\":\"s/" MARKER "\",\"Token\":\"t" MARKER "\","
                               "\"Expiration\":\"2030-01-01T00:00:00Z\"}";
    static const char xml[] =
        "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>"
        "<AccessKeyId>ASIA" MARKER "</AccessKeyId><SecretAccessKey>s" MARKER "</SecretAccessKey>"
        "<SessionToken>t" MARKER "</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration>"
        "</Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
    struct cmh_aws_creds_doc doc;
    reset();
    assert_int_equal(cmh_aws_creds_parse_json(json, strlen(json), &doc), 0);
    assert_non_null(strstr(doc.secret_access_key, MARKER));
    cmh_aws_creds_doc_clear(&doc);
    assert_int_equal(cmh_aws_creds_parse_sts_xml(xml, strlen(xml), &doc), 0);
    assert_non_null(strstr(doc.session_token, MARKER));
    cmh_aws_creds_doc_clear(&doc);
    cmh_alloc_on_free(NULL);
    assert_true(frees_seen >= 6);
    assert_int_equal(frees_with_marker, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hook_sees_a_marker_freed_unwiped),
        cmocka_unit_test(service_account_token_wiped_on_rotation_and_free),
        cmocka_unit_test(aws_credentials_wiped_on_clear),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
