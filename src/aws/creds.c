/* The AWS credential provider chain (see include/cmh/aws/aws_creds.h): its configuration, the
 * sources, the cache and its refresh, and the waiters the results go to.
 *
 * The chain is chosen once, at new(), from the environment, in the order of the AWS SDKs:
 * environment keys, the shared files' profile, web identity (IRSA), container credentials (ECS /
 * EKS Pod Identity), IMDSv2. The first source that is configured is the one used: when it fails
 * we report its error rather than fall through to the node's instance role, which would publish
 * under another identity. Results are always delivered from a 0 ms timer, never inside the call
 * that asked. */
#include "cmh/aws/aws_creds_int.h"

#include "cmh/aws/creds_parse.h"
#include "cmh/aws/endpoint.h"
#include "cmh/aws/ini.h"
#include "cmh/aws/sigv4.h"
#include "cmh/core/alloc.h"
#include "cmh/http/url.h"
#include "cmh/core/buf.h"
#include "cmh/core/container_of.h"
#include "cmh/core/log.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define REFRESH_AHEAD_MS (5 * 60 * 1000) /* refresh credentials this long before expiry */
#define STALE_GRACE_MS   (10 * 1000)     /* a failed refresh may serve creds valid this long */
#define IMDS_DEFAULT     "http://169.254.169.254"
#define IMDS_DEFAULT_V6  "http://[fd00:ec2::254]"
#define ECS_DEFAULT      "http://169.254.170.2"

static const char *const source_names[] = {"none", "environment", "web-identity", "container",
                                           "imds", "profile",     "assume-role"};

struct cmh_aws_waiter {
    struct cmh_aws_waiter *next;
    cmh_aws_creds_cb creds_cb;     /* a cmh_aws_creds_get, or */
    cmh_aws_resolve_cb resolve_cb; /* a cmh_aws_resolve */
    void *arg;
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Copies s without trailing '/' characters. */
static char *dup_base(const char *s)
{
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '/')
        n--;
    return cmh_strndup(s, n);
}

static int valid_region(const char *s)
{
    return cmh_aws_region_valid(s, strlen(s));
}

static int valid_token(const char *s)
{
    return cmh_aws_token_valid(s, strlen(s));
}

/* ---------------------------------------------------------------------------------------------
 * Credentials */

static void creds_take(struct cmh_aws_provider *p, struct cmh_aws_creds_doc *doc)
{
    cmh_free_secret(p->c_akid);
    cmh_free_secret(p->c_secret);
    cmh_free_secret(p->c_token);
    p->c_akid = doc->access_key_id;
    p->c_secret = doc->secret_access_key;
    p->c_token = doc->session_token;
    doc->access_key_id = doc->secret_access_key = doc->session_token = NULL;
    p->creds.access_key_id = p->c_akid;
    p->creds.secret_access_key = p->c_secret;
    p->creds.session_token = p->c_token;
    p->creds.expires_ms = doc->expires_ms;
    p->creds.source = source_names[p->source];
    p->have_creds = 1;
    char when[32] = "never";
    if (doc->expires_ms != 0)
        cmh_fmt_rfc3339(when, sizeof when, doc->expires_ms);
    CMH_LOG(p->log, CMH_LOG_INFO, "aws: credentials refreshed",
            CMH_STR("source", source_names[p->source]), CMH_STR("expires", when));
}

/* Credentials from a JSON document (IMDS, container agents). */
static void creds_from_json(struct cmh_aws_job *j, const struct cmh_curl_uv_response *res,
                            const char *what)
{
    struct cmh_aws_creds_doc doc;
    int rc = cmh_aws_creds_parse_json(res->body, res->body_len, &doc);
    if (rc != 0) {
        cmh_aws_job_finish(j, rc, "%s: the credentials document is not valid", what);
        return;
    }
    if (doc.error_code != NULL) {
        cmh_aws_job_finish(j, -EACCES, "%s: %s: %s", what, doc.error_code, doc.error_message);
        cmh_aws_creds_doc_clear(&doc);
        return;
    }
    if (j->p->source != CMH_AWS_SRC_CONTAINER && doc.session_token == NULL) {
        cmh_aws_creds_doc_clear(&doc);
        cmh_aws_job_finish(j, -EPROTO, "%s: the credentials document has no Token", what);
        return;
    }
    creds_take(j->p, &doc);
    cmh_aws_creds_doc_clear(&doc);
    cmh_aws_job_finish(j, 0, NULL);
}

static void on_imds_role_creds(struct cmh_aws_job *j, const struct cmh_curl_uv_response *res)
{
    char d[320];
    if (cmh_aws_imds_retry(j, res))
        return;
    if (res->error != CMH_CURL_OK || res->status != 200) {
        cmh_aws_describe(res, d, sizeof d);
        cmh_aws_job_finish(j, -EIO, "IMDS credentials of role %s: %s", j->role, d);
        return;
    }
    creds_from_json(j, res, "IMDS");
}

static void on_imds_role_list(struct cmh_aws_job *j, const struct cmh_curl_uv_response *res)
{
    char d[320];
    if (cmh_aws_imds_retry(j, res))
        return;
    if (res->error == CMH_CURL_OK && res->status == 404) {
        cmh_aws_job_finish(j, -ENOENT,
                           "IMDS: no IAM role is attached to this instance (no instance "
                           "profile); attach one, or use IRSA / EKS Pod Identity");
        return;
    }
    if (res->error != CMH_CURL_OK || res->status != 200) {
        cmh_aws_describe(res, d, sizeof d);
        cmh_aws_job_finish(j, -EIO, "IMDS role listing: %s", d);
        return;
    }
    cmh_free(j->role);
    int rc = cmh_aws_imds_parse_role(res->body, res->body_len, &j->role);
    if (rc != 0) {
        cmh_aws_job_finish(j, rc, "IMDS role listing: no usable role name");
        return;
    }
    char path[256];
    snprintf(path, sizeof path, "/latest/meta-data/iam/security-credentials/%s", j->role);
    cmh_aws_imds_get(j, path, on_imds_role_creds);
}

