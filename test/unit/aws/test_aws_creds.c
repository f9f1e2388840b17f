/* The credential provider chain, region and cluster id against test/sim/aws_standin.py, a loopback
 * stand-in that replays the smithy-rs recorded credential traffic (test/data/aws/), serves
 * the amazon-ec2-metadata-mock IMDS tree, or follows a script, and counts every request. Every
 * endpoint is overridden to 127.0.0.1; IMDS is either pointed at the stand-in or disabled. Every
 * test ends with uv_loop_close() == 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_peer.h"

#include "cmh/aws/aws_creds.h"
#include "cmh/aws/creds_parse.h"
#include "cmh/http/curl_uv.h"
#include "cmh/core/log.h"

#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CASES                                                                                      \
    CMH_DATA_DIR "/aws/smithy-rs-aws-config-test-data/"                                            \
                 "default-credential-provider-chain"
#define BODIES CMH_DATA_DIR "/aws/smithy-rs-extracted-bodies"

/* ------------------------------------------------------------------------------------------ */
/* The stand-in: one process for the whole program, commands over its stdin/stdout. */

static struct {
    struct test_peer proc;
    int http, https;
    char ca[512];
} sin_;

/* The next line of the stand-in's output (malloc'd), or NULL after timeout_s seconds. */
static char *read_line(int timeout_s)
{
    static char line[1 << 20];
    return test_peer_read_line(&sin_.proc, line, sizeof line, timeout_s) == 0 ? strdup(line) : NULL;
}

static int standin_start(void **state)
{
    char *argv[] = {CMH_TEST_PYTHON,
                    CMH_SOURCE_DIR "/test/sim/aws_standin.py",
                    "--lifetime",
                    "110",
                    "--data",
                    CMH_DATA_DIR,
                    NULL};
    if (test_peer_start(&sin_.proc, argv) != 0)
        return -1;
    char *line = read_line(30);
    if (line == NULL ||
        sscanf(line, "READY http=%d https=%d ca=%511s", &sin_.http, &sin_.https, sin_.ca) != 3) {
        fprintf(stderr, "stand-in did not start: '%s'\n", line ? line : "");
        free(line);
        test_peer_stop(&sin_.proc);
        return -1;
    }
    free(line);
    return 0;
}

static int standin_stop(void **state)
{
    test_peer_stop(&sin_.proc);
    return 0;
}

/* Sends one command (takes cmd), returns the parsed answer. */
static json_t *standin(json_t *cmd)
{
    char *s = json_dumps(cmd, JSON_COMPACT);
    json_decref(cmd);
    assert_non_null(s);
    size_t n = strlen(s);
    assert_int_equal(write(sin_.proc.to, s, n), (ssize_t)n);
    assert_int_equal(write(sin_.proc.to, "\n", 1), 1);
    free(s);
    char *line = read_line(15);
    assert_non_null(line);
    json_t *j = json_loads(line, 0, NULL);
    free(line);
    assert_non_null(j);
    assert_null(json_object_get(j, "error"));
    return j;
}

static void standin_reset(void)
{
    json_decref(standin(json_pack("{s:s}", "cmd", "reset")));
}

static void standin_replay(const char *case_dir)
{
    json_decref(standin(json_pack("{s:s,s:s}", "cmd", "replay", "case", case_dir)));
}

/* Exchanges: method, path, status, body, stall seconds; NULL method ends the list. */
struct ex {
    const char *method, *path;
    int status;
    const char *body;
    int stall;
};

static void standin_script(const struct ex *e)
{
    json_t *arr = json_array();
    for (; e->method != NULL; e++)
        json_array_append_new(arr, json_pack("{s:s,s:s,s:i,s:s,s:i}", "method", e->method, "path",
                                             e->path, "status", e->status, "body",
                                             e->body ? e->body : "", "stall", e->stall));
    json_decref(standin(json_pack("{s:s,s:o}", "cmd", "script", "exchanges", arr)));
}

/* The stand-in's log; asserts nothing unexpected came and every queued exchange was used. */
static json_t *standin_log_clean(void)
{
    json_t *log = standin(json_pack("{s:s}", "cmd", "log"));
    json_t *mm = json_object_get(log, "mismatches");
    if (json_array_size(mm) != 0) {
        char *s = json_dumps(mm, 0);
        fail_msg("stand-in saw unexpected requests: %s", s);
    }
    assert_int_equal(json_integer_value(json_object_get(log, "left")), 0);
    return log;
}

static size_t standin_count(void)
{
    json_t *log = standin(json_pack("{s:s}", "cmd", "log"));
    size_t n = json_array_size(json_object_get(log, "requests"));
    json_decref(log);
    return n;
}

static const char *req_field(json_t *log, size_t i, const char *key)
{
    json_t *r = json_array_get(json_object_get(log, "requests"), i);
    assert_non_null(r);
    return json_string_value(json_object_get(r, key));
}

static const char *req_header(json_t *log, size_t i, const char *name)
{
    json_t *r = json_array_get(json_object_get(log, "requests"), i);
    assert_non_null(r);
    return json_string_value(json_object_get(json_object_get(r, "headers"), name));
}

/* ------------------------------------------------------------------------------------------ */
/* Fixture: loop, curl_uv, a log captured in a file, the provider. */

struct got {
    int rc;
    char akid[128], secret[128], token[512], why[1024], source[32];
    int64_t expires_ms;
    int has_token;
};

struct fx {
    uv_loop_t loop;
    struct cmh_curl_uv curl;
    struct cmh_log log;
    FILE *logf;
    uv_timer_t guard;
    struct cmh_aws_provider *p;
    struct cmh_aws_creds_opts opts;
    char *env[40];
    int nenv;
    struct got got[16];
    int ndone;
    int in_call;
    int res_rc, res_n;
    char region[64], cluster[256], res_why[1024];
};

static void on_guard(uv_timer_t *t)
{
    fail_msg("test loop still running after 20 s");
}

