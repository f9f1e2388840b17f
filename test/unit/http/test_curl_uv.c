/* curl_uv against a scripted loopback peer (test/sim/https_peer.py: HTTP, HTTPS with a CA made at
 * test time, HTTPS with an untrusted certificate): success, TLS trust and failure, timeout, reset,
 * refused, size cap, 429 + Retry-After, 200 concurrent requests, connection reuse counted at the
 * peer, cancellation by close. Every test ends with uv_loop_close() == 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_peer.h"

#include "cmh/core/container_of.h"
#include "cmh/http/curl_uv.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct peer {
    struct test_peer proc;
    int http, https, rogue;
    char ca[512];
};

/* One peer for the whole program: started in group setup, stopped in teardown. */
static struct peer *the_peer;

static int peer_start(void **state)
{
    static struct peer p;
    char script[1024];
    snprintf(script, sizeof script, "%s/test/sim/https_peer.py", CMH_SOURCE_DIR);
    char *argv[] = {CMH_TEST_PYTHON, script, "--lifetime", "100", NULL};
    char line[1024] = "";
    if (test_peer_start(&p.proc, argv) != 0)
        return -1;
    if (test_peer_read_line(&p.proc, line, sizeof line, 30) != 0 ||
        sscanf(line, "READY http=%d https=%d rogue=%d ca=%511s", &p.http, &p.https, &p.rogue,
               p.ca) != 4) {
        fprintf(stderr, "peer did not start: '%s'\n", line);
        test_peer_stop(&p.proc);
        return -1;
    }
    the_peer = &p;
    *state = &p;
    return 0;
}

static int peer_stop(void **state)
{
    (void)state;
    if (the_peer != NULL)
        test_peer_stop(&the_peer->proc);
    return 0;
}

/* A request and a copy of what its callback saw. */
struct call {
    struct cmh_curl_uv_req req;
    char url[256];
    int done;
    enum cmh_curl_uv_error error;
    long status;
    char *body;
    size_t body_len;
    char content_type[128];
    int64_t retry_after_ms;
    long new_connections;
    uint64_t elapsed_ms;
    int restarts_left; /* start again from the callback this many times */
};

struct fixture {
    uv_loop_t loop;
    struct cmh_curl_uv c;
    uv_timer_t guard;
    int closed;
    int done_count;
    struct fixture *outer; /* the fixture that was current before this one (nested runs) */
};

static void on_done(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res);

static void record(struct call *k, const struct cmh_curl_uv_response *res)
{
    k->done++;
    k->error = res->error;
    k->status = res->status;
    free(k->body);
    k->body = malloc(res->body_len + 1);
    assert_non_null(k->body);
    memcpy(k->body, res->body, res->body_len);
    k->body[res->body_len] = '\0';
    k->body_len = res->body_len;
    snprintf(k->content_type, sizeof k->content_type, "%s",
             res->content_type ? res->content_type : "");
    k->retry_after_ms = res->retry_after_ms;
    k->new_connections = res->new_connections;
    k->elapsed_ms = res->elapsed_ms;
}

static struct fixture *current;

static void on_done(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res)
{
    struct call *k = container_of(req, struct call, req);
    record(k, res);
    current->done_count++;
    if (k->restarts_left > 0) {
        k->restarts_left--;
        assert_int_equal(cmh_curl_uv_start(&current->c, req, on_done), 0);
    }
}

static void on_guard(uv_timer_t *t)
{
    fail_msg("test loop still running after 30 s");
}

static void fixture_init(struct fixture *f, const struct cmh_curl_uv_opts *opts)
{
    memset(f, 0, sizeof *f);
    f->outer = current;
    current = f;
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(cmh_curl_uv_init(&f->c, &f->loop, opts, NULL), 0);
    assert_int_equal(uv_timer_init(&f->loop, &f->guard), 0);
    assert_int_equal(uv_timer_start(&f->guard, on_guard, 30000, 0), 0);
    uv_unref((uv_handle_t *)&f->guard);
}

static void on_closed(struct cmh_curl_uv *c)
{
    current->closed = 1;
}