static void imds_creds_after_token(struct cmh_aws_job *j)
{
    cmh_aws_imds_get(j, "/latest/meta-data/iam/security-credentials/", on_imds_role_list);
}

static void on_container_creds(struct cmh_aws_job *j, const struct cmh_curl_uv_response *res)
{
    char d[320];
    if (res->error != CMH_CURL_OK || res->status != 200) {
        struct cmh_aws_creds_doc doc;
        cmh_aws_describe(res, d, sizeof d);
        if (res->error == CMH_CURL_OK &&
            cmh_aws_creds_parse_json(res->body, res->body_len, &doc) == 0) {
            if (doc.error_code != NULL) {
                cmh_aws_job_finish(j, -EACCES, "container credentials (%s): %s: %s", d,
                                   doc.error_code, doc.error_message);
                cmh_aws_creds_doc_clear(&doc);
                return;
            }
            cmh_aws_creds_doc_clear(&doc);
        }
        char shown[512];
        cmh_url_redact(j->p->container_url, shown, sizeof shown);
        cmh_aws_job_finish(j, -EIO, "container credentials from %s: %s", shown, d);
        return;
    }
    creds_from_json(j, res, "container credentials");
}

static void container_send(struct cmh_aws_job *j, const char *auth)
{
    struct cmh_aws_provider *p = j->p;
    char *h = auth != NULL ? cmh_aws_strf("Authorization: %s", auth) : NULL;
    if (auth != NULL && h == NULL) {
        cmh_aws_job_finish(j, -ENOMEM, "out of memory");
        return;
    }
    char *hdr[] = {cmh_strdup("Accept: application/json"), h};
    int rc = cmh_aws_job_request(j, "GET", cmh_strdup(p->container_url), hdr, 2, NULL,
                                 strncasecmp(p->container_url, "http://", 7) == 0, 1,
                                 p->sts_timeout_ms, on_container_creds);
    if (rc != 0)
        cmh_aws_job_finish(j, rc, "cannot start the container credentials request");
}

static void on_container_token_file(struct cmh_aws_job *j, int rc, const char *data)
{
    if (rc != 0) {
        cmh_aws_job_finish(j, rc, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE %s: %s",
                           j->p->container_token_file, uv_strerror(rc));
        return;
    }
    if (!valid_token(data)) {
        cmh_aws_job_finish(
            j, -EINVAL, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE %s: empty, or not one line of text",
            j->p->container_token_file);
        return;
    }
    container_send(j, data);
}

/* The STS endpoint: AWS_ENDPOINT_URL_STS / AWS_ENDPOINT_URL, else the region's, else the global
 * one. Allocated; NULL when out of memory. */
static char *sts_endpoint(const struct cmh_aws_provider *p)
{
    if (p->sts_url != NULL)
        return cmh_strdup(p->sts_url);
    if (p->region != NULL)
        return cmh_aws_strf("https://sts.%s.amazonaws.com%s/", p->region,
                            strncmp(p->region, "cn-", 3) == 0 ? ".cn" : "");
    return cmh_strdup("https://sts.amazonaws.com/");
}

/* The form "Action=<action>&Version=2011-06-15" and the name/value pairs of kv (n strings; a NULL
 * value is left out), values percent-encoded. Allocated; NULL when out of memory. */
static char *sts_form(const char *action, const char *const *kv, size_t n)
{
    /* One allocation of the exact size: the form carries the web identity token, and a buffer
     * that grew would leave copies of it behind. */
    size_t len = strlen("Action=&Version=2011-06-15") + strlen(action) + 1;
    for (size_t i = 0; i + 1 < n; i += 2)
        if (kv[i + 1] != NULL)
            len += strlen(kv[i]) + 2 + cmh_pct_encode(NULL, 0, kv[i + 1], strlen(kv[i + 1]), 0);
    char *body = cmh_malloc(len);
    if (body == NULL)
        return NULL;
    size_t k = (size_t)snprintf(body, len, "Action=%s&Version=2011-06-15", action);
    for (size_t i = 0; i + 1 < n; i += 2) {
        if (kv[i + 1] == NULL)
            continue;
        k += (size_t)snprintf(body + k, len - k, "&%s=", kv[i]);
        k += cmh_pct_encode(body + k, len - k, kv[i + 1], strlen(kv[i + 1]), 0);
    }
    return body;
}

static void on_sts(struct cmh_aws_job *j, const struct cmh_curl_uv_response *res);

/* STS AssumeRole for the profile's role_arn, SigV4-signed with the source profile's keys. */
static void assume_role(struct cmh_aws_job *j)
{
    struct cmh_aws_provider *p = j->p;
    const char *fields[] = {"RoleArn",       p->role_arn,  "RoleSessionName",
                            p->session_name, "ExternalId", p->external_id};
    char *url = sts_endpoint(p);
    char *body = sts_form("AssumeRole", fields, sizeof fields / sizeof fields[0]);
    char *host = NULL, *path = NULL, *hdr[8] = {NULL};
    size_t nh = 0;
    int http = 0, rc = url == NULL || body == NULL ? -ENOMEM : 0;
    struct cmh_sigv4_result sig;
    memset(&sig, 0, sizeof sig);
    if (rc == 0)
        rc = cmh_url_split(url, &host, &path, &http);
    static const char ctype[] = "application/x-www-form-urlencoded; charset=utf-8";
    if (rc == 0) {
        const struct cmh_sigv4_kv headers[] = {{"Host", host}, {"Content-Type", ctype}};
        struct cmh_sigv4_credentials creds = {p->src_akid, p->src_secret, p->src_token};
        struct cmh_sigv4_request sreq = {
            .method = "POST",
            .path = path,
            .headers = headers,
            .nheaders = 2,
            .payload = body,
            .payload_len = strlen(body),
            .region = p->region != NULL ? p->region : "us-east-1",
            .service = "sts",
            .time_s = wall_ms() / 1000,
            .creds = &creds,
        };
        rc = cmh_sigv4_sign(&sreq, &sig);
    }
    if (rc == 0)
        rc = cmh_aws_header_add(hdr, &nh, 8, "Content-Type", ctype);
    if (rc == 0)
        rc = cmh_aws_header_add(hdr, &nh, 8, "Accept", "text/xml");
    for (size_t i = 0; rc == 0 && i < sig.nadd; i++)
        rc = cmh_aws_header_add(hdr, &nh, 8, sig.add[i].name, sig.add[i].value);
    cmh_sigv4_result_free(&sig);
    cmh_free(host);
    cmh_free(path);
    if (rc == 0) {
        rc = cmh_aws_job_request(j, "POST", url, hdr, nh, body, http, 0, p->sts_timeout_ms, on_sts);
        url = body = NULL;
        nh = 0;
    }
    for (size_t i = 0; i < nh; i++)
        cmh_free_secret(hdr[i]);
    cmh_free(url);
    cmh_free_secret(body);
    if (rc != 0)
        cmh_aws_job_finish(j, rc, "cannot start the STS AssumeRole request for %s", p->role_arn);
}

