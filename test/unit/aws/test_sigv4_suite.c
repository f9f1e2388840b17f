/* SigV4 against aws-c-auth's signing test suite (test/data/sigv4/, 38 cases): for header
 * and query signing, the canonical request, string to sign, signature and signed request must be
 * byte-identical to the suite's. Plus the hash/HMAC helpers against published vectors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/aws/sigv4.h"
#include "cmh/core/buf.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SUITE_CASES 38

static char *read_file(const char *dir, const char *name, size_t *len_out)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len - 1 == 0) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    fclose(f);
    buf[len] = '\0';
    if (len_out != NULL)
        *len_out = len;
    return buf;
}

static char *suite_dir(void)
{
    const char *data = getenv("CMH_DATA_DIR");
    if (data == NULL || *data == '\0')
        data = CMH_DATA_DIR;
    size_t n = strlen(data) + 32;
    char *d = malloc(n);
    assert_non_null(d);
    snprintf(d, n, "%s/sigv4", data);
    return d;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into a new string (the suite's queries are either raw or encoded). */
static char *pct_decode(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    assert_non_null(d);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            d[o++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else {
            d[o++] = s[i];
        }
    }
    d[o] = '\0';
    return d;
}

/* request.txt, parsed: the request line's parts, headers with folded lines joined by '\n', the
 * raw header block (to rebuild the signed request) and the body. */
struct parsed {
    char *method, *target, *path, *version;
    struct cmh_sigv4_kv query[16];
    size_t nquery;
    struct cmh_sigv4_kv headers[16];
    size_t nheaders;
    char *raw_headers; /* every header line, each ending "\n" */
    const char *body;
    size_t body_len;
    char *text;
};

static void parse_request(char *text, size_t len, struct parsed *r)
{
    memset(r, 0, sizeof *r);
    r->text = text;
    char *eol = strchr(text, '\n');
    assert_non_null(eol);
    *eol = '\0';
    /* The target may hold spaces ("/example space/"): method to the first, version from the last.
     */
    char *sp1 = strchr(text, ' '), *sp2 = strrchr(text, ' ');
    assert_true(sp1 != NULL && sp2 != NULL && sp1 < sp2);
    r->method = strndup(text, (size_t)(sp1 - text));
    r->target = strndup(sp1 + 1, (size_t)(sp2 - sp1 - 1));
    r->version = strdup(sp2 + 1);
    char *qm = strchr(r->target, '?');
    r->path = qm ? strndup(r->target, (size_t)(qm - r->target)) : strdup(r->target);
    if (qm != NULL && qm[1] != '\0') {
        char *q = qm + 1;
        while (*q) {
            char *amp = strchr(q, '&');
            size_t pl = amp ? (size_t)(amp - q) : strlen(q);
            char *eq = memchr(q, '=', pl);
            size_t kl = eq ? (size_t)(eq - q) : pl;
            assert_true(r->nquery < 16);
            r->query[r->nquery].name = pct_decode(q, kl);
            r->query[r->nquery].value = eq ? pct_decode(eq + 1, pl - kl - 1) : strdup("");
            r->nquery++;
            q += pl + (amp != NULL);
        }
    }
    char *p = eol + 1, *end = text + len;
    size_t raw_start = (size_t)(p - text);
    char *value_buf[16] = {0};
    while (p < end && *p != '\n') {
        char *e = memchr(p, '\n', (size_t)(end - p));
        size_t ll = e ? (size_t)(e - p) : (size_t)(end - p);
        if (*p == ' ' || *p == '\t') {
            /* Obsolete line folding: continues the previous header's value. */
            assert_true(r->nheaders > 0);
            char *prev = value_buf[r->nheaders - 1];
            size_t pl = strlen(prev);
            prev = realloc(prev, pl + 1 + ll + 1);
            assert_non_null(prev);
            prev[pl] = '\n';
            memcpy(prev + pl + 1, p, ll);
            prev[pl + 1 + ll] = '\0';
            value_buf[r->nheaders - 1] = prev;
            r->headers[r->nheaders - 1].value = prev;
        } else {
            char *colon = memchr(p, ':', ll);
            assert_non_null(colon);
            assert_true(r->nheaders < 16);
            r->headers[r->nheaders].name = strndup(p, (size_t)(colon - p));
            value_buf[r->nheaders] = strndup(colon + 1, ll - (size_t)(colon - p) - 1);
            r->headers[r->nheaders].value = value_buf[r->nheaders];
            r->nheaders++;
        }
        p += ll + (e != NULL);
    }
    r->raw_headers = strndup(text + raw_start, (size_t)(p - text) - raw_start);
    if (p < end && *p == '\n')
        p++;
    r->body = p;
    r->body_len = (size_t)(end - p);
}

