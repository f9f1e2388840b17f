/* The Kubernetes API helper: the in-cluster server URL from the environment, answers mapped to an
 * errno and a sentence (a Status body's reason and message), the recorded error, and two requests
 * against a loopback peer: the token, Accept and path it sends, no proxy whatever the proxy
 * variables say, and the token read again after a refusal. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/k8s/api.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

static void in_cluster_url_from_the_environment(void **state)
{
    (void)state;
    char url[64];
    char *const env[] = {"PATH=/bin", "KUBERNETES_SERVICE_HOST=10.100.0.1",
                         "KUBERNETES_SERVICE_PORT=443", NULL};
    assert_int_equal(cmh_k8s_api_in_cluster_url(url, sizeof url, env), 0);
    assert_string_equal(url, "https://10.100.0.1:443");
    char *const v6[] = {"KUBERNETES_SERVICE_PORT=6443", "KUBERNETES_SERVICE_HOST=fd00::1", NULL};
    assert_int_equal(cmh_k8s_api_in_cluster_url(url, sizeof url, v6), 0);
    assert_string_equal(url, "https://[fd00::1]:6443");
    /* A prefix of the name is not the name; one of the two missing is not in a cluster. */
    char *const prefix[] = {"KUBERNETES_SERVICE_HOSTX=10.0.0.1", "KUBERNETES_SERVICE_PORT=443",
                            NULL};
    assert_int_equal(cmh_k8s_api_in_cluster_url(url, sizeof url, prefix), -EINVAL);
    char *const none[] = {NULL};
    assert_int_equal(cmh_k8s_api_in_cluster_url(url, sizeof url, none), -EINVAL);
    /* NULL: the process environment. */
    setenv("KUBERNETES_SERVICE_HOST", "10.1.2.3", 1);
    setenv("KUBERNETES_SERVICE_PORT", "8443", 1);
    assert_int_equal(cmh_k8s_api_in_cluster_url(url, sizeof url, NULL), 0);
    assert_string_equal(url, "https://10.1.2.3:8443");
    unsetenv("KUBERNETES_SERVICE_PORT");
    assert_int_equal(cmh_k8s_api_in_cluster_url(url, sizeof url, NULL), -EINVAL);
    unsetenv("KUBERNETES_SERVICE_HOST");
}

static int result_of(long status, enum cmh_curl_uv_error e, const char *body, char *why, size_t len)
{
    struct cmh_curl_uv_response res = {.error = e,
                                       .status = status,
                                       .error_text = e ? "boom" : "",
                                       .body = body,
                                       .body_len = strlen(body)};
    return cmh_k8s_api_result(NULL, &res, NULL, 0, why, len);
}

static void answers_mapped_to_errno_and_words(void **state)
{
    (void)state;
    char why[256];
    static const struct {
        long status;
        int rc;
    } codes[] = {{200, 0},       {201, 0},       {401, -EACCES}, {403, -EPERM},  {404, -ENOENT},
                 {409, -EEXIST}, {410, -ESTALE}, {429, -EAGAIN}, {400, -EINVAL}, {422, -EINVAL},
                 {500, -EIO},    {503, -EIO},    {302, -EPROTO}};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        assert_int_equal(result_of(codes[i].status, CMH_CURL_OK, "", why, sizeof why), codes[i].rc);
    assert_int_equal(result_of(0, CMH_CURL_ERR_TIMEOUT, "", why, sizeof why), -ETIMEDOUT);
    assert_string_equal(why, "timeout (boom)");
    assert_int_equal(result_of(0, CMH_CURL_ERR_CONNECT, "", why, sizeof why), -ECONNREFUSED);
    assert_int_equal(result_of(0, CMH_CURL_ERR_TLS, "", why, sizeof why), -ECONNABORTED);
    assert_int_equal(result_of(0, CMH_CURL_ERR_RESET, "", why, sizeof why), -ECONNRESET);
    assert_int_equal(result_of(0, CMH_CURL_ERR_TOO_LARGE, "", why, sizeof why), -EFBIG);
    assert_int_equal(result_of(0, CMH_CURL_ERR_CANCELLED, "", why, sizeof why), -ECANCELED);
    /* A Status body gives its reason and message; anything else its first bytes. */
    const char *st = "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\","
                     "\"message\":\"pods is forbidden: User cannot list\",\"reason\":\"Forbidden\","
                     "\"code\":403}";
    assert_int_equal(result_of(403, CMH_CURL_OK, st, why, sizeof why), -EPERM);
    assert_string_equal(why, "HTTP 403 Forbidden: pods is forbidden: User cannot list");
    assert_int_equal(result_of(502, CMH_CURL_OK, "<html>bad gateway</html>", why, sizeof why),
                     -EIO);
    assert_string_equal(why, "HTTP 502: <html>bad gateway</html>");
    assert_int_equal(result_of(404, CMH_CURL_OK, "{\"kind\":\"Pod\"}", why, sizeof why), -ENOENT);
    assert_string_equal(why, "HTTP 404: {\"kind\":\"Pod\"}");
    assert_int_equal(result_of(200, CMH_CURL_OK, st, why, sizeof why), 0);
    assert_string_equal(why, "");
}

