/* The shared config/credentials file reader, case by case as botocore's RawConfigParser reads
 * the same text: sections and "profile" headers, key case, both delimiters, comments, nested
 * (indented) values skipped, and the lines it refuses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/core/alloc.h"
#include "cmh/aws/ini.h"

#include <errno.h>
#include <string.h>

static const char config[] = "# comment\n"
                             "; another\n"
                             "[default]\n"
                             "region = us-east-1\n"
                             "\n"
                             "[profile   ops ]\r\n"
                             "Role_Arn=arn:aws:iam::1:role/r\r\n"
                             "source_profile : keys\n"
                             "s3 =\n"
                             "    max_concurrent_requests = 4\n"
                             "    region = nested-not-ours\n"
                             "region =   eu-west-1   \n"
                             "empty =\n"
                             "[profile other]\n"
                             "region = ap-south-1\n";

static char *get(const char *text, const char *section, const char *key, int want_rc)
{
    char *v = NULL;
    unsigned line = 0;
    int rc = cmh_aws_ini_get(text, strlen(text), section, key, &v, &line);
    assert_int_equal(rc, want_rc);
    return v;
}

static void values_by_section_and_key(void **state)
{
    (void)state;
    char *v = get(config, "default", "region", 0);
    assert_string_equal(v, "us-east-1");
    cmh_free(v);
    v = get(config, "profile ops", "role_arn", 0); /* keys compared without case */
    assert_string_equal(v, "arn:aws:iam::1:role/r");
    cmh_free(v);
    v = get(config, "profile ops", "source_profile", 0); /* ':' delimiter */
    assert_string_equal(v, "keys");
    cmh_free(v);
    v = get(config, "profile ops", "region", 0); /* not the nested s3 region */
    assert_string_equal(v, "eu-west-1");
    cmh_free(v);
    v = get(config, "profile ops", "empty", 0);
    assert_string_equal(v, "");
    cmh_free(v);
    assert_null(get(config, "profile ops", "max_concurrent_requests", 0));
    assert_null(get(config, "profile other", "role_arn", 0));
    assert_null(get(config, "profile nope", "region", -ENOENT));
    assert_null(get(config, "ops", "region", -ENOENT)); /* [profile ops] is not [ops] */
    assert_null(get("", "default", "region", -ENOENT));
}

static void refused_lines(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "region = x\n[default]\n",             /* a key before any section */
        "[default]\njust words\n",             /* neither a header nor key = value */
        "[default\nregion = x\n",              /* an unclosed header */
        "[default]\nregion = a\nregion = b\n", /* the same key twice */
        "[default]\n= value\n",                /* no key */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *v = NULL;
        unsigned line = 0;
        assert_int_equal(cmh_aws_ini_get(bad[i], strlen(bad[i]), "default", "region", &v, &line),
                         -EINVAL);
        assert_null(v);
        assert_true(line >= 1);
    }
    /* A NUL inside the text is not a file the SDKs write. */
    static const char nul[] = "[default]\nregion = a\0b\n";
    char *v = NULL;
    assert_int_equal(cmh_aws_ini_get(nul, sizeof nul - 1, "default", "region", &v, NULL), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(values_by_section_and_key),
        cmocka_unit_test(refused_lines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
