#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_standin_ctl.h"

#include "cmh/core/container_of.h"
#include "cmh/http/curl_uv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ctl {
    struct cmh_curl_uv_req req;
    int done;
    long status;
    char *body;
};

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

static void on_ctl(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res)
{
    struct ctl *c = container_of(req, struct ctl, req);
    c->done = 1;
    c->status = res->status;
    c->body = strndup(res->body ? res->body : "", res->body_len);
}

json_t *test_standin_call(uv_loop_t *loop, struct cmh_curl_uv *curl, int port, const char *method,
                          const char *path, const char *json, size_t max_body)
{
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    struct ctl c;
    memset(&c, 0, sizeof c);
    static const char *const hdr[] = {"Content-Type: application/json"};
    c.req.method = method;
    c.req.url = url;
    c.req.headers = hdr;
    c.req.nheaders = 1;
    c.req.body = json;
    c.req.body_len = json ? strlen(json) : 0;
    c.req.max_body = max_body;
    c.req.allow_http = 1;
    assert_int_equal(cmh_curl_uv_start(curl, &c.req, on_ctl), 0);
    uint64_t end = now_ms() + 30000;
    while (!c.done && now_ms() < end)
        uv_run(loop, UV_RUN_ONCE);
    assert_true(c.done);
    if (c.status != 200)
        fail_msg("stand-in %s %s: %ld %s", method, path, c.status, c.body);
    json_error_t err;
    json_t *j = json_loads(c.body, 0, &err);
    free(c.body);
    assert_non_null(j);
    return j;
}
