/* The ENIConfig list parser on the API server's ENIConfigList: spec.subnet of every item, items
 * without one (or with one longer than any subnet id) ignored, anything else refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/core/alloc.h"
#include "cmh/k8s/eniconfig.h"
#include "cmh/k8s/eniconfig_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static void release(char **ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cmh_free(ids[i]);
    cmh_free(ids);
}

static void eniconfig_list_subnets_in_order_rest_ignored(void **state)
{
    (void)state;
    char longid[CMH_ENICONFIG_SUBNET_MAX + 1];
    memset(longid, 'a', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    char doc[1024];
    snprintf(doc, sizeof doc,
             "{\"apiVersion\":\"crd.k8s.amazonaws.com/v1alpha1\",\"kind\":\"ENIConfigList\","
             "\"items\":[{\"metadata\":{\"name\":\"us-west-2a\"},\"spec\":{\"subnet\":"
             "\"subnet-0aaa\",\"securityGroups\":[\"sg-1\"]}},{\"metadata\":{\"name\":\"x\"},"
             "\"spec\":{}},{\"spec\":{\"subnet\":\"\"}},{\"spec\":{\"subnet\":7}},"
             "{\"spec\":{\"subnet\":\"%s\"}},{\"spec\":{\"subnet\":\"subnet-0bbb\"}}]}",
             longid);
    char **ids = NULL;
    size_t n = 0;
    assert_int_equal(cmh_eniconfig_parse(doc, strlen(doc), &ids, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(ids[0], "subnet-0aaa");
    assert_string_equal(ids[1], "subnet-0bbb");
    /* A second list appends after what is there. */
    const char *one = "{\"items\":[{\"spec\":{\"subnet\":\"subnet-0ccc\"}}]}";
    assert_int_equal(cmh_eniconfig_parse(one, strlen(one), &ids, &n), 0);
    assert_int_equal(n, 3);
    assert_string_equal(ids[2], "subnet-0ccc");
    release(ids, n);
}

static void eniconfig_not_a_list_is_refused(void **state)
{
    (void)state;
    const char *bad[] = {"{\"kind\":\"Status\"}", "[", "{\"items\":{}}", "",
                         "{\"items\":[],\"items\":[]}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char **ids = NULL;
        size_t n = 0;
        assert_int_equal(cmh_eniconfig_parse(bad[i], strlen(bad[i]), &ids, &n), -EBADMSG);
        assert_int_equal(n, 0);
        assert_null(ids);
    }
    char **ids = NULL;
    size_t n = 0;
    assert_int_equal(cmh_eniconfig_parse("{\"items\":[]}", 12, &ids, &n), 0);
    assert_int_equal(n, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(eniconfig_list_subnets_in_order_rest_ignored),
        cmocka_unit_test(eniconfig_not_a_list_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