static void fail_records_the_last_error_and_counts(void **state)
{
    (void)state;
    struct cmh_k8s_api_err e = {.count = 0};
    assert_string_equal(e.text, "");
    cmh_k8s_api_fail(&e, NULL, "x", NULL, 0, "first %d", 1);
    cmh_k8s_api_fail(&e, NULL, "x", NULL, 0, "second %s", "one");
    assert_string_equal(e.text, "second one");
    assert_int_equal(e.count, 2);
}

/* ---- two requests against a loopback peer ---- */

struct peer {
    uv_loop_t loop;
    uv_tcp_t server, conn[2]; /* one connection a request: the answer says close */
    int nconn;
    char req[4096];
    size_t len;
    int answered, requests;
    char answer[512];
    struct cmh_curl_uv curl;
    struct cmh_k8s_api api;
    struct cmh_k8s_api_req r;
    int rc;
    char why[256];
    char seen[2][4096];
};

static const char status_401[] = "{\"kind\":\"Status\",\"status\":\"Failure\",\"reason\":"
                                 "\"Unauthorized\",\"message\":\"expired\"}";

static void on_alloc(uv_handle_t *h, size_t size, uv_buf_t *buf)
{
    struct peer *p = h->data;
    (void)size;
    *buf = uv_buf_init(p->req + p->len, (unsigned)(sizeof p->req - 1 - p->len));
}

static void on_written(uv_write_t *w, int status)
{
    (void)status;
    free(w);
}

static void on_conn_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct peer *p = s->data;
    (void)buf;
    if (n < 0) {
        uv_close((uv_handle_t *)s, on_conn_closed);
        return;
    }
    p->len += (size_t)n;
    p->req[p->len] = '\0';
    if (p->answered || strstr(p->req, "\r\n\r\n") == NULL)
        return;
    p->answered = 1;
    snprintf(p->seen[p->requests < 2 ? p->requests : 1], sizeof p->seen[0], "%s", p->req);
    uv_write_t *w = malloc(sizeof *w);
    assert_non_null(w);
    int n401 = snprintf(p->answer, sizeof p->answer,
                        "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
                        "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                        strlen(status_401), status_401);
    uv_buf_t out = uv_buf_init(p->answer, (unsigned)n401);
    assert_int_equal(uv_write(w, s, &out, 1, on_written), 0);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct peer *p = server->data;
    assert_int_equal(status, 0);
    assert_true(p->nconn < 2);
    uv_tcp_t *c = &p->conn[p->nconn++];
    p->len = 0;
    p->answered = 0;
    uv_tcp_init(&p->loop, c);
    c->data = p;
    assert_int_equal(uv_accept(server, (uv_stream_t *)c), 0);
    uv_read_start((uv_stream_t *)c, on_alloc, on_read);
}

static void on_done(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res)
{
    struct peer *p = (struct peer *)((char *)req - offsetof(struct peer, r.curl));
    p->rc = cmh_k8s_api_result(&p->api, res, NULL, 0, p->why, sizeof p->why);
    p->requests++;
}