static void free_parsed(struct parsed *r)
{
    free(r->method);
    free(r->target);
    free(r->path);
    free(r->version);
    for (size_t i = 0; i < r->nquery; i++) {
        free((char *)r->query[i].name);
        free((char *)r->query[i].value);
    }
    for (size_t i = 0; i < r->nheaders; i++) {
        free((char *)r->headers[i].name);
        free((char *)r->headers[i].value);
    }
    free(r->raw_headers);
    free(r->text);
}

static void assert_file_equals(const char *dir, const char *name, const char *got)
{
    char *want = read_file(dir, name, NULL);
    assert_non_null(want);
    if (strcmp(want, got) != 0)
        fail_msg("%s/%s differs\n--- want\n%s\n--- got\n%s\n", dir, name, want, got);
    free(want);
}

static void run_case(const char *dir, int query_mode)
{
    size_t len;
    char *ctx_text = read_file(dir, "context.json", NULL);
    char *req_text = read_file(dir, "request.txt", &len);
    assert_non_null(ctx_text);
    assert_non_null(req_text);
    json_error_t jerr;
    json_t *ctx = json_loads(ctx_text, 0, &jerr);
    assert_non_null(ctx);
    struct parsed r;
    parse_request(req_text, len, &r);

    json_t *creds = json_object_get(ctx, "credentials");
    struct cmh_sigv4_credentials c = {
        .access_key_id = json_string_value(json_object_get(creds, "access_key_id")),
        .secret_access_key = json_string_value(json_object_get(creds, "secret_access_key")),
        .session_token = json_string_value(json_object_get(creds, "token")),
    };
    struct tm tm = {0};
    const char *ts = json_string_value(json_object_get(ctx, "timestamp"));
    assert_non_null(ts);
    assert_non_null(strptime(ts, "%Y-%m-%dT%H:%M:%SZ", &tm));
    unsigned flags = 0;
    if (!json_is_true(json_object_get(ctx, "normalize")))
        flags |= CMH_SIGV4_NO_NORMALIZE;
    if (json_is_true(json_object_get(ctx, "omit_session_token")))
        flags |= CMH_SIGV4_OMIT_SESSION_TOKEN;
    if (json_is_true(json_object_get(ctx, "sign_body")))
        flags |= CMH_SIGV4_CONTENT_SHA256_HEADER;
    if (query_mode)
        flags |= CMH_SIGV4_QUERY;
    struct cmh_sigv4_request req = {
        .method = r.method,
        .path = r.path,
        .query = r.query,
        .nquery = r.nquery,
        .headers = r.headers,
        .nheaders = r.nheaders,
        .payload = r.body,
        .payload_len = r.body_len,
        .region = json_string_value(json_object_get(ctx, "region")),
        .service = json_string_value(json_object_get(ctx, "service")),
        .time_s = (int64_t)timegm(&tm),
        .creds = &c,
        .flags = flags,
        .expires_s = (uint32_t)json_integer_value(json_object_get(ctx, "expiration_in_seconds")),
    };
    struct cmh_sigv4_result out;
    assert_int_equal(cmh_sigv4_sign(&req, &out), 0);

    const char *pre = query_mode ? "query-" : "header-";
    char name[64];
    snprintf(name, sizeof name, "%scanonical-request.txt", pre);
    assert_file_equals(dir, name, out.canonical_request);
    snprintf(name, sizeof name, "%sstring-to-sign.txt", pre);
    assert_file_equals(dir, name, out.string_to_sign);
    snprintf(name, sizeof name, "%ssignature.txt", pre);
    assert_file_equals(dir, name, out.signature);

    /* The signed request: the original request with our additions, as the suite prints it. */
    size_t cap = len + 4096;
    char *signed_req = malloc(cap);
    assert_non_null(signed_req);
    int n;
    if (query_mode)
        n = snprintf(signed_req, cap, "%s %s%s%s %s\n%s", r.method, r.target,
                     strchr(r.target, '?') ? "&" : "?", out.query, r.version, r.raw_headers);
    else
        n = snprintf(signed_req, cap, "%s %s %s\n%s", r.method, r.target, r.version, r.raw_headers);
    assert_true(n > 0 && (size_t)n < cap);
    size_t o = (size_t)n;
    if (query_mode)
        assert_int_equal(out.nadd, 0);
    for (size_t i = 0; i < out.nadd; i++) {
        n = snprintf(signed_req + o, cap - o, "%s:%s\n", out.add[i].name, out.add[i].value);
        assert_true(n > 0 && (size_t)n < cap - o);
        o += (size_t)n;
    }
    assert_true(o + 1 + r.body_len < cap);
    signed_req[o++] = '\n';
    memcpy(signed_req + o, r.body, r.body_len);
    signed_req[o + r.body_len] = '\0';
    snprintf(name, sizeof name, "%ssigned-request.txt", pre);
    assert_file_equals(dir, name, signed_req);

    free(signed_req);
    cmh_sigv4_result_free(&out);
    free_parsed(&r);
    json_decref(ctx);
    free(ctx_text);
}