/* Runs until n callbacks have come (bounded by the guard), then closes everything. */
static void run_until(struct fixture *f, int n)
{
    while (f->done_count < n)
        assert_int_equal(uv_run(&f->loop, UV_RUN_ONCE) >= 0, 1);
}

static void fixture_close(struct fixture *f)
{
    cmh_curl_uv_close(&f->c, on_closed);
    uv_close((uv_handle_t *)&f->guard, NULL);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_true(f->closed);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    current = f->outer;
}

static void call_init(struct call *k, const char *scheme, int port, const char *path)
{
    memset(k, 0, sizeof *k);
    snprintf(k->url, sizeof k->url, "%s://127.0.0.1:%d%s", scheme, port, path);
    k->req.url = k->url;
    k->req.allow_http = strcmp(scheme, "http") == 0;
}

static void call_free(struct call *k)
{
    free(k->body);
    k->body = NULL;
}

static struct cmh_curl_uv_opts test_opts(uint64_t timeout_ms)
{
    return (struct cmh_curl_uv_opts){.timeout_ms = timeout_ms, .ca_file = the_peer->ca};
}

/* One request, start to finish, on its own loop and instance. */
static void run_single(struct call *k, const struct cmh_curl_uv_opts *opts)
{
    struct fixture f;
    fixture_init(&f, opts);
    assert_int_equal(cmh_curl_uv_start(&f.c, &k->req, on_done), 0);
    /* The callback never runs inside start. */
    assert_int_equal(k->done, 0);
    run_until(&f, 1);
    assert_int_equal(k->done, 1);
    fixture_close(&f);
}

static long peer_accepts(const char *listener)
{
    struct call k;
    call_init(&k, "http", the_peer->http, "/stats");
    struct cmh_curl_uv_opts o = test_opts(5000);
    run_single(&k, &o);
    assert_int_equal(k.status, 200);
    json_t *j = json_loads(k.body, 0, NULL);
    assert_non_null(j);
    long n = (long)json_integer_value(json_object_get(j, listener));
    json_decref(j);
    call_free(&k);
    return n;
}

static void test_https_get_with_test_ca(void **state)
{
    struct call k;
    call_init(&k, "https", the_peer->https, "/ok");
    struct cmh_curl_uv_opts o = test_opts(5000);
    run_single(&k, &o);
    assert_int_equal(k.error, CMH_CURL_OK);
    assert_int_equal(k.status, 200);
    assert_string_equal(k.body, "hello\n");
    assert_string_equal(k.content_type, "text/plain");
    assert_int_equal(k.retry_after_ms, -1);
    assert_int_equal(k.new_connections, 1);
    call_free(&k);
}

static void test_https_post_body_and_headers_arrive(void **state)
{
    unsigned char body[3000];
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = (unsigned char)(i * 7 + 3);
    const char *headers[] = {"Content-Type: application/x-www-form-urlencoded",
                             "X-Amz-Date: 20260826T000000Z", "Content-Encoding: gzip"};
    struct call k;
    call_init(&k, "https", the_peer->https, "/echo");
    k.req.method = "POST";
    k.req.headers = headers;
    k.req.nheaders = 3;
    k.req.body = body;
    k.req.body_len = sizeof body;
    struct cmh_curl_uv_opts o = test_opts(5000);
    run_single(&k, &o);
    assert_int_equal(k.error, CMH_CURL_OK);
    assert_int_equal(k.status, 200);
    json_t *j = json_loads(k.body, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "method")), "POST");
    char hex[2 * sizeof body + 1];
    for (size_t i = 0; i < sizeof body; i++)
        snprintf(hex + 2 * i, 3, "%02x", body[i]);
    assert_string_equal(json_string_value(json_object_get(j, "body_hex")), hex);
    int seen_date = 0, seen_ctype = 0, seen_expect = 0, seen_len = 0;
    json_t *h;
    size_t i;
    json_array_foreach(json_object_get(j, "headers"), i, h)
    {
        const char *n = json_string_value(json_array_get(h, 0));
        const char *v = json_string_value(json_array_get(h, 1));
        seen_date += strcasecmp(n, "X-Amz-Date") == 0 && strcmp(v, "20260826T000000Z") == 0;
        seen_ctype += strcasecmp(n, "Content-Type") == 0 &&
                      strcmp(v, "application/x-www-form-urlencoded") == 0;
        seen_expect += strcasecmp(n, "Expect") == 0;
        seen_len += strcasecmp(n, "Content-Length") == 0 && strcmp(v, "3000") == 0;
    }
    assert_int_equal(seen_date, 1);
    assert_int_equal(seen_ctype, 1);
    assert_int_equal(seen_expect, 0);
    assert_int_equal(seen_len, 1);
    json_decref(j);
    call_free(&k);
}

