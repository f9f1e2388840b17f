/* The shared AWS endpoint pieces (src/aws/endpoint.c) used by the EC2 and CloudWatch clients:
 * default URLs per partition, the override variables, the host/path split and its loopback-only
 * plain-http rule, the header lines. Expected values are written out by hand from the AWS
 * endpoint rules and RFC 1122/4291 loopback ranges, not computed by the code under test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/core/alloc.h"
#include "cmh/http/url.h"
#include "cmh/aws/endpoint.h"
#include "cmh/core/log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static void default_urls_per_partition(void **state)
{
    (void)state;
    static const struct {
        const char *prefix, *region, *want;
    } cases[] = {
        {"ec2", "us-east-1", "https://ec2.us-east-1.amazonaws.com"},
        {"ec2", "cn-northwest-1", "https://ec2.cn-northwest-1.amazonaws.com.cn"},
        {"ec2", "us-gov-west-1", "https://ec2.us-gov-west-1.amazonaws.com"},
        {"ec2", "us-iso-east-1", "https://ec2.us-iso-east-1.c2s.ic.gov"},
        {"ec2", "us-isob-east-1", "https://ec2.us-isob-east-1.sc2s.sgov.gov"},
        {"monitoring", "eu-west-1", "https://monitoring.eu-west-1.amazonaws.com"},
        {"monitoring", "cn-north-1", "https://monitoring.cn-north-1.amazonaws.com.cn"},
    };
    char buf[128];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int n = cmh_aws_endpoint_url(cases[i].prefix, cases[i].region, NULL, buf, sizeof buf);
        assert_int_equal(n, (int)strlen(cases[i].want));
        assert_string_equal(buf, cases[i].want);
    }
    assert_int_equal(
        cmh_aws_endpoint_url("ec2", "eu-west-1", "http://127.0.0.1:9", buf, sizeof buf), 18);
    assert_string_equal(buf, "http://127.0.0.1:9");
    assert_int_equal(cmh_aws_endpoint_url("ec2", "", NULL, buf, sizeof buf), -EINVAL);
    assert_int_equal(cmh_aws_endpoint_url("ec2", "eu-west-1.evil", NULL, buf, sizeof buf), -EINVAL);
    assert_int_equal(cmh_aws_endpoint_url("ec2", "Eu-west-1", NULL, buf, sizeof buf), -EINVAL);
    /* "https://ec2.eu-west-1.amazonaws.com" is 35 bytes: 36 fits, 35 does not. */
    assert_int_equal(cmh_aws_endpoint_url("ec2", "eu-west-1", NULL, buf, 36), 35);
    assert_int_equal(cmh_aws_endpoint_url("ec2", "eu-west-1", NULL, buf, 35), -ENOSPC);
}

static void overrides_from_the_environment(void **state)
{
    (void)state;
    char *both[] = {"AWS_ENDPOINT_URL=https://all.example",
                    "AWS_ENDPOINT_URL_EC2=https://ec2.example", NULL};
    char *generic[] = {"AWS_ENDPOINT_URL_EC2=", "AWS_ENDPOINT_URL=https://all.example", NULL};
    char *none[] = {"AWS_ENDPOINT_URL_EC2X=https://no", "XAWS_ENDPOINT_URL=https://no", NULL};
    assert_string_equal(cmh_aws_endpoint_override(both, "AWS_ENDPOINT_URL_EC2"),
                        "https://ec2.example");
    assert_string_equal(cmh_aws_endpoint_override(both, "AWS_ENDPOINT_URL_CLOUDWATCH"),
                        "https://all.example");
    assert_string_equal(cmh_aws_endpoint_override(generic, "AWS_ENDPOINT_URL_EC2"),
                        "https://all.example");
    assert_null(cmh_aws_endpoint_override(none, "AWS_ENDPOINT_URL_EC2"));
    assert_null(cmh_aws_endpoint_override(NULL, "AWS_ENDPOINT_URL_EC2"));
    assert_null(cmh_aws_env_get(generic, "AWS_ENDPOINT_URL_EC2"));
}