static void test_header_case(void **state)
{
    run_case(*state, 0);
}

static void test_query_case(void **state)
{
    run_case(*state, 1);
}

/* FIPS 180-2 / RFC 4231 vectors, so the helpers are checked independently of the suite. */
static void test_sha256_hmac_vectors(void **state)
{
    char hex[CMH_SHA256_HEX_LEN + 1];
    assert_int_equal(cmh_sigv4_sha256_hex("abc", 3, hex), 0);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_int_equal(cmh_sigv4_sha256_hex(NULL, 0, hex), 0);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    unsigned char mac[CMH_SHA256_LEN];
    const char *data = "what do ya want for nothing?";
    assert_int_equal(cmh_sigv4_hmac_sha256("Jefe", 4, data, strlen(data), mac), 0);
    static const unsigned char want[] = {0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e,
                                         0x6a, 0x04, 0x24, 0x26, 0x08, 0x95, 0x75, 0xc7,
                                         0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83,
                                         0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43};
    assert_memory_equal(mac, want, sizeof want);
}

static void test_uri_encode(void **state)
{
    char buf[64];
    assert_int_equal(cmh_pct_encode(buf, sizeof buf, "a b/c~_.-+=&\xe1\x88\xb4", 15, 0),
                     strlen("a%20b%2Fc~_.-%2B%3D%26%E1%88%B4"));
    assert_string_equal(buf, "a%20b%2Fc~_.-%2B%3D%26%E1%88%B4");
    cmh_pct_encode(buf, sizeof buf, "/a b/", 5, CMH_PCT_KEEP_SLASH);
    assert_string_equal(buf, "/a%20b/");
    /* Too small: the needed length comes back, the output is cut and terminated. */
    assert_int_equal(cmh_pct_encode(buf, 4, "a b", 3, 0), 5);
    assert_string_equal(buf, "a");
}

