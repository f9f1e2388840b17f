/* The default listen address reaches every address of the pod: the kubelet's probes connect to
 * the pod IP, `kubectl port-forward` to 127.0.0.1 or ::1 inside the pod. The server is started
 * with the configuration's default address (PROMETHEUS_ADDRESS unset) on port 0; the test reads
 * the bound socket back (getsockname, IPV6_V6ONLY), connects once to 127.0.0.1 and once to ::1
 * (where the host has IPv6), and closes the listener at once: the wildcard is held for the few
 * milliseconds of two loopback connects, nothing off the machine can be reached by the test. */
#include "cmh/core/config.h"
#include "cmh/http/http_server.h"
#include "cmh/core/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>

static int answer(void *arg, const char *path, struct cmh_buf *body, const char **content_type)
{
    (void)arg;
    (void)path;
    (void)body;
    *content_type = "text/plain";
    return 200;
}

/* A blocking connect with a 2 s bound: 0 when the listener took the connection. */
static int connect_to(int family, const char *ip, unsigned port)
{
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof ss);
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        inet_pton(AF_INET, ip, &a->sin_addr);
        len = sizeof *a;
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        inet_pton(AF_INET6, ip, &a->sin6_addr);
        len = sizeof *a;
    }
    int fd = socket(family, SOCK_STREAM, 0);
    if (fd < 0)
        return -errno;
    struct timeval tv = {.tv_sec = 2};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int rc = connect(fd, (struct sockaddr *)&ss, len) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

static int host_has_ipv6(void)
{
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    if (fd < 0)
        return 0;
    close(fd);
    return 1;
}

/* A server on address, port 0; returns the port. */
static unsigned start(struct cmh_http_server *s, uv_loop_t *loop, struct cmh_log *log,
                      const char *address)
{
    cmh_log_init(log, CMH_LOG_ERROR, CMH_LOG_TEXT, 2);
    assert_int_equal(uv_loop_init(loop), 0);
    memset(s, 0, sizeof *s);
    struct cmh_http_server_opts o = {.address = address, .port = 0};
    assert_int_equal(cmh_http_server_start(s, loop, &o, answer, NULL, log), 0);
    unsigned port = cmh_http_server_port(s);
    assert_true(port > 0);
    return port;
}

static void stop(struct cmh_http_server *s, uv_loop_t *loop)
{
    cmh_http_server_close(s, NULL);
    for (int i = 0; i < 100 && uv_run(loop, UV_RUN_NOWAIT) != 0; i++)
        ;
    assert_int_equal(uv_loop_close(loop), 0);
}

static void default_address_is_dual_stack_wildcard(void **state)
{
    (void)state;
    struct cmh_config cfg;
    char err[CMH_CONFIG_ERR_MAX];
    char *env[] = {NULL};
    assert_int_equal(cmh_config_load(&cfg, env, err), 0);

    struct cmh_log log;
    uv_loop_t loop;
    struct cmh_http_server s;
    unsigned port = start(&s, &loop, &log, cfg.prometheus_address);

    struct sockaddr_storage ss;
    int len = sizeof ss;
    assert_int_equal(uv_tcp_getsockname(&s.listener, (struct sockaddr *)&ss, &len), 0);
    int c4 = connect_to(AF_INET, "127.0.0.1", port);
    int c6 = host_has_ipv6() ? connect_to(AF_INET6, "::1", port) : 0;
    int v6only = -1;
    if (ss.ss_family == AF_INET6) {
        uv_os_fd_t fd;
        socklen_t ol = sizeof v6only;
        assert_int_equal(uv_fileno((uv_handle_t *)&s.listener, &fd), 0);
        assert_int_equal(getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &ol), 0);
    }
    stop(&s, &loop);

    if (host_has_ipv6()) {
        /* [::]:port with IPV6_V6ONLY off: IPv4 and IPv6 alike. */
        assert_int_equal(ss.ss_family, AF_INET6);
        assert_true(IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *)&ss)->sin6_addr));
        assert_int_equal(v6only, 0);
    } else {
        /* 0.0.0.0:port where the kernel has no IPv6. */
        assert_int_equal(ss.ss_family, AF_INET);
        assert_int_equal(((struct sockaddr_in *)&ss)->sin_addr.s_addr, htonl(INADDR_ANY));
    }
    assert_int_equal(c4, 0);
    assert_int_equal(c6, 0);
    cmh_config_free(&cfg);
}

/* The control: an IPv4 address alone is not reachable over ::1, so the check above can fail. */
static void ipv4_address_misses_ipv6_loopback(void **state)
{
    (void)state;
    if (!host_has_ipv6())
        skip();
    struct cmh_log log;
    uv_loop_t loop;
    struct cmh_http_server s;
    unsigned port = start(&s, &loop, &log, "127.0.0.1");
    int c6 = connect_to(AF_INET6, "::1", port);
    stop(&s, &loop);
    assert_int_not_equal(c6, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(default_address_is_dual_stack_wildcard),
        cmocka_unit_test(ipv4_address_misses_ipv6_loopback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