/* IMDSv2's token call: PUT with no body over plain HTTP (allowed only when asked). */
static void test_http_put_empty_body_when_allowed(void **state)
{
    const char *headers[] = {"X-aws-ec2-metadata-token-ttl-seconds: 21600"};
    struct call k;
    call_init(&k, "http", the_peer->http, "/echo");
    k.req.method = "PUT";
    k.req.headers = headers;
    k.req.nheaders = 1;
    struct cmh_curl_uv_opts o = test_opts(5000);
    run_single(&k, &o);
    assert_int_equal(k.error, CMH_CURL_OK);
    json_t *j = json_loads(k.body, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "method")), "PUT");
    assert_non_null(strstr(k.body, "\"Content-Length\", \"0\""));
    assert_non_null(strstr(k.body, "\"X-aws-ec2-metadata-token-ttl-seconds\", \"21600\""));
    json_decref(j);
    call_free(&k);
}

static void test_plain_http_refused_unless_allowed(void **state)
{
    struct fixture f;
    struct cmh_curl_uv_opts o = test_opts(5000);
    fixture_init(&f, &o);
    struct call k;
    call_init(&k, "http", the_peer->http, "/ok");
    k.req.allow_http = 0;
    assert_int_equal(cmh_curl_uv_start(&f.c, &k.req, on_done), -EPROTONOSUPPORT);
    k.req.url = "ftp://127.0.0.1/x";
    k.req.allow_http = 1;
    assert_int_equal(cmh_curl_uv_start(&f.c, &k.req, on_done), -EPROTONOSUPPORT);
    const char *bad[] = {"NoColonHere"};
    call_init(&k, "https", the_peer->https, "/ok");
    k.req.headers = bad;
    k.req.nheaders = 1;
    assert_int_equal(cmh_curl_uv_start(&f.c, &k.req, on_done), -EINVAL);
    assert_int_equal(k.done, 0);
    fixture_close(&f);
    assert_int_equal(k.done, 0);
}

static void test_tls_untrusted_certificate_fails(void **state)
{
    struct call k;
    call_init(&k, "https", the_peer->rogue, "/ok");
    struct cmh_curl_uv_opts o = test_opts(5000);
    run_single(&k, &o);
    assert_int_equal(k.error, CMH_CURL_ERR_TLS);
    assert_int_equal(k.status, 0);
    call_free(&k);
    /* The good server is not trusted either without the test CA (system store only). */
    call_init(&k, "https", the_peer->https, "/ok");
    o.ca_file = NULL;
    run_single(&k, &o);
    assert_int_equal(k.error, CMH_CURL_ERR_TLS);
    call_free(&k);
}

static void test_stalled_peer_times_out(void **state)
{
    struct call k;
    call_init(&k, "https", the_peer->https, "/stall");
    struct cmh_curl_uv_opts o = test_opts(400);
    run_single(&k, &o);
    assert_int_equal(k.error, CMH_CURL_ERR_TIMEOUT);
    assert_int_equal(k.status, 0);
    assert_true(k.elapsed_ms >= 390 && k.elapsed_ms < 6000);
    call_free(&k);
}

static void test_connection_reset(void **state)
{
    struct call k;
    call_init(&k, "http", the_peer->http, "/reset");
    struct cmh_curl_uv_opts o = test_opts(5000);
    run_single(&k, &o);
    assert_int_equal(k.error, CMH_CURL_ERR_RESET);
    call_free(&k);
    call_init(&k, "https", the_peer->https, "/reset");
    run_single(&k, &o);
    assert_int_equal(k.error, CMH_CURL_ERR_RESET);
    call_free(&k);
}