static void test_rejects_bad_requests(void **state)
{
    struct cmh_sigv4_credentials c = {"AKID", "SECRET", NULL};
    struct cmh_sigv4_kv host = {"Host", "example.com"};
    struct cmh_sigv4_kv with_auth[] = {{"Host", "example.com"}, {"Authorization", "x"}};
    struct cmh_sigv4_request req = {.method = "GET",
                                    .path = "/",
                                    .headers = &host,
                                    .nheaders = 1,
                                    .region = "us-east-1",
                                    .service = "sts",
                                    .time_s = 1440938160,
                                    .creds = &c};
    struct cmh_sigv4_result out;
    assert_int_equal(cmh_sigv4_sign(&req, &out), 0);
    cmh_sigv4_result_free(&out);

    struct cmh_sigv4_request bad = req;
    bad.nheaders = 0; /* no Host */
    assert_int_equal(cmh_sigv4_sign(&bad, &out), -EINVAL);
    cmh_sigv4_result_free(&out);
    bad = req;
    bad.headers = with_auth;
    bad.nheaders = 2;
    assert_int_equal(cmh_sigv4_sign(&bad, &out), -EINVAL);
    bad = req;
    bad.payload_hash = "ABC";
    assert_int_equal(cmh_sigv4_sign(&bad, &out), -EINVAL);
    bad = req;
    bad.region = "";
    assert_int_equal(cmh_sigv4_sign(&bad, &out), -EINVAL);
    bad = req;
    bad.flags = CMH_SIGV4_QUERY; /* expires_s 0 */
    assert_int_equal(cmh_sigv4_sign(&bad, &out), -EINVAL);
    /* A precomputed hash is used as given, e.g. the hash of a gzip'd body. */
    bad = req;
    bad.payload_hash = CMH_SIGV4_UNSIGNED_PAYLOAD;
    assert_int_equal(cmh_sigv4_sign(&bad, &out), 0);
    const char *tail = out.canonical_request + strlen(out.canonical_request) - 16;
    assert_string_equal(tail, "UNSIGNED-PAYLOAD");
    cmh_sigv4_result_free(&out);
}

static int is_case_dir(const struct dirent *e)
{
    return e->d_name[0] != '.' && strcmp(e->d_name, "LICENSE") != 0;
}

int main(void)
{
    char *dir = suite_dir();
    struct dirent **names = NULL;
    int n = scandir(dir, &names, is_case_dir, alphasort);
    if (n < 0) {
        fprintf(stderr, "cannot read %s: %s\n", dir, strerror(errno));
        return 1;
    }
    if (n != SUITE_CASES) {
        fprintf(stderr, "expected %d cases in %s, found %d\n", SUITE_CASES, dir, n);
        return 1;
    }
    size_t ntests = 3 + 2 * (size_t)n;
    struct CMUnitTest *tests = calloc(ntests, sizeof *tests);
    char **paths = calloc((size_t)n, sizeof *paths);
    char **labels = calloc(2 * (size_t)n, sizeof *labels);
    if (tests == NULL || paths == NULL || labels == NULL)
        return 1;
    tests[0] = (struct CMUnitTest)cmocka_unit_test(test_sha256_hmac_vectors);
    tests[1] = (struct CMUnitTest)cmocka_unit_test(test_uri_encode);
    tests[2] = (struct CMUnitTest)cmocka_unit_test(test_rejects_bad_requests);
    for (int i = 0; i < n; i++) {
        size_t pl = strlen(dir) + strlen(names[i]->d_name) + 2;
        paths[i] = malloc(pl);
        labels[2 * i] = malloc(pl + 16);
        labels[2 * i + 1] = malloc(pl + 16);
        if (paths[i] == NULL || labels[2 * i] == NULL || labels[2 * i + 1] == NULL)
            return 1;
        snprintf(paths[i], pl, "%s/%s", dir, names[i]->d_name);
        snprintf(labels[2 * i], pl + 16, "header/%s", names[i]->d_name);
        snprintf(labels[2 * i + 1], pl + 16, "query/%s", names[i]->d_name);
        tests[3 + 2 * i] =
            (struct CMUnitTest){labels[2 * i], test_header_case, NULL, NULL, paths[i]};
        tests[3 + 2 * i + 1] =
            (struct CMUnitTest){labels[2 * i + 1], test_query_case, NULL, NULL, paths[i]};
    }
    int rc = _cmocka_run_group_tests("sigv4_aws_c_auth_suite", tests, ntests, NULL, NULL);
    for (int i = 0; i < n; i++) {
        free(paths[i]);
        free(labels[2 * i]);
        free(labels[2 * i + 1]);
        free(names[i]);
    }
    free(names);
    free(paths);
    free(labels);
    free(tests);
    free(dir);
    return rc;
}