static void split_and_loopback_rule(void **state)
{
    (void)state;
    static const struct {
        const char *url;
        int rc;
        const char *host, *path;
        int http;
    } cases[] = {
        {"https://ec2.us-east-1.amazonaws.com", 0, "ec2.us-east-1.amazonaws.com", "/", 0},
        {"https://h.example:8443/base/", 0, "h.example:8443", "/base/", 0},
        {"http://127.0.0.1:4566", 0, "127.0.0.1:4566", "/", 1},
        {"http://127.45.3.9/x", 0, "127.45.3.9", "/x", 1},
        {"http://[::1]:8080/", 0, "[::1]:8080", "/", 1},
        {"http://10.0.0.1:80", -EPROTONOSUPPORT, NULL, NULL, 0},
        {"http://128.0.0.1", -EPROTONOSUPPORT, NULL, NULL, 0},
        {"http://localhost:80", -EPROTONOSUPPORT, NULL, NULL, 0},
        {"http://[::2]:80", -EPROTONOSUPPORT, NULL, NULL, 0},
        {"http://[::1", -EPROTONOSUPPORT, NULL, NULL, 0},
        {"ftp://127.0.0.1", -EINVAL, NULL, NULL, 0},
        {"https://", -EINVAL, NULL, NULL, 0},
        {"https:///path", -EINVAL, NULL, NULL, 0},
        {"https://user@h.example", -EINVAL, NULL, NULL, 0},
        {"https://h.example?x=1", -EINVAL, NULL, NULL, 0},
        {"https://h.example/p?x=1", -EINVAL, NULL, NULL, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *host = NULL, *path = NULL;
        int http = -1;
        int rc = cmh_url_split(cases[i].url, &host, &path, &http);
        if (rc != cases[i].rc)
            fail_msg("%s: rc %d, want %d", cases[i].url, rc, cases[i].rc);
        if (rc == 0) {
            assert_string_equal(host, cases[i].host);
            assert_string_equal(path, cases[i].path);
            assert_int_equal(http, cases[i].http);
        } else {
            assert_int_equal(http, 0);
        }
        cmh_free(host);
        cmh_free(path);
    }
}

static void urls_for_logs_hide_user_information(void **state)
{
    (void)state;
    char out[128];
    cmh_url_redact("http://u:secret@127.0.0.3:80/creds", out, sizeof out);
    assert_string_equal(out, "http://<redacted>@127.0.0.3:80/creds");
    cmh_url_redact("https://monitoring.us-east-1.amazonaws.com/", out, sizeof out);
    assert_string_equal(out, "https://monitoring.us-east-1.amazonaws.com/");
    /* An '@' after the host (path, query) is not user information. */
    cmh_url_redact("https://h/p@q", out, sizeof out);
    assert_string_equal(out, "https://h/p@q");
    cmh_url_redact("u:secret@host/x", out, sizeof out);
    assert_string_equal(out, "<redacted>@host/x");
    cmh_url_redact("https://u:secret@h/", out, 12);
    assert_string_equal(out, "https://<re");
}

static void header_lines(void **state)
{
    (void)state;
    char *hdr[2];
    size_t n = 0;
    assert_int_equal(cmh_aws_header_add(hdr, &n, 2, "Host", "h.example"), 0);
    assert_int_equal(cmh_aws_header_add(hdr, &n, 2, "Expect", ""), 0);
    assert_int_equal(cmh_aws_header_add(hdr, &n, 2, "X", "y"), -ENOSPC);
    assert_int_equal(n, 2);
    assert_string_equal(hdr[0], "Host: h.example");
    assert_string_equal(hdr[1], "Expect: ");
    for (size_t i = 0; i < n; i++)
        cmh_free(hdr[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(default_urls_per_partition),
        cmocka_unit_test(overrides_from_the_environment),
        cmocka_unit_test(split_and_loopback_rule),
        cmocka_unit_test(header_lines),
        cmocka_unit_test(urls_for_logs_hide_user_information),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