static void put_token(const char *path, const char *tok)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "%s\n", tok);
    assert_int_equal(fclose(f), 0);
}

static void run_one(struct peer *p)
{
    struct cmh_buf *u = cmh_k8s_api_begin(&p->api, &p->r, "GET");
    cmh_buf_addstr(u, "/api/v1/namespaces/");
    cmh_buf_add_pct(u, "kube-system", 11, 0);
    cmh_buf_addstr(u, "/pods?labelSelector=");
    cmh_buf_add_pct(u, "k8s-app=aws-node", 16, 0);
    int before = p->requests;
    assert_int_equal(cmh_k8s_api_start(&p->api, &p->curl, &p->r, on_done), 0);
    while (p->requests == before)
        uv_run(&p->loop, UV_RUN_ONCE);
}

static void curl_closed(struct cmh_curl_uv *c)
{
    (void)c;
}

static void requests_carry_token_never_proxy_and_reread_after_401(void **state)
{
    (void)state;
    static struct peer p;
    memset(&p, 0, sizeof p);
    char dir[] = "/tmp/cmh-k8s-api-XXXXXX", path[64];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/token", dir);
    put_token(path, "tok-1");
    /* A proxy that does not exist: a request that went through it would fail to connect. */
    setenv("http_proxy", "http://127.0.0.1:1", 1);
    setenv("HTTPS_PROXY", "http://127.0.0.1:1", 1);
    setenv("ALL_PROXY", "http://127.0.0.1:1", 1);
    assert_int_equal(uv_loop_init(&p.loop), 0);
    assert_int_equal(uv_tcp_init(&p.loop, &p.server), 0);
    p.server.data = &p;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    assert_int_equal(uv_tcp_bind(&p.server, (const struct sockaddr *)&sa, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&p.server, 4, on_connection), 0);
    int namelen = sizeof sa;
    uv_tcp_getsockname(&p.server, (struct sockaddr *)&sa, &namelen);
    char server[64];
    snprintf(server, sizeof server, "http://127.0.0.1:%u/", (unsigned)ntohs(sa.sin_port));
    assert_int_equal(cmh_curl_uv_init(&p.curl, &p.loop, NULL, NULL), 0);
    struct cmh_k8s_api_opts o = {.server = server, .token_file = path};
    assert_int_equal(cmh_k8s_api_init(&p.api, &o), 0);
    assert_int_equal(strlen(p.api.server) + 1, strlen(server)); /* the trailing '/' dropped */

    run_one(&p);
    assert_int_equal(p.rc, -EACCES);
    assert_string_equal(p.why, "HTTP 401 Unauthorized: expired");
    assert_non_null(strstr(p.seen[0], "GET /api/v1/namespaces/kube-system/pods?labelSelector="
                                      "k8s-app%3Daws-node HTTP/1.1\r\n"));
    assert_non_null(strstr(p.seen[0], "\r\nAuthorization: Bearer tok-1\r\n"));
    assert_non_null(strstr(p.seen[0], "\r\nAccept: application/json\r\n"));
    /* The refusal makes the next request read the file again, well before its max age. */
    put_token(path, "tok-2");
    run_one(&p);
    assert_non_null(strstr(p.seen[1], "\r\nAuthorization: Bearer tok-2\r\n"));
    assert_int_equal(p.api.tok.reads, 2);

    unsetenv("http_proxy");
    unsetenv("HTTPS_PROXY");
    unsetenv("ALL_PROXY");
    cmh_k8s_api_req_free(&p.r);
    cmh_k8s_api_free(&p.api);
    cmh_curl_uv_close(&p.curl, curl_closed);
    uv_close((uv_handle_t *)&p.server, NULL);
    for (int i = 0; i < p.nconn; i++)
        if (!uv_is_closing((uv_handle_t *)&p.conn[i]))
            uv_close((uv_handle_t *)&p.conn[i], NULL);
    uv_run(&p.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&p.loop), 0);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(in_cluster_url_from_the_environment),
        cmocka_unit_test(answers_mapped_to_errno_and_words),
        cmocka_unit_test(fail_records_the_last_error_and_counts),
        cmocka_unit_test(requests_carry_token_never_proxy_and_reread_after_401),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
