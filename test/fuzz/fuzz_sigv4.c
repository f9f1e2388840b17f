/* Fuzzes the SigV4 signer with arbitrary requests. Input: first byte = flags (bits 0-4, enum
 * cmh_sigv4_flag) and a session token (bit 5), then lines:
 * method, path, then "?key=value" query lines, "Name:value" header lines (a line starting with a
 * space continues the previous header), an empty line, and the body. Checks: signing succeeds or
 * says -EINVAL, is deterministic, and no input can break the canonical request's structure
 * (encoded path and query, one line per signed header, normalised path without dot segments). */
#include "cmh/core/alloc.h"
#include "cmh/aws/sigv4.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_ITEMS 32

static int only(const char *s, size_t n, const char *extra)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '_' || c == '.' || c == '~' || c == '%' ||
                 (c != '\0' && strchr(extra, c) != NULL);
        if (!ok)
            return 0;
    }
    return 1;
}

static void check_structure(const struct cmh_sigv4_result *r, unsigned flags)
{
    const char *cr = r->canonical_request;
    const char *l1 = strchr(cr, '\n');
    if (l1 == NULL)
        abort();
    const char *l2 = strchr(l1 + 1, '\n');
    if (l2 == NULL)
        abort();
    const char *l3 = strchr(l2 + 1, '\n');
    if (l3 == NULL)
        abort();
    const char *path = l1 + 1;
    size_t pl = (size_t)(l2 - path);
    if (!(flags & CMH_SIGV4_PATH_NO_ENCODE) && !only(path, pl, "/"))
        abort();
    if (!only(l2 + 1, (size_t)(l3 - l2 - 1), "=&"))
        abort();
    if (!(flags & (CMH_SIGV4_NO_NORMALIZE | CMH_SIGV4_PATH_NO_ENCODE))) {
        /* Normalised: no empty, "." or ".." segment. */
        for (size_t i = 0; i + 1 < pl; i++)
            if (path[i] == '/' && path[i + 1] == '/')
                abort();
        for (size_t i = 0; i < pl; i++) {
            if (i > 0 && path[i - 1] != '/')
                continue;
            size_t e = i;
            while (e < pl && path[e] != '/')
                e++;
            if ((e - i == 1 && path[i] == '.') ||
                (e - i == 2 && path[i] == '.' && path[i + 1] == '.'))
                abort();
        }
    }
    /* Lines: method, path, query, one per signed header, "", signed headers, payload hash. */
    size_t nl = 0, semis = 0;
    for (const char *p = cr; *p; p++)
        nl += *p == '\n';
    for (const char *p = r->signed_headers; *p; p++)
        semis += *p == ';';
    if (nl != semis + 1 + 5)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned flags = data[0] & 0x1f;
    char *text = cmh_strndup((const char *)data + 1, size - 1);
    if (text == NULL)
        return 0;
    size_t len = strlen(text); /* a NUL ends the text: C strings cannot carry one */
    struct cmh_sigv4_kv query[MAX_ITEMS], headers[MAX_ITEMS + 1];
    char *folded[MAX_ITEMS] = {0};
    size_t nq = 0, nh = 0;
    char *lines[3] = {"GET", "/", NULL};
    char *p = text, *end = text + len, *body = end;
    size_t li = 0;
    while (p < end) {
        char *e = memchr(p, '\n', (size_t)(end - p));
        if (e != NULL)
            *e = '\0';
        if (li < 2) {
            lines[li++] = p;
        } else if (*p == '\0') {
            body = e != NULL ? e + 1 : end;
            break;
        } else if (*p == '?' && nq < MAX_ITEMS) {
            char *eq = strchr(p + 1, '=');
            if (eq != NULL)
                *eq = '\0';
            query[nq].name = p + 1;
            query[nq++].value = eq != NULL ? eq + 1 : "";
        } else if ((*p == ' ' || *p == '\t') && nh > 0 && folded[nh - 1] == NULL) {
            size_t a = strlen(headers[nh - 1].value), b = strlen(p);
            char *v = cmh_malloc(a + b + 2);
            if (v != NULL) {
                memcpy(v, headers[nh - 1].value, a);
                v[a] = '\n';
                memcpy(v + a + 1, p, b + 1);
                folded[nh - 1] = v;
                headers[nh - 1].value = v;
            }
        } else if (strchr(p, ':') != NULL && nh < MAX_ITEMS) {
            char *colon = strchr(p, ':');
            *colon = '\0';
            headers[nh].name = p;
            headers[nh++].value = colon + 1;
        }
        p = e != NULL ? e + 1 : end;
    }
    headers[nh].name = "Host";
    headers[nh++].value = "example.amazonaws.com";
    struct cmh_sigv4_credentials creds = {"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                                          (data[0] & 0x20) ? "token/+=" : NULL};
    struct cmh_sigv4_request req = {
        .method = lines[0],
        .path = lines[1],
        .query = query,
        .nquery = nq,
        .headers = headers,
        .nheaders = nh,
        .payload = body,
        .payload_len = (size_t)(end - body),
        .region = "us-east-1",
        .service = "monitoring",
        .time_s = 1440938160,
        .creds = &creds,
        .flags = flags,
        .expires_s = 3600,
    };
    struct cmh_sigv4_result a, b;
    int rc = cmh_sigv4_sign(&req, &a);
    if (rc != 0 && rc != -EINVAL && rc != -ENOMEM)
        abort();
    if (rc == 0) {
        check_structure(&a, req.flags);
        if (cmh_sigv4_sign(&req, &b) != 0 || strcmp(a.signature, b.signature) != 0 ||
            strcmp(a.canonical_request, b.canonical_request) != 0)
            abort();
        cmh_sigv4_result_free(&b);
    }
    cmh_sigv4_result_free(&a);
    for (size_t i = 0; i < MAX_ITEMS; i++)
        cmh_free(folded[i]);
    cmh_free(text);
    return 0;
}