static void on_sts(struct cmh_aws_job *j, const struct cmh_curl_uv_response *res)
{
    char d[320];
    const char *action =
        j->p->source == CMH_AWS_SRC_ASSUME_ROLE ? "AssumeRole" : "AssumeRoleWithWebIdentity";
    if (res->error != CMH_CURL_OK) {
        char shown[512];
        cmh_aws_describe(res, d, sizeof d);
        cmh_url_redact(j->url, shown, sizeof shown);
        cmh_aws_job_finish(j, res->error == CMH_CURL_ERR_TIMEOUT ? -ETIMEDOUT : -EIO,
                           "STS %s (%s): %s", action, shown, d);
        return;
    }
    struct cmh_aws_creds_doc doc;
    int rc = cmh_aws_creds_parse_sts_xml(res->body, res->body_len, &doc);
    if (rc != 0) {
        cmh_aws_describe(res, d, sizeof d);
        cmh_aws_job_finish(j, rc == -ENOMEM ? rc : -EPROTO,
                           "STS %s: %s with an answer that is not valid", action, d);
        return;
    }
    if (doc.error_code != NULL || res->status != 200) {
        cmh_aws_describe(res, d, sizeof d);
        cmh_aws_job_finish(j, res->status >= 500 ? -EIO : -EACCES, "STS %s for %s: %s: %s: %s",
                           action, j->p->role_arn, d,
                           doc.error_code != NULL ? doc.error_code : "no error code",
                           doc.error_message != NULL ? doc.error_message : "");
        cmh_aws_creds_doc_clear(&doc);
        return;
    }
    creds_take(j->p, &doc);
    cmh_aws_creds_doc_clear(&doc);
    cmh_aws_job_finish(j, 0, NULL);
}

static void on_web_identity_token(struct cmh_aws_job *j, int rc, const char *data)
{
    struct cmh_aws_provider *p = j->p;
    if (rc != 0) {
        cmh_aws_job_finish(j, rc, "AWS_WEB_IDENTITY_TOKEN_FILE %s: %s", p->token_file,
                           uv_strerror(rc));
        return;
    }
    if (*data == '\0') {
        cmh_aws_job_finish(j, -EINVAL, "AWS_WEB_IDENTITY_TOKEN_FILE %s is empty", p->token_file);
        return;
    }
    char *url = sts_endpoint(p);
    const char *fields[] = {"RoleArn",       p->role_arn,        "RoleSessionName",
                            p->session_name, "WebIdentityToken", data};
    char *body = sts_form("AssumeRoleWithWebIdentity", fields, sizeof fields / sizeof fields[0]);
    if (url == NULL || body == NULL) {
        cmh_free(url);
        cmh_free(body);
        cmh_aws_job_finish(j, -ENOMEM, "out of memory");
        return;
    }
    char *hdr[] = {cmh_strdup("Content-Type: application/x-www-form-urlencoded; charset=utf-8"),
                   cmh_strdup("Accept: text/xml")};
    rc = cmh_aws_job_request(j, "POST", url, hdr, 2, body, 0, 0, p->sts_timeout_ms, on_sts);
    if (rc != 0) {
        char shown[512];
        cmh_url_redact(j->url ? j->url : "?", shown, sizeof shown);
        cmh_aws_job_finish(j, rc, "cannot start the STS request to %s", shown);
    }
}

static void creds_refresh_start(struct cmh_aws_provider *p)
{
    struct cmh_aws_job *j = &p->cj;
    int rc = 0;
    j->busy = 1;
    switch (p->source) {
    case CMH_AWS_SRC_ENV:
    case CMH_AWS_SRC_PROFILE:
        cmh_aws_job_finish(j, 0, NULL); /* cached at new(), never expire */
        return;
    case CMH_AWS_SRC_ASSUME_ROLE:
        assume_role(j);
        return;
    case CMH_AWS_SRC_WEB_IDENTITY:
        rc = cmh_aws_job_read_file(j, p->token_file, on_web_identity_token);
        if (rc != 0)
            cmh_aws_job_finish(j, rc, "AWS_WEB_IDENTITY_TOKEN_FILE %s: %s", p->token_file,
                               uv_strerror(rc));
        return;
    case CMH_AWS_SRC_CONTAINER:
        if (p->container_token_file != NULL) {
            rc = cmh_aws_job_read_file(j, p->container_token_file, on_container_token_file);
            if (rc != 0)
                cmh_aws_job_finish(j, rc, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE %s: %s",
                                   p->container_token_file, uv_strerror(rc));
        } else {
            container_send(j, p->container_token);
        }
        return;
    case CMH_AWS_SRC_IMDS:
        cmh_aws_imds_with_token(j, imds_creds_after_token, NULL);
        return;
    case CMH_AWS_SRC_NONE:
        break;
    }
    cmh_aws_job_finish(
        j, -ENOENT,
        "no AWS credentials: set AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE (IRSA), "
        "AWS_CONTAINER_CREDENTIALS_FULL_URI (EKS Pod Identity), AWS_ACCESS_KEY_ID + "
        "AWS_SECRET_ACCESS_KEY, or let IMDS be used (AWS_EC2_METADATA_DISABLED is set)");
}