static void test_connection_refused(void **state)
{
    /* A port that was just free: bind, read it back, close. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    close(fd);
    struct call k;
    call_init(&k, "https", ntohs(a.sin_port), "/ok");
    struct cmh_curl_uv_opts o = test_opts(5000);
    run_single(&k, &o);
    assert_int_equal(k.error, CMH_CURL_ERR_CONNECT);
    assert_true(k.elapsed_ms < 6000);
    call_free(&k);
}

static void test_response_too_large(void **state)
{
    struct cmh_curl_uv_opts o = test_opts(5000);
    o.max_body = 1000;
    const char *paths[] = {"/big?n=1001", "/bigchunked?n=5000", "/big?n=1000"};
    enum cmh_curl_uv_error want[] = {CMH_CURL_ERR_TOO_LARGE, CMH_CURL_ERR_TOO_LARGE, CMH_CURL_OK};
    for (size_t i = 0; i < 3; i++) {
        struct call k;
        call_init(&k, "https", the_peer->https, paths[i]);
        run_single(&k, &o);
        assert_int_equal(k.error, want[i]);
        if (want[i] == CMH_CURL_OK)
            assert_int_equal(k.body_len, 1000);
        call_free(&k);
    }
    /* A per-request cap overrides the instance's. */
    struct call k;
    call_init(&k, "https", the_peer->https, "/big?n=1000");
    k.req.max_body = 999;
    run_single(&k, &o);
    assert_int_equal(k.error, CMH_CURL_ERR_TOO_LARGE);
    call_free(&k);
}

static void test_429_retry_after_surfaced(void **state)
{
    struct cmh_curl_uv_opts o = test_opts(5000);
    struct call k;
    call_init(&k, "https", the_peer->https, "/429");
    run_single(&k, &o);
    assert_int_equal(k.error, CMH_CURL_OK);
    assert_int_equal(k.status, 429);
    assert_int_equal(k.retry_after_ms, 7000);
    assert_string_equal(k.body, "slow down");
    call_free(&k);
    call_init(&k, "https", the_peer->https, "/429date");
    run_single(&k, &o);
    assert_int_equal(k.status, 429);
    assert_true(k.retry_after_ms >= 110000 && k.retry_after_ms <= 121000);
    call_free(&k);
}

#define CONCURRENT 200

static void test_200_concurrent_then_reuse(void **state)
{
    long before = peer_accepts("https");
    struct fixture f;
    struct cmh_curl_uv_opts o = test_opts(20000);
    fixture_init(&f, &o);
    struct call *calls = calloc(CONCURRENT, sizeof *calls);
    assert_non_null(calls);
    for (int i = 0; i < CONCURRENT; i++) {
        call_init(&calls[i], "https", the_peer->https, "/ok");
        assert_int_equal(cmh_curl_uv_start(&f.c, &calls[i].req, on_done), 0);
    }
    run_until(&f, CONCURRENT);
    long opened = 0;
    for (int i = 0; i < CONCURRENT; i++) {
        assert_int_equal(calls[i].error, CMH_CURL_OK);
        assert_int_equal(calls[i].status, 200);
        assert_string_equal(calls[i].body, "hello\n");
        opened += calls[i].new_connections;
    }
    long mid = peer_accepts("https");
    print_message("%d concurrent requests used %ld connections\n", CONCURRENT, mid - before);
    /* At most max_host_connections (8 by default) connections served all 200. */
    assert_true(mid - before >= 1 && mid - before <= 8);
    assert_int_equal(opened, mid - before);
    /* Then 20 requests one after the other, each started from the previous one's callback:
     * all on connections already open. */
    call_free(&calls[0]);
    call_init(&calls[0], "https", the_peer->https, "/ok");
    calls[0].restarts_left = 19;
    f.done_count = 0;
    assert_int_equal(cmh_curl_uv_start(&f.c, &calls[0].req, on_done), 0);
    run_until(&f, 20);
    assert_int_equal(calls[0].done, 20);
    assert_int_equal(calls[0].status, 200);
    assert_int_equal(f.c.stats.started, CONCURRENT + 20);
    assert_int_equal(f.c.stats.completed, CONCURRENT + 20);
    fixture_close(&f);
    long after = peer_accepts("https");
    assert_int_equal(after, mid);
    for (int i = 0; i < CONCURRENT; i++)
        call_free(&calls[i]);
    free(calls);
}