static void env_add(struct fx *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void env_add(struct fx *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    assert_true(f->nenv < 39);
    assert_true(vasprintf(&f->env[f->nenv], fmt, ap) > 0);
    va_end(ap);
    f->nenv++;
    f->env[f->nenv] = NULL;
}

/* Every default that would leave the machine points at the stand-in. */
static void fx_init(struct fx *f, int imds_disabled)
{
    memset(f, 0, sizeof *f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    struct cmh_curl_uv_opts co = {.timeout_ms = 8000, .ca_file = sin_.ca};
    assert_int_equal(cmh_curl_uv_init(&f->curl, &f->loop, &co, NULL), 0);
    f->logf = tmpfile();
    assert_non_null(f->logf);
    cmh_log_init(&f->log, CMH_LOG_DEBUG, CMH_LOG_TEXT, fileno(f->logf));
    assert_int_equal(uv_timer_init(&f->loop, &f->guard), 0);
    assert_int_equal(uv_timer_start(&f->guard, on_guard, 20000, 0), 0);
    uv_unref((uv_handle_t *)&f->guard);
    if (imds_disabled)
        env_add(f, "AWS_EC2_METADATA_DISABLED=true");
    else
        env_add(f, "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:%d", sin_.http);
    env_add(f, "AWS_ENDPOINT_URL_STS=https://127.0.0.1:%d", sin_.https);
    static char ecs[64];
    snprintf(ecs, sizeof ecs, "http://127.0.0.1:%d", sin_.http);
    f->opts.ecs_endpoint = ecs;
    f->opts.envp = f->env;
    standin_reset();
}

static int fx_provider(struct fx *f)
{
    return cmh_aws_provider_new(&f->p, &f->loop, &f->curl, &f->opts, &f->log);
}

static void fx_close(struct fx *f)
{
    cmh_aws_provider_close(f->p, NULL, NULL);
    f->p = NULL;
    cmh_curl_uv_close(&f->curl, NULL);
    uv_close((uv_handle_t *)&f->guard, NULL);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    for (int i = 0; i < f->nenv; i++)
        free(f->env[i]);
    fclose(f->logf);
}

static char *fx_log_text(struct fx *f)
{
    static char text[1 << 16];
    ssize_t n = pread(fileno(f->logf), text, sizeof text - 1, 0);
    text[n > 0 ? n : 0] = '\0';
    return text;
}

static void on_creds(struct cmh_aws_provider *p, int rc, const struct cmh_aws_credentials *c,
                     const char *why, void *arg)
{
    struct fx *f = arg;
    assert_false(f->in_call); /* never inside the call that asked */
    assert_true(f->ndone < 16);
    struct got *g = &f->got[f->ndone++];
    g->rc = rc;
    snprintf(g->why, sizeof g->why, "%s", why ? why : "");
    if (rc == 0) {
        assert_non_null(c);
        snprintf(g->akid, sizeof g->akid, "%s", c->access_key_id);
        snprintf(g->secret, sizeof g->secret, "%s", c->secret_access_key);
        g->has_token = c->session_token != NULL;
        snprintf(g->token, sizeof g->token, "%s", c->session_token ? c->session_token : "");
        snprintf(g->source, sizeof g->source, "%s", c->source);
        g->expires_ms = c->expires_ms;
    } else {
        assert_null(c);
    }
}

static void get(struct fx *f)
{
    f->in_call = 1;
    assert_int_equal(cmh_aws_creds_get(f->p, on_creds, f), 0);
    f->in_call = 0;
}

static void run_until(struct fx *f, int n)
{
    while (f->ndone < n)
        assert_true(uv_run(&f->loop, UV_RUN_ONCE) >= 0 || f->ndone >= n);
}

static struct got *get_one(struct fx *f)
{
    int n = f->ndone;
    get(f);
    run_until(f, n + 1);
    return &f->got[n];
}

static void on_resolved(struct cmh_aws_provider *p, int rc, const char *region, const char *cluster,
                        const char *why, void *arg)
{
    struct fx *f = arg;
    assert_false(f->in_call);
    f->res_n++;
    f->res_rc = rc;
    snprintf(f->res_why, sizeof f->res_why, "%s", why ? why : "");
    if (rc == 0) {
        assert_non_null(region);
        assert_non_null(cluster);
        snprintf(f->region, sizeof f->region, "%s", region);
        snprintf(f->cluster, sizeof f->cluster, "%s", cluster);
    }
}

static void resolve(struct fx *f)
{
    int n = f->res_n;
    f->in_call = 1;
    assert_int_equal(cmh_aws_resolve(f->p, on_resolved, f), 0);
    f->in_call = 0;
    while (f->res_n == n)
        assert_true(uv_run(&f->loop, UV_RUN_ONCE) >= 0 || f->res_n > n);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------------------------------ */
/* The recorded smithy-rs cases whose shared config file, if any, gives no credentials. */

struct smithy_case {
    const char *name;
    const char *error_contains; /* our wording of the case's expected error; NULL = Ok */
    const char *role_arn;       /* a profile-configured web identity, given as environment */
    int no_home; /* its ~/.aws/config asks for what this program refuses (credential_source,
                  * a web identity profile): HOME left out, the case given as environment */
};

static const struct smithy_case smithy_cases[] = {
    {"imds_default_chain_success", NULL, NULL, 0},
    {"imds_config_with_no_creds", NULL, NULL, 0},
    {"imds_default_chain_retries", NULL, NULL, 0},
    {"imds_token_fail", "forbidden (403): IMDS is disabled", NULL, 1},
    {"imds_no_iam_role", "no IAM role is attached", NULL, 1},
    {"imds_default_chain_error", "no IAM role is attached", NULL, 0},
    {"imds_disabled", "no AWS credentials", NULL, 0},
    {"ecs_credentials", NULL, NULL, 0},
    {"ecs_credentials_invalid_profile", NULL, NULL, 0},
    {"eks_pod_identity_credentials", NULL, NULL, 0},
    {"eks_pod_identity_no_token_file", "no such file or directory", NULL, 0},
    {"web_identity_token_env", NULL, NULL, 0},
    {"web_identity_token_invalid_jwt",
     "InvalidIdentityToken: No OpenIDConnect provider found in your account",
     "arn:aws:iam::123456789:role/RoleB", 1},
};

static void run_smithy_case(const struct smithy_case *sc)
{
    char dir[1024], path[1200];
    snprintf(dir, sizeof dir, "%s/%s", CASES, sc->name);
    snprintf(path, sizeof path, "%s/env.json", dir);
    json_t *env = json_load_file(path, 0, NULL);
    snprintf(path, sizeof path, "%s/test-case.json", dir);
    json_t *tc = json_load_file(path, 0, NULL);
    assert_non_null(env);
    assert_non_null(tc);
    int disabled = json_object_get(env, "AWS_EC2_METADATA_DISABLED") != NULL;
    struct fx f;
    fx_init(&f, disabled);
    const char *k;
    json_t *v;
    json_object_foreach(env, k, v)
    {
        const char *s = json_string_value(v);
        if (strcmp(k, "AWS_PROFILE") == 0 || strcmp(k, "AWS_EC2_METADATA_DISABLED") == 0 ||
            (sc->no_home && strcmp(k, "HOME") == 0))
            continue;
        /* HOME too: a case's ~/.aws/config without credentials must not stop the chain. */
        if (strcmp(k, "HOME") == 0 || strcmp(k, "AWS_WEB_IDENTITY_TOKEN_FILE") == 0 ||
            strcmp(k, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") == 0)
            env_add(&f, "%s=%s/fs%s", k, dir, s); /* the case's fs/ is its root */
        else if (strcmp(k, "AWS_CONTAINER_CREDENTIALS_FULL_URI") == 0 &&
                 strncmp(s, "http://169.254.170.23/", 22) == 0)
            env_add(&f, "%s=http://127.0.0.1:%d/%s", k, sin_.http, s + 22);
        else
            env_add(&f, "%s=%s", k, s);
    }
    if (sc->role_arn != NULL) {
        env_add(&f, "AWS_ROLE_ARN=%s", sc->role_arn);
        env_add(&f, "AWS_WEB_IDENTITY_TOKEN_FILE=%s/fs/token.jwt", dir);
    }
    snprintf(path, sizeof path, "%s/http-traffic.json", dir);
    if (access(path, R_OK) == 0)
        standin_replay(dir);
    assert_int_equal(fx_provider(&f), 0);
    struct got *g = get_one(&f);
    json_t *ok = json_object_get(json_object_get(tc, "result"), "Ok");
    if (sc->error_contains == NULL) {
        assert_non_null(ok);
        if (g->rc != 0)
            fail_msg("%s: %s", sc->name, g->why);
        assert_string_equal(g->akid, json_string_value(json_object_get(ok, "access_key_id")));
        assert_string_equal(g->secret, json_string_value(json_object_get(ok, "secret_access_key")));
        assert_string_equal(g->token, json_string_value(json_object_get(ok, "session_token")));
        assert_int_equal(g->expires_ms / 1000, json_integer_value(json_object_get(ok, "expiry")));
        assert_int_equal(g->expires_ms % 1000, 0);
    } else {
        assert_null(ok);
        assert_true(g->rc < 0);
        if (strcasestr(g->why, sc->error_contains) == NULL)
            fail_msg("%s: '%s' does not say '%s'", sc->name, g->why, sc->error_contains);
    }
    json_t *log = standin_log_clean();
    if (strcmp(sc->name, "eks_pod_identity_credentials") == 0) {
        /* the token file's content is the Authorization header */
        assert_string_equal(req_header(log, 0, "authorization"), "sometoken");
    }
    if (strcmp(sc->name, "web_identity_token_env") == 0) {
        const char *body = req_field(log, 0, "body");
        assert_non_null(strstr(body, "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&"));
        assert_non_null(
            strstr(body, "&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Ftest-role&"));
        assert_non_null(strstr(body, "&RoleSessionName=test-session&"));
        assert_non_null(strstr(body, "&WebIdentityToken=eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9."));
        assert_string_equal(req_field(log, 0, "listener"), "https");
        assert_string_equal(req_field(log, 0, "path"), "/");
    }
    if (disabled)
        assert_int_equal(json_array_size(json_object_get(log, "requests")), 0);
    json_decref(log);
    fx_close(&f);
    json_decref(env);
    json_decref(tc);
}

static void test_smithy_recorded_cases(void **state)
{
    for (size_t i = 0; i < sizeof smithy_cases / sizeof smithy_cases[0]; i++)
        run_smithy_case(&smithy_cases[i]);
}

/* ------------------------------------------------------------------------------------------ */

static void test_env_keys_no_request(void **state)
{
    struct fx f;
    fx_init(&f, 0);
    env_add(&f, "AWS_ACCESS_KEY_ID=AKIDENV");
    env_add(&f, "AWS_SECRET_ACCESS_KEY=secretenv");
    env_add(&f, "AWS_SESSION_TOKEN=tokenenv");
    env_add(&f, "AWS_REGION=eu-central-1");
    env_add(&f, "AWS_CLUSTER_ID=prod-1");
    /* a web identity configured too: environment keys come first */
    env_add(&f, "AWS_ROLE_ARN=arn:aws:iam::1:role/x");
    env_add(&f, "AWS_WEB_IDENTITY_TOKEN_FILE=/nonexistent");
    assert_int_equal(fx_provider(&f), 0);
    struct got *g = get_one(&f);
    assert_int_equal(g->rc, 0);
    assert_string_equal(g->akid, "AKIDENV");
    assert_string_equal(g->secret, "secretenv");
    assert_string_equal(g->token, "tokenenv");
    assert_string_equal(g->source, "environment");
    assert_int_equal(g->expires_ms, 0);
    cmh_aws_creds_invalidate(f.p); /* static keys: nothing to refresh */
    g = get_one(&f);
    assert_int_equal(g->rc, 0);
    resolve(&f);
    assert_int_equal(f.res_rc, 0);
    assert_string_equal(f.region, "eu-central-1");
    assert_string_equal(f.cluster, "prod-1");
    /* with region and cluster id given, and keys in the environment: not one request */
    assert_int_equal(cmh_aws_provider_requests(f.p), 0);
    assert_int_equal(standin_count(), 0);
    fx_close(&f);
}

#define STS_OK_BODY                                                                                \
    "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n"    \
    "  <AssumeRoleWithWebIdentityResult>\n"                                                        \
    "    <Credentials>\n"                                                                          \
    "      <AccessKeyId>ASIAWEB%d</AccessKeyId>\n"                                                 \
    "      <SecretAccessKey>secretweb</SecretAccessKey>\n"                                         \
    "      <SessionToken>tokenweb</SessionToken>\n"                                                \
    "      <Expiration>{{EXP+3600}}</Expiration>\n"                                                \
    "    </Credentials>\n"                                                                         \
    "  </AssumeRoleWithWebIdentityResult>\n"                                                       \
    "</AssumeRoleWithWebIdentityResponse>\n"

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

static void test_web_identity_token_file_reread_each_refresh(void **state)
{
    struct fx f;
    fx_init(&f, 1);
    char tok[] = "/tmp/cmh-aws-test-token-XXXXXX";
    int fd = mkstemp(tok);
    assert_true(fd >= 0);
    close(fd);
    write_file(tok, "first.jwt.token\n");
    env_add(&f, "AWS_ROLE_ARN=arn:aws:iam::123456789012:role/cni-metrics");
    env_add(&f, "AWS_WEB_IDENTITY_TOKEN_FILE=%s", tok);
    env_add(&f, "AWS_REGION=us-west-2");
    char b1[1024], b2[1024];
    snprintf(b1, sizeof b1, STS_OK_BODY, 1);
    snprintf(b2, sizeof b2, STS_OK_BODY, 2);
    const struct ex script[] = {{"POST", "/", 200, b1, 0}, {"POST", "/", 200, b2, 0}, {0}};
    standin_script(script);
    assert_int_equal(fx_provider(&f), 0);
    struct got *g = get_one(&f);
    assert_int_equal(g->rc, 0);
    assert_string_equal(g->akid, "ASIAWEB1");
    assert_string_equal(g->source, "web-identity");
    int64_t left = g->expires_ms - now_ms();
    assert_true(left > 3500 * 1000 && left <= 3600 * 1000);
    /* cached: no request */
    g = get_one(&f);
    assert_string_equal(g->akid, "ASIAWEB1");
    assert_int_equal(standin_count(), 1);
    /* the kubelet rotates the token; ExpiredToken from a service makes the publisher invalidate */
    write_file(tok, "second.jwt.token");
    cmh_aws_creds_invalidate(f.p);
    g = get_one(&f);
    assert_int_equal(g->rc, 0);
    assert_string_equal(g->akid, "ASIAWEB2");
    json_t *log = standin_log_clean();
    assert_non_null(strstr(req_field(log, 0, "body"), "&WebIdentityToken=first.jwt.token"));
    assert_non_null(strstr(req_field(log, 1, "body"), "&WebIdentityToken=second.jwt.token"));
    assert_non_null(strstr(req_field(log, 1, "body"),
                           "&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fcni-metrics&"));
    assert_non_null(
        strstr(req_header(log, 1, "content-type"), "application/x-www-form-urlencoded"));
    json_decref(log);
    unlink(tok);
    fx_close(&f);
}

static void test_web_identity_sts_5xx_and_garbage(void **state)
{
    struct fx f;
    fx_init(&f, 1);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/web_identity_token_env/fs/token.jwt", CASES);
    env_add(&f, "AWS_ROLE_ARN=arn:aws:iam::123456789012:role/r");
    env_add(&f, "AWS_WEB_IDENTITY_TOKEN_FILE=%s", dir);
    const struct ex script[] = {
        {"POST", "/", 503, "<html>busy</html>", 0}, {"POST", "/", 200, "<Foo/>", 0}, {0}};
    standin_script(script);
    assert_int_equal(fx_provider(&f), 0);
    struct got *g = get_one(&f);
    assert_true(g->rc < 0);
    assert_non_null(strstr(g->why, "HTTP 503"));
    g = get_one(&f);
    assert_int_equal(g->rc, -EPROTO);
    json_decref(standin_log_clean());
    fx_close(&f);
}

static void test_container_token_env_localhost_and_https(void **state)
{
    struct fx f;
    fx_init(&f, 1);
    env_add(&f, "AWS_CONTAINER_CREDENTIALS_FULL_URI=http://localhost:%d/v1/credentials", sin_.http);
    env_add(&f, "AWS_CONTAINER_AUTHORIZATION_TOKEN=Bearer abc");
    const struct ex script[] = {
        {"GET", "/v1/credentials", 200,
         "{\"AccessKeyId\":\"ASIAC\",\"SecretAccessKey\":\"s\",\"Token\":\"t\","
         "\"Expiration\":\"{{EXP+200}}\"}",
         0},
        {"GET", "/v1/credentials", 400, "{\"code\":\"InvalidToken\",\"message\":\"bad token\"}", 0},
        {"GET", "/v1/credentials", 400, "{\"code\":\"InvalidToken\",\"message\":\"bad token\"}", 0},
        {0}};
    standin_script(script);
    assert_int_equal(fx_provider(&f), 0);
    struct got *g = get_one(&f);
    assert_int_equal(g->rc, 0);
    assert_string_equal(g->akid, "ASIAC");
    assert_string_equal(g->source, "container");
    /* 200 s left: refreshed; the refresh fails, but the cached credentials are still valid for
     * minutes: served, with a warning */
    g = get_one(&f);
    assert_int_equal(g->rc, 0);
    assert_string_equal(g->akid, "ASIAC");
    assert_non_null(strstr(fx_log_text(&f), "credential refresh failed"));
    assert_non_null(strstr(fx_log_text(&f), "InvalidToken"));
    /* invalidated (the service said ExpiredToken): never served again */
    cmh_aws_creds_invalidate(f.p);
    g = get_one(&f);
    assert_int_equal(g->rc, -EACCES);
    assert_non_null(strstr(g->why, "InvalidToken: bad token"));
    json_t *log = standin_log_clean();
    assert_string_equal(req_header(log, 0, "authorization"), "Bearer abc");
    assert_string_equal(req_header(log, 0, "accept"), "application/json");
    assert_string_equal(req_field(log, 0, "listener"), "http");
    json_decref(log);
    fx_close(&f);

    /* https: any host (here the stand-in's TLS listener, its CA trusted by curl_uv) */
    fx_init(&f, 1);
    env_add(&f, "AWS_CONTAINER_CREDENTIALS_FULL_URI=https://127.0.0.1:%d/creds", sin_.https);
    const struct ex tls[] = {{"GET", "/creds", 200,
                              "{\"AccessKeyId\":\"ASIATLS\",\"SecretAccessKey\":\"s\","
                              "\"Token\":\"t\",\"Expiration\":\"{{EXP+3600}}\"}",
                              0},
                             {0}};
    standin_script(tls);
    assert_int_equal(fx_provider(&f), 0);
    g = get_one(&f);
    assert_int_equal(g->rc, 0);
    assert_string_equal(g->akid, "ASIATLS");
    log = standin_log_clean();
    assert_string_equal(req_field(log, 0, "listener"), "https");
    assert_null(req_header(log, 0, "authorization"));
    json_decref(log);
    fx_close(&f);
}

static void test_sts_endpoint_from_aws_endpoint_url(void **state)
{
    struct fx f;
    fx_init(&f, 1);
    /* no AWS_ENDPOINT_URL_STS: the generic AWS_ENDPOINT_URL is used */
    free(f.env[1]);
    assert_true(asprintf(&f.env[1], "AWS_ENDPOINT_URL=https://127.0.0.1:%d/", sin_.https) > 0);
    char tok[1024], body[1024];
    snprintf(tok, sizeof tok, "%s/web_identity_token_env/fs/token.jwt", CASES);
    env_add(&f, "AWS_ROLE_ARN=arn:aws:iam::123456789012:role/r");
    env_add(&f, "AWS_WEB_IDENTITY_TOKEN_FILE=%s", tok);
    snprintf(body, sizeof body, STS_OK_BODY, 7);
    const struct ex script[] = {{"POST", "/", 200, body, 0}, {0}};
    standin_script(script);
    assert_int_equal(fx_provider(&f), 0);
    struct got *g = get_one(&f);
    assert_int_equal(g->rc, 0);
    assert_string_equal(g->akid, "ASIAWEB7");
    json_t *log = standin_log_clean();
    /* the session name defaults to cni-metrics-helper-<ms> */
    assert_non_null(strstr(req_field(log, 0, "body"), "&RoleSessionName=cni-metrics-helper-"));
    json_decref(log);
    fx_close(&f);
}

static void test_container_host_not_allowed_refused(void **state)
{
    static const char *const refused[] = {"http://192.0.2.10/creds",
                                          "http://example.com/creds",
                                          "http://169.254.170.3/v1",
                                          "http://[fd00:ec2::24]/v1",
                                          "ftp://127.0.0.1/x",
                                          "/credentials",
                                          "http:///x"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        struct fx f;
        fx_init(&f, 1);
        env_add(&f, "AWS_CONTAINER_CREDENTIALS_FULL_URI=%s", refused[i]);
        if (fx_provider(&f) != -EPERM)
            fail_msg("%s was not refused", refused[i]);
        assert_null(f.p);
        assert_non_null(strstr(fx_log_text(&f), "container credentials endpoint refused"));
        fx_close(&f);
    }
    static const char *const allowed[] = {
        "http://127.0.0.1:1/x",          "http://127.3.4.5/x",
        "http://169.254.170.2/v2/c",     "http://169.254.170.23/v1/credentials",
        "http://[fd00:ec2::23]/v1/cred", "http://[::1]:8080/c",
        "https://mypersonalsite:8080/c", "http://LOCALHOST:8080/credentials"};
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++) {
        struct fx f;
        fx_init(&f, 1);
        env_add(&f, "AWS_CONTAINER_CREDENTIALS_FULL_URI=%s", allowed[i]);
        if (fx_provider(&f) != 0)
            fail_msg("%s was refused", allowed[i]);
        fx_close(&f);
    }
    assert_int_equal(standin_count(), 0);
}

static void test_imds_token_timeout_named_hop_limit(void **state)
{
    struct fx f;
    fx_init(&f, 0);
    f.opts.imds_timeout_ms = 300;
    const struct ex script[] = {{"PUT", "/latest/api/token", 0, "", 6}, {0}};
    standin_script(script);
    assert_int_equal(fx_provider(&f), 0);
    uint64_t t0 = uv_hrtime();
    struct got *g = get_one(&f);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_int_equal(g->rc, -ETIMEDOUT);
    assert_non_null(strstr(g->why, "hop limit"));
    assert_true(ms >= 290 && ms < 4000); /* our timer, not the 6 s stall or curl_uv's 8 s */
    const char *text = fx_log_text(&f);
    assert_non_null(strstr(text, "reason=imds-hop-limit"));
    assert_non_null(strstr(text, "http-put-response-hop-limit 2"));
    /* exactly one PUT (a timeout is not retried), and no IMDSv1 fallback GET */
    assert_int_equal(standin_count(), 1);
    fx_close(&f);
}

static void test_imds_disabled_no_request(void **state)
{
    struct fx f;
    fx_init(&f, 1);
    assert_int_equal(fx_provider(&f), 0);
    struct got *g = get_one(&f);
    assert_int_equal(g->rc, -ENOENT);
    assert_non_null(strstr(g->why, "AWS_EC2_METADATA_DISABLED"));
    resolve(&f);
    assert_int_equal(f.res_rc, -ENOENT);
    assert_non_null(strstr(f.res_why, "set AWS_REGION"));
    assert_int_equal(standin_count(), 0);
    assert_int_equal(cmh_aws_provider_requests(f.p), 0);
    fx_close(&f);
}

#define IMDS_CREDS(exp)                                                                            \
    "{\n  \"Code\" : \"Success\",\n  \"Type\" : \"AWS-HMAC\",\n  \"AccessKeyId\" : \"ASIA" exp     \
    "\",\n  \"SecretAccessKey\" : \"s\",\n  \"Token\" : \"t\",\n  \"Expiration\" : \"{{EXP+" exp   \
    "}}\"\n}"

static void test_refresh_5_minutes_before_expiry(void **state)
{
    struct fx f;
    fx_init(&f, 0);
    const char *list = "/latest/meta-data/iam/security-credentials/";
    const char *role = "/latest/meta-data/iam/security-credentials/node-role";
    const struct ex script[] = {
        {"PUT", "/latest/api/token", 200, "tok", 0}, {"GET", list, 200, "node-role", 0},
        {"GET", role, 200, IMDS_CREDS("400"), 0},    {"GET", list, 200, "node-role", 0},
        {"GET", role, 200, IMDS_CREDS("290"), 0},    {"GET", list, 200, "node-role", 0},
        {"GET", role, 200, IMDS_CREDS("3600"), 0},   {0}};
    standin_script(script);
    assert_int_equal(fx_provider(&f), 0);
    assert_string_equal(get_one(&f)->akid, "ASIA400");
    /* 400 s left (> 5 min): served from the cache */
    assert_string_equal(get_one(&f)->akid, "ASIA400");
    assert_int_equal(cmh_aws_provider_requests(f.p), 3);
    cmh_aws_creds_invalidate(f.p);
    assert_string_equal(get_one(&f)->akid, "ASIA290");
    /* 290 s left (< 5 min): refreshed; the IMDS session token is reused */
    assert_string_equal(get_one(&f)->akid, "ASIA3600");
    assert_string_equal(get_one(&f)->akid, "ASIA3600");
    assert_int_equal(cmh_aws_provider_requests(f.p), 7);
    json_t *log = standin_log_clean();
    for (size_t i = 1; i < 7; i++)
        assert_string_equal(req_header(log, i, "x-aws-ec2-metadata-token"), "tok");
    assert_string_equal(req_header(log, 0, "x-aws-ec2-metadata-token-ttl-seconds"), "21600");
    json_decref(log);
    fx_close(&f);
}

static void test_imds_401_takes_a_new_token_next_time(void **state)
{
    struct fx f;
    fx_init(&f, 0);
    const char *list = "/latest/meta-data/iam/security-credentials/";
    const struct ex script[] = {
        {"PUT", "/latest/api/token", 200, "tok1", 0},
        {"GET", list, 401, "", 0},
        {"PUT", "/latest/api/token", 200, "tok2", 0},
        {"GET", list, 200, "r", 0},
        {"GET", "/latest/meta-data/iam/security-credentials/r", 200, IMDS_CREDS("3600"), 0},
        {0}};
    standin_script(script);
    assert_int_equal(fx_provider(&f), 0);
    struct got *g = get_one(&f);
    assert_int_equal(g->rc, -EIO);
    assert_non_null(strstr(g->why, "HTTP 401"));
    g = get_one(&f);
    assert_int_equal(g->rc, 0);
    json_t *log = standin_log_clean();
    assert_string_equal(req_header(log, 1, "x-aws-ec2-metadata-token"), "tok1");
    assert_string_equal(req_header(log, 3, "x-aws-ec2-metadata-token"), "tok2");
    assert_string_equal(req_header(log, 4, "x-aws-ec2-metadata-token"), "tok2");
    json_decref(log);
    fx_close(&f);
}

static void test_concurrent_gets_share_one_refresh(void **state)
{
    struct fx f;
    fx_init(&f, 0);
    const struct ex script[] = {
        {"PUT", "/latest/api/token", 200, "tok", 0},
        {"GET", "/latest/meta-data/iam/security-credentials/", 200, "r\n", 0},
        {"GET", "/latest/meta-data/iam/security-credentials/r", 200, IMDS_CREDS("3600"), 0},
        {0}};
    standin_script(script);
    assert_int_equal(fx_provider(&f), 0);
    for (int i = 0; i < 6; i++)
        get(&f);
    assert_int_equal(f.ndone, 0);
    run_until(&f, 6);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(f.got[i].rc, 0);
        assert_string_equal(f.got[i].akid, "ASIA3600");
        assert_string_equal(f.got[i].source, "imds");
    }
    assert_int_equal(cmh_aws_provider_requests(f.p), 3);
    json_decref(standin_log_clean());
    fx_close(&f);
}

static void test_region_and_cluster_sources(void **state)
{
    /* AWS_REGION wins over AWS_DEFAULT_REGION; both given: no request, IMDS creds or not */
    struct fx f;
    fx_init(&f, 0);
    env_add(&f, "AWS_REGION=eu-west-1");
    env_add(&f, "AWS_DEFAULT_REGION=us-west-2");
    env_add(&f, "AWS_CLUSTER_ID=blue");
    assert_int_equal(fx_provider(&f), 0);
    resolve(&f);
    assert_int_equal(f.res_rc, 0);
    assert_string_equal(f.region, "eu-west-1");
    assert_string_equal(f.cluster, "blue");
    resolve(&f); /* cached */
    assert_int_equal(standin_count(), 0);
    fx_close(&f);

    /* AWS_DEFAULT_REGION alone; the options (the config table) win over the environment */
    fx_init(&f, 0);
    env_add(&f, "AWS_DEFAULT_REGION=us-west-2");
    env_add(&f, "AWS_CLUSTER_ID=ignored");
    f.opts.cluster_id = "from-config";
    assert_int_equal(fx_provider(&f), 0);
    resolve(&f);
    assert_string_equal(f.region, "us-west-2");
    assert_string_equal(f.cluster, "from-config");
    assert_int_equal(standin_count(), 0);
    fx_close(&f);

    /* no AWS_CLUSTER_ID: the region from IMDS (the AEMM tree), the default cluster id, and a
     * warning naming AWS_CLUSTER_ID */
    fx_init(&f, 0);
    json_decref(standin(json_pack("{s:s}", "cmd", "aemm")));
    assert_int_equal(fx_provider(&f), 0);
    resolve(&f);
    assert_int_equal(f.res_rc, 0);
    assert_string_equal(f.region, "us-east-1"); /* AEMM's placement/region */
    assert_string_equal(f.cluster, "k8s-cluster");
    assert_int_equal(standin_count(), 2); /* token, region */
    const char *text = fx_log_text(&f);
    assert_non_null(strstr(text, "level=warn"));
    assert_non_null(strstr(text, "set AWS_CLUSTER_ID"));
    fx_close(&f);

    /* region given, no cluster id: the default cluster id, region untouched, IMDS not asked */
    fx_init(&f, 0);
    env_add(&f, "AWS_REGION=ap-south-1");
    assert_int_equal(fx_provider(&f), 0);
    resolve(&f);
    assert_int_equal(f.res_rc, 0);
    assert_string_equal(f.region, "ap-south-1");
    assert_string_equal(f.cluster, "k8s-cluster");
    assert_int_equal(standin_count(), 0);
    fx_close(&f);

    /* IMDS AEMM credentials too (role baskinc-role), with the real IMDSv2 token check */
    fx_init(&f, 0);
    json_decref(standin(json_pack("{s:s}", "cmd", "aemm")));
    assert_int_equal(fx_provider(&f), 0);
    struct got *g = get_one(&f);
    if (g->rc != 0)
        fail_msg("%s", g->why);
    FILE *fp = fopen(CMH_DATA_DIR "/aws/amazon-ec2-metadata-mock/extracted/"
                                  "latest_meta-data_iam_security-credentials_baskinc-role.json",
                     "r");
    assert_non_null(fp);
    json_t *want = json_loadf(fp, 0, NULL);
    fclose(fp);
    assert_non_null(want);
    assert_string_equal(g->akid, json_string_value(json_object_get(want, "AccessKeyId")));
    assert_string_equal(g->token, json_string_value(json_object_get(want, "Token")));
    json_decref(want);
    fx_close(&f);
}

static void test_free_cancels_in_flight(void **state)
{
    struct fx f;
    fx_init(&f, 0);
    const struct ex script[] = {{"PUT", "/latest/api/token", 0, "", 2}, {0}};
    standin_script(script);
    assert_int_equal(fx_provider(&f), 0);
    get(&f);
    get(&f);
    for (int i = 0; i < 5 && standin_count() == 0; i++)
        uv_run(&f.loop, UV_RUN_NOWAIT), usleep(50000);
    cmh_aws_provider_close(f.p, NULL, NULL);
    f.p = NULL;
    assert_int_equal(f.ndone, 2);
    assert_int_equal(f.got[0].rc, -ECANCELED);
    assert_int_equal(f.got[1].rc, -ECANCELED);
    /* the stalled PUT was cancelled by the free itself, not left for curl_uv's close */
    assert_null(f.curl.inflight);
    assert_int_equal(f.curl.stats.errors[CMH_CURL_ERR_CANCELLED], 1);
    fx_close(&f);
}

/* ------------------------------------------------------------------------------------------ */
/* The pure parsers, against the recorded bodies and the expected results of the cases. */

static char *slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    static char buf[1 << 16];
    *len = fread(buf, 1, sizeof buf - 1, fp);
    buf[*len] = '\0';
    fclose(fp);
    return buf;
}

static void test_parsers_against_recorded_bodies(void **state)
{
    struct cmh_aws_creds_doc d;
    size_t len;
    char *b = slurp(BODIES "/index.json", &len);
    json_t *idx = json_loads(b, 0, NULL);
    assert_non_null(idx);
    int xml = 0, js = 0;
    size_t i;
    json_t *e;
    assert_true(json_is_array(idx));
    json_array_foreach(idx, i, e)
    {
        const char *file = json_string_value(json_object_get(e, "response_body_file"));
        if (file == NULL)
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", BODIES, file);
        b = slurp(path, &len);
        if (strstr(b, "<AssumeRoleWithWebIdentityResponse") != NULL ||
            strstr(b, "<AssumeRoleResponse") != NULL) {
            assert_int_equal(cmh_aws_creds_parse_sts_xml(b, len, &d), 0);
            assert_non_null(d.access_key_id);
            assert_true(d.expires_ms > 1600000000000LL);
            cmh_aws_creds_doc_clear(&d);
            xml++;
        } else if (strstr(b, "<ErrorResponse") != NULL) {
            assert_int_equal(cmh_aws_creds_parse_sts_xml(b, len, &d), 0);
            assert_string_equal(d.error_code, "InvalidIdentityToken");
            cmh_aws_creds_doc_clear(&d);
            xml++;
        } else if (strstr(b, "\"AccessKeyId\"") != NULL) {
            assert_int_equal(cmh_aws_creds_parse_json(b, len, &d), 0);
            assert_non_null(d.access_key_id);
            cmh_aws_creds_doc_clear(&d);
            js++;
        } else if (len > 0) {
            /* role names, tokens, XHTML 404 pages: neither parser accepts them */
            assert_int_equal(cmh_aws_creds_parse_json(b, len, &d), -EPROTO);
            assert_int_equal(cmh_aws_creds_parse_sts_xml(b, len, &d), -EPROTO);
        }
    }
    json_decref(idx);
    assert_true(xml >= 3);
    assert_true(js >= 5);

    static const char *const bad_xml[] = {
        /* a DTD (entity expansion) */
        "<!DOCTYPE x [<!ENTITY a \"b\">]><AssumeRoleWithWebIdentityResponse/>",
        /* a field twice */
        "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>"
        "<AccessKeyId>A</AccessKeyId><AccessKeyId>B</AccessKeyId><SecretAccessKey>s"
        "</SecretAccessKey><SessionToken>t</SessionToken><Expiration>2021-08-16T20:52:53Z"
        "</Expiration></Credentials></AssumeRoleWithWebIdentityResult>"
        "</AssumeRoleWithWebIdentityResponse>",
        /* credentials at the wrong place */
        "<AssumeRoleWithWebIdentityResponse><Credentials><AccessKeyId>A</AccessKeyId>"
        "<SecretAccessKey>s</SecretAccessKey><SessionToken>t</SessionToken><Expiration>"
        "2021-08-16T20:52:53Z</Expiration></Credentials></AssumeRoleWithWebIdentityResponse>",
        /* no expiration */
        "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>"
        "<AccessKeyId>A</AccessKeyId><SecretAccessKey>s</SecretAccessKey><SessionToken>t"
        "</SessionToken></Credentials></AssumeRoleWithWebIdentityResult>"
        "</AssumeRoleWithWebIdentityResponse>",
        /* markup inside a field */
        "<ErrorResponse><Error><Code>X<b/></Code></Error></ErrorResponse>",
        /* not closed */
        "<ErrorResponse><Error><Code>X</Code></Error>",
    };
    for (i = 0; i < sizeof bad_xml / sizeof bad_xml[0]; i++)
        if (cmh_aws_creds_parse_sts_xml(bad_xml[i], strlen(bad_xml[i]), &d) != -EPROTO)
            fail_msg("accepted: %s", bad_xml[i]);

    static const char *const bad_json[] = {
        "{\"AccessKeyId\":\"A\",\"AccessKeyId\":\"B\",\"SecretAccessKey\":\"s\"}",
        "{\"AccessKeyId\":1,\"SecretAccessKey\":\"s\"}",
        "{\"AccessKeyId\":\"A\",\"SecretAccessKey\":\"s\",\"Expiration\":\"tomorrow\"}",
        "{\"AccessKeyId\":\"A\"}",
        "[]",
        "{\"AccessKeyId\":\"A\\nB\",\"SecretAccessKey\":\"s\"}",
    };
    for (i = 0; i < sizeof bad_json / sizeof bad_json[0]; i++)
        if (cmh_aws_creds_parse_json(bad_json[i], strlen(bad_json[i]), &d) != -EPROTO)
            fail_msg("accepted: %s", bad_json[i]);
    const char *err = "{\"Code\":\"AssumeRoleUnauthorizedAccess\",\"Message\":\"no\"}";
    assert_int_equal(cmh_aws_creds_parse_json(err, strlen(err), &d), 0);
    assert_string_equal(d.error_code, "AssumeRoleUnauthorizedAccess");
    cmh_aws_creds_doc_clear(&d);
}

static void test_time_parser_agrees_with_timegm(void **state)
{
    int64_t ms;
    assert_int_equal(cmh_aws_parse_time("2021-09-21T04:16:53Z", &ms), 0);
    assert_int_equal(ms, 1632197813000LL); /* imds_default_chain_success's expected expiry */
    assert_int_equal(cmh_aws_parse_time("2009-02-13T23:31:30Z", &ms), 0);
    assert_int_equal(ms, 1234567890000LL);
    assert_int_equal(cmh_aws_parse_time("2009-02-13T23:31:30.25Z", &ms), 0);
    assert_int_equal(ms, 1234567890250LL);
    assert_int_equal(cmh_aws_parse_time("2009-02-14T01:31:30+02:00", &ms), 0);
    assert_int_equal(ms, 1234567890000LL);
    static const char *const bad[] = {"",
                                      "2021-02-29T00:00:00Z",
                                      "2021-13-01T00:00:00Z",
                                      "2021-01-01T24:00:00Z",
                                      "2021-01-01 00:00:00Z",
                                      "2021-01-01T00:00:00",
                                      "2021-01-01T00:00:00Zjunk",
                                      "2021-01-01T00:00:00.Z",
                                      "+021-01-01T00:00:00Z"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(cmh_aws_parse_time(bad[i], &ms), -EINVAL);
    /* 20000 random instants between 1970 and 2400 against glibc's timegm */
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        time_t t = (time_t)(x % 13569465600ULL);
        struct tm tm;
        gmtime_r(&t, &tm);
        char s[64];
        strftime(s, sizeof s, "%Y-%m-%dT%H:%M:%SZ", &tm);
        assert_int_equal(cmh_aws_parse_time(s, &ms), 0);
        assert_int_equal(ms, (int64_t)timegm(&tm) * 1000);
    }
}

#ifdef CMH_FAULT_INJECT
#include "cmh/core/alloc_int.h"

/* The nth allocation fails, for every n until a run makes no failing allocation: each run ends
 * in an error or in success, never a crash or a leak (ASan). */
static void test_allocation_failures(void **state)
{
    static const struct ex imds[] = {
        {"PUT", "/latest/api/token", 200, "tok", 0},
        {"GET", "/latest/meta-data/iam/security-credentials/", 200, "r", 0},
        {"GET", "/latest/meta-data/iam/security-credentials/r", 200, IMDS_CREDS("3600"), 0},
        {0}};
    char sts[1024];
    snprintf(sts, sizeof sts, STS_OK_BODY, 1);
    const struct ex web[] = {{"POST", "/", 200, sts, 0}, {0}};
    char tokfile[1024];
    snprintf(tokfile, sizeof tokfile, "%s/web_identity_token_env/fs/token.jwt", CASES);
    for (int flow = 0; flow < 3; flow++) {
        unsigned long n;
        for (n = 1; n < 10000; n++) {
            struct fx f;
            fx_init(&f, flow == 1);
            if (flow == 0)
                standin_script(imds);
            else if (flow == 1)
                standin_script(web);
            else
                json_decref(standin(json_pack("{s:s}", "cmd", "aemm")));
            if (flow == 1) {
                env_add(&f, "AWS_ROLE_ARN=arn:aws:iam::1:role/r");
                env_add(&f, "AWS_WEB_IDENTITY_TOKEN_FILE=%s", tokfile);
            }
            cmh_alloc_fail_at(n);
            int rc = fx_provider(&f);
            if (rc == 0) {
                f.in_call = 1;
                rc = flow == 2 ? cmh_aws_resolve(f.p, on_resolved, &f)
                               : cmh_aws_creds_get(f.p, on_creds, &f);
                f.in_call = 0;
                if (rc == 0 && flow == 2)
                    while (f.res_n == 0)
                        uv_run(&f.loop, UV_RUN_ONCE);
                else if (rc == 0)
                    run_until(&f, 1);
            }
            int failed_none = cmh_alloc_count() < n;
            cmh_alloc_fail_at(0);
            if (rc != 0)
                assert_int_equal(rc, -ENOMEM);
            fx_close(&f);
            if (failed_none) {
                assert_int_equal(rc, 0);
                break;
            }
        }
        assert_true(n > 5 && n < 10000);
    }
}
#endif

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_time_parser_agrees_with_timegm),
        cmocka_unit_test(test_parsers_against_recorded_bodies),
        cmocka_unit_test(test_smithy_recorded_cases),
        cmocka_unit_test(test_env_keys_no_request),
        cmocka_unit_test(test_web_identity_token_file_reread_each_refresh),
        cmocka_unit_test(test_web_identity_sts_5xx_and_garbage),
        cmocka_unit_test(test_container_token_env_localhost_and_https),
        cmocka_unit_test(test_container_host_not_allowed_refused),
        cmocka_unit_test(test_sts_endpoint_from_aws_endpoint_url),
        cmocka_unit_test(test_imds_token_timeout_named_hop_limit),
        cmocka_unit_test(test_imds_disabled_no_request),
        cmocka_unit_test(test_refresh_5_minutes_before_expiry),
        cmocka_unit_test(test_imds_401_takes_a_new_token_next_time),
        cmocka_unit_test(test_concurrent_gets_share_one_refresh),
        cmocka_unit_test(test_region_and_cluster_sources),
        cmocka_unit_test(test_free_cancels_in_flight),
#ifdef CMH_FAULT_INJECT
        cmocka_unit_test(test_allocation_failures),
#endif
    };
    return cmocka_run_group_tests_name("aws_creds", tests, standin_start, standin_stop);
}
