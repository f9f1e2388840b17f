/* Test helper for sigv4_botocore_diff.py: reads one request description per line (JSON) on stdin,
 * signs it with cmh_sigv4_sign and writes one JSON result per line on stdout.
 * Input: {"method","path","query":[[k,v]..],"headers":[[n,v]..],"body_hex","payload_hash"?,
 *         "region","service","time","akid","secret","token"?}
 * Output: {"authorization","amz_date","canonical_request","string_to_sign","add":[[n,v]..]}
 *         or {"error": <negative code>}. */
#include "cmh/aws/sigv4.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static int load_pairs(json_t *arr, struct cmh_sigv4_kv **out, size_t *n)
{
    size_t cnt = json_array_size(arr);
    *out = calloc(cnt ? cnt : 1, sizeof **out);
    if (*out == NULL)
        return -1;
    for (size_t i = 0; i < cnt; i++) {
        json_t *p = json_array_get(arr, i);
        (*out)[i].name = json_string_value(json_array_get(p, 0));
        (*out)[i].value = json_string_value(json_array_get(p, 1));
        if ((*out)[i].name == NULL || (*out)[i].value == NULL)
            return -1;
    }
    *n = cnt;
    return 0;
}

static json_t *sign_one(json_t *in)
{
    struct cmh_sigv4_kv *query = NULL, *headers = NULL;
    size_t nq = 0, nh = 0;
    unsigned char *body = NULL;
    json_t *res = NULL;
    if (load_pairs(json_object_get(in, "query"), &query, &nq) != 0 ||
        load_pairs(json_object_get(in, "headers"), &headers, &nh) != 0) {
        res = json_pack("{s:i}", "error", -1000);
        goto out;
    }
    const char *hex = json_string_value(json_object_get(in, "body_hex"));
    size_t hl = hex ? strlen(hex) : 0;
    body = malloc(hl / 2 + 1);
    if (body == NULL || hl % 2 != 0) {
        res = json_pack("{s:i}", "error", -1001);
        goto out;
    }
    for (size_t i = 0; i < hl / 2; i++)
        body[i] = (unsigned char)(hexval(hex[2 * i]) * 16 + hexval(hex[2 * i + 1]));
    struct cmh_sigv4_credentials creds = {
        .access_key_id = json_string_value(json_object_get(in, "akid")),
        .secret_access_key = json_string_value(json_object_get(in, "secret")),
        .session_token = json_string_value(json_object_get(in, "token")),
    };
    struct cmh_sigv4_request req = {
        .method = json_string_value(json_object_get(in, "method")),
        .path = json_string_value(json_object_get(in, "path")),
        .query = query,
        .nquery = nq,
        .headers = headers,
        .nheaders = nh,
        .payload = hl ? body : NULL,
        .payload_len = hl / 2,
        .payload_hash = json_string_value(json_object_get(in, "payload_hash")),
        .region = json_string_value(json_object_get(in, "region")),
        .service = json_string_value(json_object_get(in, "service")),
        .time_s = json_integer_value(json_object_get(in, "time")),
        .creds = &creds,
    };
    struct cmh_sigv4_result r;
    int rc = cmh_sigv4_sign(&req, &r);
    if (rc != 0) {
        res = json_pack("{s:i}", "error", rc);
        goto out;
    }
    json_t *add = json_array();
    for (size_t i = 0; add != NULL && i < r.nadd; i++)
        json_array_append_new(add, json_pack("[s,s]", r.add[i].name, r.add[i].value));
    res = json_pack("{s:s,s:s,s:s,s:s,s:o}", "authorization", r.authorization, "amz_date",
                    r.amz_date, "canonical_request", r.canonical_request, "string_to_sign",
                    r.string_to_sign, "add", add);
    cmh_sigv4_result_free(&r);
out:
    free(query);
    free(headers);
    free(body);
    return res;
}

int main(void)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int status = 0;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        json_error_t err;
        json_t *in = json_loadb(line, (size_t)n, 0, &err);
        json_t *out = in ? sign_one(in) : json_pack("{s:i}", "error", -1002);
        char *text = out ? json_dumps(out, JSON_COMPACT) : NULL;
        if (text == NULL) {
            status = 1;
            puts("{\"error\":-1003}");
        } else {
            puts(text);
        }
        free(text);
        json_decref(out);
        json_decref(in);
    }
    free(line);
    fflush(stdout);
    return status;
}
