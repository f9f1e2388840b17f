/* The ENIConfig list parser on the API server's ENIConfigList: spec.subnet of every item, items
 * without one (or with one longer than any subnet id) ignored, anything else refused; and the list
 * against the fake API (test/sim/fake_k8s_api.py, TLS with a CA made at start): an absent CRD is
 * an empty list, a 403 keeps the previous one, and no proxy variable is followed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/core/alloc.h"
#include "cmh/core/config.h"
#include "cmh/core/log.h"
#include "cmh/http/curl_uv.h"
#include "cmh/k8s/eniconfig.h"
#include "cmh/k8s/eniconfig_int.h"
#include "test_peer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

struct listed {
    int n;
    int rc;
};

static void on_listed(struct cmh_eniconfig *l, int rc, void *arg)
{
    struct listed *d = arg;
    (void)l;
    d->n++;
    d->rc = rc;
}

static void api_cmd(struct test_peer *api, const char *cmd)
{
    static char line[1 << 16];
    assert_int_equal(test_peer_write_line(api, cmd), 0);
    assert_int_equal(test_peer_read_line(api, line, sizeof line, 10), 0);
    assert_memory_equal(line, "OK", 2);
}

/* One list; returns its rc and leaves the subnets in *ids. */
static int list_once(uv_loop_t *loop, struct cmh_eniconfig *l, const char *const **ids, size_t *n)
{
    struct listed d = {0};
    assert_int_equal(cmh_eniconfig_list(l, on_listed, &d), 0);
    assert_int_equal(cmh_eniconfig_list(l, on_listed, &d), -EBUSY);
    for (int i = 0; i < 10000 && d.n == 0; i++)
        uv_run(loop, UV_RUN_ONCE);
    assert_int_equal(d.n, 1);
    *n = cmh_eniconfig_subnets(l, ids);
    return d.rc;
}

static void closed_curl(struct cmh_curl_uv *c)
{
    (void)c;
}

static void eniconfig_list_against_fake_api_404_empty_403_kept_no_proxy(void **state)
{
    (void)state;
    /* Every proxy variable names a dead proxy: the list must go to the API server directly. */
    const char *proxies[] = {"http_proxy", "https_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"};
    for (size_t i = 0; i < sizeof proxies / sizeof proxies[0]; i++)
        setenv(proxies[i], "http://127.0.0.1:9", 1);
    unsetenv("NO_PROXY");
    unsetenv("no_proxy");
    char dir[] = "/tmp/cmh-eniconfig-XXXXXX", token_file[64], script[1024], line[1024], ca[512];
    assert_non_null(mkdtemp(dir));
    snprintf(token_file, sizeof token_file, "%s/token", dir);
    snprintf(script, sizeof script, "%s/test/sim/fake_k8s_api.py", CMH_SOURCE_DIR);
    char *argv[] = {CMH_TEST_PYTHON, script, "--token-file", token_file, "--lifetime", "60", NULL};
    struct test_peer *api = calloc(1, sizeof *api);
    assert_non_null(api);
    assert_int_equal(test_peer_start(api, argv), 0);
    int port = 0;
    assert_int_equal(test_peer_read_line(api, line, sizeof line, 30), 0);
    assert_int_equal(sscanf(line, "READY port=%d ca=%511s", &port, ca), 2);
    uv_loop_t loop;
    struct cmh_log log;
    struct cmh_curl_uv curl;
    assert_int_equal(uv_loop_init(&loop), 0);
    cmh_log_init(&log, CMH_LOG_INFO, CMH_LOG_TEXT, 2);
    assert_int_equal(cmh_curl_uv_init(&curl, &loop, NULL, &log), 0);
    struct cmh_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.k8s_token_file = token_file;
    cfg.k8s_ca_file = ca;
    char server[64];
    snprintf(server, sizeof server, "https://127.0.0.1:%d", port);
    struct cmh_eniconfig *l = NULL;
    assert_int_equal(cmh_eniconfig_new(&l, &curl, server, &cfg, &log), 0);
    const char *const *ids;
    size_t n = 99;
    /* No CRD (404): no ENIConfig subnets, and that is a good list. */
    assert_int_equal(list_once(&loop, l, &ids, &n), 0);
    assert_int_equal(n, 0);
    api_cmd(api, "eniconfig us-west-2a subnet-0000c003");
    api_cmd(api, "eniconfig us-west-2b subnet-0000c004");
    assert_int_equal(list_once(&loop, l, &ids, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(ids[0], "subnet-0000c003");
    assert_string_equal(ids[1], "subnet-0000c004");
    /* Forbidden: the previous subnets stay. */
    api_cmd(api, "eniconfig-forbid on");
    assert_int_equal(list_once(&loop, l, &ids, &n), -EACCES);
    assert_int_equal(n, 2);
    api_cmd(api, "eniconfig-forbid off");
    api_cmd(api, "eniconfig-del us-west-2a");
    assert_int_equal(list_once(&loop, l, &ids, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(ids[0], "subnet-0000c004");
    /* Freed with a list in flight: its callback never fires. */
    struct listed d = {0};
    assert_int_equal(cmh_eniconfig_list(l, on_listed, &d), 0);
    cmh_eniconfig_free(l);
    cmh_curl_uv_close(&curl, closed_curl);
    for (int i = 0; i < 1000 && uv_run(&loop, UV_RUN_NOWAIT) != 0; i++)
        usleep(1000);
    assert_int_equal(d.n, 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    test_peer_stop(api);
    free(api);
    unlink(token_file);
    char ca_copy[600];
    snprintf(ca_copy, sizeof ca_copy, "%s.ca.crt", token_file);
    unlink(ca_copy);
    rmdir(dir);
    for (size_t i = 0; i < sizeof proxies / sizeof proxies[0]; i++)
        unsetenv(proxies[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(eniconfig_list_subnets_in_order_rest_ignored),
        cmocka_unit_test(eniconfig_not_a_list_is_refused),
        cmocka_unit_test(eniconfig_list_against_fake_api_404_empty_403_kept_no_proxy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