static void on_close_timer(uv_timer_t *t)
{
    struct fixture *f = current;
    cmh_curl_uv_close(&f->c, on_closed);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_close_cancels_inflight(void **state)
{
    struct fixture f;
    struct cmh_curl_uv_opts o = test_opts(10000);
    fixture_init(&f, &o);
    struct call k[5];
    for (int i = 0; i < 5; i++) {
        call_init(&k[i], "https", the_peer->https, "/stall");
        assert_int_equal(cmh_curl_uv_start(&f.c, &k[i].req, on_done), 0);
    }
    uv_timer_t t;
    assert_int_equal(uv_timer_init(&f.loop, &t), 0);
    assert_int_equal(uv_timer_start(&t, on_close_timer, 300, 0), 0);
    uv_close((uv_handle_t *)&f.guard, NULL);
    uint64_t t0 = uv_now(&f.loop);
    assert_int_equal(uv_run(&f.loop, UV_RUN_DEFAULT), 0);
    assert_true(uv_now(&f.loop) - t0 < 3000);
    assert_true(f.closed);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(k[i].done, 1);
        assert_int_equal(k[i].error, CMH_CURL_ERR_CANCELLED);
        call_free(&k[i]);
    }
    /* A closed instance refuses new work. */
    struct call late;
    call_init(&late, "https", the_peer->https, "/ok");
    assert_int_equal(cmh_curl_uv_start(&f.c, &late.req, on_done), -EBUSY);
    assert_int_equal(uv_loop_close(&f.loop), 0);
    current = f.outer;
}

static void on_done_then_close(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res)
{
    on_done(req, res);
    cmh_curl_uv_close(&current->c, on_closed);
}

/* close() from inside a done callback, while other requests are in flight: they are cancelled,
 * nothing runs on freed state, the loop ends. */
static void test_close_from_done_callback(void **state)
{
    struct fixture f;
    struct cmh_curl_uv_opts o = test_opts(10000);
    fixture_init(&f, &o);
    struct call ok, stall[3];
    for (int i = 0; i < 3; i++) {
        call_init(&stall[i], "https", the_peer->https, "/stall");
        assert_int_equal(cmh_curl_uv_start(&f.c, &stall[i].req, on_done), 0);
    }
    call_init(&ok, "https", the_peer->https, "/ok");
    assert_int_equal(cmh_curl_uv_start(&f.c, &ok.req, on_done_then_close), 0);
    uv_close((uv_handle_t *)&f.guard, NULL);
    assert_int_equal(uv_run(&f.loop, UV_RUN_DEFAULT), 0);
    assert_true(f.closed);
    assert_int_equal(ok.done, 1);
    assert_int_equal(ok.status, 200);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(stall[i].done, 1);
        assert_int_equal(stall[i].error, CMH_CURL_ERR_CANCELLED);
        call_free(&stall[i]);
    }
    call_free(&ok);
    assert_int_equal(f.c.stats.errors[CMH_CURL_ERR_CANCELLED], 3);
    assert_int_equal(uv_loop_close(&f.loop), 0);
    current = f.outer;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_https_get_with_test_ca),
        cmocka_unit_test(test_https_post_body_and_headers_arrive),
        cmocka_unit_test(test_http_put_empty_body_when_allowed),
        cmocka_unit_test(test_plain_http_refused_unless_allowed),
        cmocka_unit_test(test_tls_untrusted_certificate_fails),
        cmocka_unit_test(test_stalled_peer_times_out),
        cmocka_unit_test(test_connection_reset),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_response_too_large),
        cmocka_unit_test(test_429_retry_after_surfaced),
        cmocka_unit_test(test_200_concurrent_then_reuse),
        cmocka_unit_test(test_close_cancels_inflight),
        cmocka_unit_test(test_close_from_done_callback),
    };
    return cmocka_run_group_tests_name("curl_uv_loopback_peer", tests, peer_start, peer_stop);
}