/* ---------------------------------------------------------------------------------------------
 * The shared config and credentials files (a laptop; in a pod there are none) */

struct shared_files {
    const char *name[2]; /* the config file, the credentials file */
    char *text[2];       /* NULL when the file does not exist */
    size_t len[2];
};

/* key of profile name: the credentials file's [name] first, then the config file's
 * [profile name] ([default] for default), as the SDKs merge them. 0 with *out (NULL when
 * absent; *exists set when either file has the profile), or -EINVAL (logged), -ENOMEM. */
static int profile_get(struct cmh_aws_provider *p, const struct shared_files *f, const char *name,
                       const char *key, char **out, int *exists)
{
    char sect[300];
    *out = NULL;
    for (int i = 1; i >= 0; i--) {
        if (f->text[i] == NULL)
            continue;
        snprintf(sect, sizeof sect, i == 0 && strcmp(name, "default") != 0 ? "profile %s" : "%s",
                 name);
        unsigned line = 0;
        int rc = cmh_aws_ini_get(f->text[i], f->len[i], sect, key, out, &line);
        if (rc == -ENOENT)
            continue;
        if (rc == -EINVAL)
            CMH_LOG(p->log, CMH_LOG_ERROR, "aws: a line of the shared file is not INI",
                    CMH_STR("file", f->name[i]), CMH_UINT("line", line));
        if (rc != 0)
            return rc;
        if (exists != NULL)
            *exists = 1;
        if (*out != NULL)
            return 0;
    }
    return 0;
}

/* Static keys of profile name into *akid, *secret, *token (NULL when the profile has none). */
static int profile_keys(struct cmh_aws_provider *p, const struct shared_files *f, const char *name,
                        char **akid, char **secret, char **token)
{
    int rc = profile_get(p, f, name, "aws_access_key_id", akid, NULL);
    if (rc == 0)
        rc = profile_get(p, f, name, "aws_secret_access_key", secret, NULL);
    if (rc == 0)
        rc = profile_get(p, f, name, "aws_session_token", token, NULL);
    if (rc == 0 && (*akid == NULL) != (*secret == NULL)) {
        CMH_LOG(p->log, CMH_LOG_ERROR,
                "aws: the profile has only one of aws_access_key_id and aws_secret_access_key",
                CMH_STR("profile", name));
        rc = -EINVAL;
    }
    return rc;
}

/* The profile (AWS_PROFILE, else "default") of AWS_CONFIG_FILE (~/.aws/config) and
 * AWS_SHARED_CREDENTIALS_FILE (~/.aws/credentials), where the SDKs look after the environment's
 * keys: static keys (CMH_AWS_SRC_PROFILE), or role_arn + source_profile (CMH_AWS_SRC_ASSUME_ROLE);
 * its region when none is known yet. Returns 1 when the profile gives the credentials; 0 when there
 * is none to use (no file and no AWS_PROFILE, as in a pod; or a default profile without
 * credentials); -EINVAL (logged, naming the key); -ENOMEM. */
static int read_profile(struct cmh_aws_provider *p, char *const *env)
{
    const char *name = cmh_aws_env_get(env, "AWS_PROFILE");
    int explicit = name != NULL;
    if (name == NULL)
        name = "default";
    const char *home = cmh_aws_env_get(env, "HOME");
    char *paths[2] = {NULL, NULL}, *akid = NULL, *secret = NULL, *token = NULL, *v = NULL;
    char *src = NULL;
    struct shared_files f = {{NULL, NULL}, {NULL, NULL}, {0, 0}};
    static const char *const vars[2] = {"AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"};
    static const char *const homes[2] = {".aws/config", ".aws/credentials"};
    int rc = 0, exists = 0;
    for (int i = 0; i < 2 && rc == 0; i++) {
        const char *e = cmh_aws_env_get(env, vars[i]);
        if (e != NULL)
            paths[i] = cmh_strdup(e);
        else if (home != NULL)
            paths[i] = cmh_aws_strf("%s/%s", home, homes[i]);
        else
            continue;
        if (paths[i] == NULL) {
            rc = -ENOMEM;
            break;
        }
        f.name[i] = paths[i];
        int r = cmh_read_small_file(paths[i], CMH_AWS_INI_MAX, &f.text[i], &f.len[i]);
        if (r != 0 && r != -ENOENT) {
            CMH_LOG(p->log, CMH_LOG_ERROR, "aws: cannot read the shared file",
                    CMH_STR("file", paths[i]), CMH_STR("error", strerror(-r)));
            rc = r == -ENOMEM ? r : -EINVAL;
        }
    }
    if (rc != 0 || (f.text[0] == NULL && f.text[1] == NULL && !explicit))
        goto out;
    /* What needs a person or another program is not ours to run: say which key. */
    static const char *const refused[] = {"credential_process",      "sso_session",
                                          "sso_start_url",           "credential_source",
                                          "web_identity_token_file", "mfa_serial"};
    for (size_t i = 0; rc == 0 && i < sizeof refused / sizeof refused[0]; i++) {
        rc = profile_get(p, &f, name, refused[i], &v, &exists);
        if (rc == 0 && v != NULL) {
            CMH_LOG(p->log, CMH_LOG_ERROR,
                    "aws: the profile uses a key this program does not support: use static keys "
                    "or role_arn + source_profile, or export the credentials "
                    "(eval \"$(aws configure export-credentials --format env)\")",
                    CMH_STR("profile", name), CMH_STR("key", refused[i]));
            rc = -EINVAL;
        }
        cmh_free(v);
        v = NULL;
    }
    if (rc == 0 && !exists) {
        if (explicit) {
            CMH_LOG(p->log, CMH_LOG_ERROR,
                    "aws: AWS_PROFILE names a profile that neither shared file has",
                    CMH_STR("profile", name), CMH_STR("config", f.name[0] ? f.name[0] : "-"),
                    CMH_STR("credentials", f.name[1] ? f.name[1] : "-"));
            rc = -EINVAL;
        }
        goto out;
    }
    if (rc == 0 && p->region == NULL) {
        rc = profile_get(p, &f, name, "region", &v, NULL);
        if (rc == 0 && v != NULL && !valid_region(v)) {
            CMH_LOG(p->log, CMH_LOG_ERROR, "aws: the profile's region is not a region name",
                    CMH_STR("profile", name), CMH_STR("region", v));
            rc = -EINVAL;
        } else if (rc == 0 && v != NULL) {
            p->region = v;
            p->region_from = "profile";
            v = NULL;
        }
        cmh_free(v);
        v = NULL;
    }
    if (rc == 0)
        rc = profile_get(p, &f, name, "role_arn", &p->role_arn, NULL);
    if (rc == 0 && p->role_arn != NULL) {
        rc = profile_get(p, &f, name, "source_profile", &src, NULL);
        if (rc == 0 && src == NULL) {
            CMH_LOG(p->log, CMH_LOG_ERROR, "aws: the profile's role_arn needs a source_profile",
                    CMH_STR("profile", name));
            rc = -EINVAL;
        }
        /* One hop: the source profile's own keys (itself allowed, as in the SDKs). */
        if (rc == 0 && strcmp(src, name) != 0) {
            rc = profile_get(p, &f, src, "role_arn", &v, NULL);
            if (rc == 0 && v != NULL) {
                CMH_LOG(p->log, CMH_LOG_ERROR,
                        "aws: the source_profile assumes a role itself: not supported, give it "
                        "static keys",
                        CMH_STR("profile", name), CMH_STR("source_profile", src));
                rc = -EINVAL;
            }
            cmh_free(v);
            v = NULL;
        }
        if (rc == 0)
            rc = profile_keys(p, &f, src, &p->src_akid, &p->src_secret, &p->src_token);
        if (rc == 0 && p->src_akid == NULL) {
            CMH_LOG(p->log, CMH_LOG_ERROR,
                    "aws: the source_profile has no aws_access_key_id / aws_secret_access_key",
                    CMH_STR("profile", name), CMH_STR("source_profile", src));
            rc = -EINVAL;
        }
        if (rc == 0)
            rc = profile_get(p, &f, name, "external_id", &p->external_id, NULL);
        if (rc == 0)
            rc = profile_get(p, &f, name, "role_session_name", &p->session_name, NULL);
        if (rc == 0 && p->session_name == NULL &&
            (p->session_name = cmh_aws_strf("cni-metrics-helper-%lld", (long long)wall_ms())) ==
                NULL)
            rc = -ENOMEM;
        if (rc == 0) {
            p->source = CMH_AWS_SRC_ASSUME_ROLE;
            rc = 1;
        }
        goto out;
    }
    if (rc == 0)
        rc = profile_keys(p, &f, name, &akid, &secret, &token);
    if (rc == 0 && akid != NULL) {
        p->source = CMH_AWS_SRC_PROFILE;
        struct cmh_aws_creds_doc doc = {
            .access_key_id = akid, .secret_access_key = secret, .session_token = token};
        creds_take(p, &doc);
        akid = secret = token = NULL;
        rc = 1;
    } else if (rc == 0 && explicit) {
        CMH_LOG(p->log, CMH_LOG_ERROR,
                "aws: the profile has no credentials: aws_access_key_id + aws_secret_access_key, "
                "or role_arn + source_profile",
                CMH_STR("profile", name));
        rc = -EINVAL;
    }
out:
    for (int i = 0; i < 2; i++) {
        cmh_free(paths[i]);
        cmh_free_secret(f.text[i]);
    }
    cmh_free_secret(akid);
    cmh_free_secret(secret);
    cmh_free_secret(token);
    cmh_free(src);
    return rc;
}

/* Region (AWS_REGION, AWS_DEFAULT_REGION, the node's providerID), cluster id and instance id. */
static int read_region_and_cluster(struct cmh_aws_provider *p, const struct cmh_aws_creds_opts *o)
{
    char *const *env = o->envp;
    const char *region = o->region != NULL && o->region[0] != '\0' ? o->region : NULL;
    const char *cluster = o->cluster_id != NULL && o->cluster_id[0] != '\0' ? o->cluster_id : NULL;

    p->region_from = region != NULL ? "AWS_REGION" : NULL;
    if (region == NULL && (region = cmh_aws_env_get(env, "AWS_REGION")) != NULL)
        p->region_from = "AWS_REGION";
    if (region == NULL && (region = cmh_aws_env_get(env, "AWS_DEFAULT_REGION")) != NULL)
        p->region_from = "AWS_DEFAULT_REGION";
    if (region == NULL && o->region_hint != NULL && o->region_hint[0] != '\0') {
        region = o->region_hint;
        p->region_from = "node-provider-id";
    }
    if (cluster == NULL)
        cluster = cmh_aws_env_get(env, "AWS_CLUSTER_ID");
    p->cluster_lookup = o->cluster_lookup;
    if (o->instance_id != NULL && o->instance_id[0] != '\0' &&
        (p->instance_id = cmh_strdup(o->instance_id)) == NULL)
        return -ENOMEM;
    if (region != NULL && !valid_region(region)) {
        CMH_LOG(p->log, CMH_LOG_ERROR, "aws: not a region name", CMH_STR("region", region));
        return -EINVAL;
    }
    if ((region != NULL && (p->region = cmh_strdup(region)) == NULL) ||
        (cluster != NULL && (p->cluster_id = cmh_strdup(cluster)) == NULL))
        return -ENOMEM;
    if (cluster != NULL)
        p->cluster_from = "AWS_CLUSTER_ID";
    return 0;
}

/* The IMDS endpoint (AWS_EC2_METADATA_*) and the STS endpoint (AWS_ENDPOINT_URL_STS, else
 * AWS_ENDPOINT_URL), checked. */
static int read_endpoints(struct cmh_aws_provider *p, char *const *env)
{
    const char *dis = cmh_aws_env_get(env, "AWS_EC2_METADATA_DISABLED");
    const char *imds = cmh_aws_env_get(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT");
    const char *mode = cmh_aws_env_get(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE");
    const char *sts = cmh_aws_env_get(env, "AWS_ENDPOINT_URL_STS");
    if (sts == NULL)
        sts = cmh_aws_env_get(env, "AWS_ENDPOINT_URL");
    p->imds_disabled = dis != NULL && strcasecmp(dis, "true") == 0;
    if (mode != NULL && strcasecmp(mode, "ipv4") != 0 && strcasecmp(mode, "ipv6") != 0) {
        CMH_LOG(p->log, CMH_LOG_ERROR,
                "aws: AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE is IPv4 or IPv6",
                CMH_STR("value", mode));
        return -EINVAL;
    }
    if (imds != NULL && strncasecmp(imds, "http://", 7) != 0 &&
        strncasecmp(imds, "https://", 8) != 0) {
        CMH_LOG(p->log, CMH_LOG_ERROR, "aws: AWS_EC2_METADATA_SERVICE_ENDPOINT is not a URL",
                CMH_URL("value", imds));
        return -EINVAL;
    }
    if (sts != NULL && strncasecmp(sts, "https://", 8) != 0) {
        CMH_LOG(p->log, CMH_LOG_ERROR, "aws: the STS endpoint must be https",
                CMH_URL("value", sts));
        return -EINVAL;
    }
    p->imds_base = imds != NULL
                       ? dup_base(imds)
                       : cmh_strdup(mode != NULL && strcasecmp(mode, "ipv6") == 0 ? IMDS_DEFAULT_V6
                                                                                  : IMDS_DEFAULT);
    if (p->imds_base == NULL)
        return -ENOMEM;
    if (sts != NULL) {
        size_t n = strlen(sts);
        const char *path = strchr(sts + 8, '/');
        p->sts_url = path != NULL ? cmh_strdup(sts) : cmh_aws_strf("%.*s/", (int)n, sts);
        if (p->sts_url == NULL)
            return -ENOMEM;
    }
    return 0;
}

/* The sources of the chain below return 1 when they are configured (p->source set: the chain
 * stops there), 0 when they are not, or a negative error. */

/* Static keys in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN). */
static int source_env(struct cmh_aws_provider *p, char *const *env)
{
    const char *akid = cmh_aws_env_get(env, "AWS_ACCESS_KEY_ID");
    const char *secret = cmh_aws_env_get(env, "AWS_SECRET_ACCESS_KEY");
    if (akid == NULL || secret == NULL) {
        if (akid != NULL || secret != NULL)
            CMH_LOG(p->log, CMH_LOG_WARN,
                    "aws: only one of AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY is set; ignored",
                    CMH_BOOL("access_key_id", akid != NULL));
        return 0;
    }
    p->source = CMH_AWS_SRC_ENV;
    int rc = 0;
    struct cmh_aws_creds_doc doc = {
        .access_key_id = cmh_strdup_opt(akid, &rc),
        .secret_access_key = cmh_strdup_opt(secret, &rc),
        .session_token = cmh_strdup_opt(cmh_aws_env_get(env, "AWS_SESSION_TOKEN"), &rc)};
    if (rc != 0) {
        cmh_aws_creds_doc_clear(&doc);
        return -ENOMEM;
    }
    creds_take(p, &doc);
    return 1;
}

/* IRSA: AWS_ROLE_ARN with AWS_WEB_IDENTITY_TOKEN_FILE (STS AssumeRoleWithWebIdentity). */
static int source_web_identity(struct cmh_aws_provider *p, char *const *env)
{
    const char *role = cmh_aws_env_get(env, "AWS_ROLE_ARN");
    const char *tokf = cmh_aws_env_get(env, "AWS_WEB_IDENTITY_TOKEN_FILE");
    if (role == NULL || tokf == NULL)
        return 0;
    p->source = CMH_AWS_SRC_WEB_IDENTITY;
    const char *sn = cmh_aws_env_get(env, "AWS_ROLE_SESSION_NAME");
    p->role_arn = cmh_strdup(role);
    p->token_file = cmh_strdup(tokf);
    p->session_name =
        sn != NULL ? cmh_strdup(sn) : cmh_aws_strf("cni-metrics-helper-%lld", (long long)wall_ms());
    if (p->role_arn == NULL || p->token_file == NULL || p->session_name == NULL)
        return -ENOMEM;
    if (p->region == NULL && p->sts_url == NULL)
        CMH_LOG(p->log, CMH_LOG_WARN,
                "aws: no region for STS: using the global endpoint; set AWS_REGION",
                CMH_URL("endpoint", "https://sts.amazonaws.com/"));
    return 1;
}

/* EKS Pod Identity and ECS: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or _FULL_URI, with the
 * authorization token from its file or the environment. */
static int source_container(struct cmh_aws_provider *p, const struct cmh_aws_creds_opts *o)
{
    char *const *env = o->envp;
    const char *full = cmh_aws_env_get(env, "AWS_CONTAINER_CREDENTIALS_FULL_URI");
    const char *rel = cmh_aws_env_get(env, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
    char why[CMH_AWS_WHY_MAX];
    if (rel == NULL && full == NULL)
        return 0;
    p->source = CMH_AWS_SRC_CONTAINER;
    if (rel != NULL) {
        /* the relative URI wins, as in the SDKs; its host is fixed (the ECS agent) */
        if (rel[0] != '/') {
            CMH_LOG(p->log, CMH_LOG_ERROR,
                    "aws: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI must start with /",
                    CMH_STR("value", rel));
            return -EINVAL;
        }
        char *base = dup_base(o->ecs_endpoint != NULL ? o->ecs_endpoint : ECS_DEFAULT);
        p->container_url = base != NULL ? cmh_aws_strf("%s%s", base, rel) : NULL;
        cmh_free(base);
    } else {
        p->container_url = cmh_strdup(full);
    }
    if (p->container_url == NULL)
        return -ENOMEM;
    if (!cmh_aws_container_url_allowed(p->container_url, why, sizeof why)) {
        CMH_LOG(p->log, CMH_LOG_ERROR, "aws: container credentials endpoint refused",
                CMH_URL("url", p->container_url), CMH_STR("why", why));
        return -EPERM;
    }
    const char *tf = cmh_aws_env_get(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
    const char *tk = cmh_aws_env_get(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN");
    if (tf != NULL) {
        if ((p->container_token_file = cmh_strdup(tf)) == NULL)
            return -ENOMEM;
    } else if (tk != NULL) {
        if (!valid_token(tk)) {
            CMH_LOG(p->log, CMH_LOG_ERROR,
                    "aws: AWS_CONTAINER_AUTHORIZATION_TOKEN is not one line of text",
                    CMH_UINT("length", strlen(tk)));
            return -EINVAL;
        }
        if ((p->container_token = cmh_strdup(tk)) == NULL)
            return -ENOMEM;
    }
    return 1;
}

/* The settings, then the first credential source configured, in the SDKs' order: environment,
 * shared profile, web identity, container, IMDS. */
static int read_config(struct cmh_aws_provider *p, const struct cmh_aws_creds_opts *o)
{
    int rc = read_region_and_cluster(p, o);
    if (!rc)
        rc = read_endpoints(p, o->envp);
    if (!rc)
        rc = source_env(p, o->envp);
    if (!rc)
        rc = read_profile(p, o->envp);
    if (!rc)
        rc = source_web_identity(p, o->envp);
    if (!rc)
        rc = source_container(p, o);
    if (!rc) {
        const char *role = cmh_aws_env_get(o->envp, "AWS_ROLE_ARN");
        if (role != NULL || cmh_aws_env_get(o->envp, "AWS_WEB_IDENTITY_TOKEN_FILE") != NULL)
            CMH_LOG(p->log, CMH_LOG_WARN,
                    "aws: web identity needs both AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE; "
                    "ignored",
                    CMH_BOOL("role_arn", role != NULL));
        p->source = p->imds_disabled ? CMH_AWS_SRC_NONE : CMH_AWS_SRC_IMDS;
    }
    return rc < 0 ? rc : 0;
}

/* ---------------------------------------------------------------------------------------------
 * Waiters: one queue per job, for credentials and for region + cluster id alike */

static struct cmh_aws_waiter *take_fifo(struct cmh_aws_waiter **list)
{
    struct cmh_aws_waiter *w = *list, *rev = NULL;
    *list = NULL;
    while (w != NULL) {
        struct cmh_aws_waiter *next = w->next;
        w->next = rev;
        rev = w;
        w = next;
    }
    return rev;
}

static int creds_fresh(const struct cmh_aws_provider *p, int64_t ahead_ms)
{
    return p->have_creds &&
           (p->creds.expires_ms == 0 || p->creds.expires_ms - wall_ms() > ahead_ms);
}

/* Whether what j finds is known without running it: fresh credentials, or the region and the
 * cluster id once resolved. */
static int job_known(const struct cmh_aws_provider *p, const struct cmh_aws_job *j)
{
    return j == &p->cj ? creds_fresh(p, REFRESH_AHEAD_MS) : p->resolved;
}

static void job_start(struct cmh_aws_provider *p, struct cmh_aws_job *j)
{
    if (j == &p->cj)
        creds_refresh_start(p);
    else
        cmh_aws_region_resolve_start(p);
}

/* Calls each waiter of the list w with the result (rc 0: p's credentials, or its region and
 * cluster id) and frees it. A callback may free p: the waiters after it get -ECANCELED. */
static void deliver(struct cmh_aws_provider *p, struct cmh_aws_waiter *w, int rc, const char *why)
{
    while (w != NULL) {
        struct cmh_aws_waiter *next = w->next;
        int r = p->closing ? -ECANCELED : rc;
        const char *y = p->closing ? "credential provider closed" : r == 0 ? "" : why;
        if (w->creds_cb != NULL)
            w->creds_cb(p, r, r == 0 ? &p->creds : NULL, y, w->arg);
        else
            w->resolve_cb(p, r, r == 0 ? p->region : NULL, r == 0 ? p->cluster_id : NULL, y,
                          w->arg);
        cmh_free(w);
        w = next;
    }
}

/* Queues w0 on j: served at once (from the defer timer) when the result is known, else when the
 * run of j in progress, or started here, ends. */
static int wait_for(struct cmh_aws_provider *p, struct cmh_aws_job *j, struct cmh_aws_waiter w0)
{
    if (p->closing)
        return -ECANCELED;
    struct cmh_aws_waiter *w = cmh_malloc(sizeof *w);
    if (w == NULL)
        return -ENOMEM;
    *w = w0;
    if (!j->busy && job_known(p, j)) {
        w->next = j->ready;
        j->ready = w;
        cmh_aws_provider_kick(p);
        return 0;
    }
    w->next = j->waiting;
    j->waiting = w;
    if (!j->busy)
        job_start(p, j);
    return 0;
}

static void on_defer(uv_timer_t *t)
{
    struct cmh_aws_provider *p = container_of(t, struct cmh_aws_provider, defer);
    char why[CMH_AWS_WHY_MAX];
    struct cmh_aws_job *jobs[] = {&p->cj, &p->rj};
    for (size_t i = 0; i < 2 && !p->closing; i++) {
        struct cmh_aws_job *j = jobs[i];
        if (!j->finished)
            continue;
        j->finished = 0;
        j->busy = 0;
        int rc = j->rc;
        snprintf(why, sizeof why, "%s", j->why);
        if (j == &p->cj && rc != 0 && creds_fresh(p, STALE_GRACE_MS)) {
            CMH_LOG(p->log, CMH_LOG_WARN, "aws: credential refresh failed, using the cached ones",
                    CMH_STR("source", source_names[p->source]), CMH_STR("why", why),
                    CMH_INT("expires_in_s", (p->creds.expires_ms - wall_ms()) / 1000));
            rc = 0;
        }
        deliver(p, take_fifo(&j->waiting), rc, why);
    }
    for (size_t i = 0; i < 2 && !p->closing; i++) {
        struct cmh_aws_job *j = jobs[i];
        if (j->ready == NULL)
            continue;
        if (job_known(p, j)) {
            deliver(p, take_fifo(&j->ready), 0, "");
            continue;
        }
        /* invalidated or expiring since the get: join a run */
        struct cmh_aws_waiter *w = j->ready;
        while (w->next != NULL)
            w = w->next;
        w->next = j->waiting;
        j->waiting = j->ready;
        j->ready = NULL;
        if (!j->busy)
            job_start(p, j);
    }
}

void cmh_aws_provider_kick(struct cmh_aws_provider *p)
{
    if (!p->closing)
        uv_timer_start(&p->defer, on_defer, 0, 0);
}

/* ---------------------------------------------------------------------------------------------
 * Public */

static void provider_release(struct cmh_aws_provider *p)
{
    struct cmh_aws_job *jobs[] = {&p->cj, &p->rj};
    for (size_t i = 0; i < 2; i++) {
        cmh_aws_job_clear(jobs[i]);
        cmh_free(jobs[i]->role);
        cmh_free_secret(jobs[i]->fbuf);
    }
    cmh_free(p->role_arn);
    cmh_free_secret(p->src_akid);
    cmh_free_secret(p->src_secret);
    cmh_free_secret(p->src_token);
    cmh_free(p->external_id);
    cmh_free(p->token_file);
    cmh_free(p->session_name);
    cmh_free(p->sts_url);
    cmh_free(p->container_url);
    cmh_free_secret(p->container_token);
    cmh_free(p->container_token_file);
    cmh_free(p->imds_base);
    cmh_free(p->region);
    cmh_free(p->cluster_id);
    cmh_free(p->instance_id);
    cmh_free_secret(p->c_akid);
    cmh_free_secret(p->c_secret);
    cmh_free_secret(p->c_token);
    cmh_free_secret(p->imds_token);
    cmh_free(p);
}

void cmh_aws_provider_maybe_release(struct cmh_aws_provider *p)
{
    if (p->closing && !p->defer_open && !p->cj.fs_busy && !p->rj.fs_busy) {
        if (p->close_cb != NULL)
            p->close_cb(p, p->close_arg);
        provider_release(p);
    }
}

static void on_defer_closed(uv_handle_t *h)
{
    struct cmh_aws_provider *p = container_of((uv_timer_t *)h, struct cmh_aws_provider, defer);
    p->defer_open = 0;
    cmh_aws_provider_maybe_release(p);
}

int cmh_aws_provider_new(struct cmh_aws_provider **out, uv_loop_t *loop, struct cmh_curl_uv *curl,
                         const struct cmh_aws_creds_opts *opts, struct cmh_log *log)
{
    *out = NULL;
    struct cmh_aws_provider *p = cmh_calloc(1, sizeof *p);
    if (p == NULL)
        return -ENOMEM;
    p->loop = loop;
    p->curl = curl;
    p->log = log;
    p->cj.p = p->rj.p = p;
    p->imds_timeout_ms = opts->imds_timeout_ms != 0 ? opts->imds_timeout_ms : 1000;
    p->sts_timeout_ms = opts->sts_timeout_ms != 0 ? opts->sts_timeout_ms : 5000;
    int rc = read_config(p, opts);
    if (rc != 0) {
        provider_release(p);
        return rc;
    }
    /* uv_timer_init cannot fail on a live loop; the timer is closed in free */
    uv_timer_init(loop, &p->defer);
    p->defer_open = 1;
    CMH_LOG(log, CMH_LOG_INFO, "aws: credential source", CMH_STR("source", source_names[p->source]),
            CMH_STR("region", p->region != NULL ? p->region : "(unknown)"),
            CMH_STR("imds", p->imds_disabled ? "disabled" : p->imds_base));
    *out = p;
    return 0;
}

int cmh_aws_creds_get(struct cmh_aws_provider *p, cmh_aws_creds_cb cb, void *arg)
{
    return wait_for(p, &p->cj, (struct cmh_aws_waiter){.creds_cb = cb, .arg = arg});
}

void cmh_aws_creds_invalidate(struct cmh_aws_provider *p)
{
    /* the strings stay until the next refresh replaces them: a caller may still hold them */
    if (p->source != CMH_AWS_SRC_ENV && p->source != CMH_AWS_SRC_PROFILE)
        p->have_creds = 0;
}

int cmh_aws_resolve(struct cmh_aws_provider *p, cmh_aws_resolve_cb cb, void *arg)
{
    return wait_for(p, &p->rj, (struct cmh_aws_waiter){.resolve_cb = cb, .arg = arg});
}

const char *cmh_aws_provider_instance_id(const struct cmh_aws_provider *p)
{
    return p->instance_id;
}

const char *cmh_aws_provider_region_from(const struct cmh_aws_provider *p)
{
    return p->region_from != NULL ? p->region_from : "unknown";
}

uint64_t cmh_aws_provider_requests(const struct cmh_aws_provider *p)
{
    return p->requests;
}

void cmh_aws_provider_close(struct cmh_aws_provider *p, cmh_aws_provider_close_cb close_cb,
                            void *arg)
{
    if (p == NULL || p->closing)
        return;
    p->closing = 1;
    p->close_cb = close_cb;
    p->close_arg = arg;
    struct cmh_aws_job *jobs[] = {&p->cj, &p->rj};
    for (size_t i = 0; i < 2; i++)
        cmh_aws_job_cancel(jobs[i]); /* the done callbacks see closing and do nothing */
    for (size_t i = 0; i < 2; i++) {
        deliver(p, take_fifo(&jobs[i]->waiting), -ECANCELED, "");
        deliver(p, take_fifo(&jobs[i]->ready), -ECANCELED, "");
    }
    uv_close((uv_handle_t *)&p->defer, on_defer_closed);
}
