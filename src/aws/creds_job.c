/* The jobs of the credential provider (see include/cmh/aws/aws_creds_int.h): one request at a time
 * through curl_uv, with its own timeout (the request's timeout_ms) and IMDS's retries, token files
 * read with uv_fs, and the result set for the provider's defer timer, so it is never delivered
 * inside the call that asked. */
#include "cmh/aws/aws_creds_int.h"

#include "cmh/aws/creds_parse.h"
#include "cmh/core/alloc.h"
#include "cmh/core/buf.h"
#include "cmh/core/container_of.h"
#include "cmh/core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define IMDS_ATTEMPTS 3
#define FILE_MAX      (64 * 1024) /* token files */

char *cmh_aws_strf(const char *fmt, ...)
{
    struct cmh_buf b;
    cmh_buf_init(&b, 0);
    va_list ap;
    va_start(ap, fmt);
    cmh_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    return cmh_buf_take(&b, NULL);
}

void cmh_aws_job_finish(struct cmh_aws_job *j, int rc, const char *fmt, ...)
{
    j->rc = rc;
    j->why[0] = '\0';
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->why, sizeof j->why, fmt, ap);
        va_end(ap);
    }
    j->finished = 1;
    cmh_aws_provider_kick(j->p);
}

void cmh_aws_job_clear(struct cmh_aws_job *j)
{
    cmh_free(j->url);
    j->url = NULL;
    for (size_t i = 0; i < j->nhdr; i++) {
        cmh_free_secret(j->hdr[i]); /* an IMDS token or a container authorization token */
        j->hdr[i] = NULL;
    }
    j->nhdr = 0;
    cmh_free_secret(j->body); /* STS: the web identity token */
    j->body = NULL;
}

static void on_request_done(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res)
{
    struct cmh_aws_job *j = container_of(req, struct cmh_aws_job, req);
    j->in_flight = 0;
    if (j->p->closing)
        return; /* cancelled by free: nobody waits any more */
    j->on_resp(j, res);
}

/* (Re)sends the request described in j: curl_uv copies the headers, the url and the body stay in
 * the job until the answer. */
static int job_send(struct cmh_aws_job *j)
{
    int rc = cmh_curl_uv_start(j->p->curl, &j->req, on_request_done);
    if (rc != 0)
        return rc;
    j->p->requests++;
    j->in_flight = 1;
    return 0;
}

int cmh_aws_job_request(struct cmh_aws_job *j, const char *method, char *url, char **hdr,
                        size_t nhdr, char *body, int allow_http, int credential_endpoint,
                        uint64_t timeout_ms, cmh_aws_step_fn on_resp)
{
    cmh_aws_job_clear(j);
    j->url = url;
    for (size_t i = 0; i < nhdr; i++)
        if (hdr[i] != NULL && j->nhdr < sizeof j->hdr / sizeof j->hdr[0])
            j->hdr[j->nhdr++] = hdr[i];
    j->body = body;
    j->on_resp = on_resp;
    j->attempts = 1;
    if (url == NULL)
        return -ENOMEM;
    j->req = (struct cmh_curl_uv_req){
        .method = method,
        .url = j->url,
        .headers = (const char *const *)j->hdr,
        .nheaders = j->nhdr,
        .body = j->body,
        .body_len = j->body != NULL ? strlen(j->body) : 0,
        .max_body = CMH_AWS_DOC_MAX,
        .allow_http = allow_http,
        .timeout_ms = timeout_ms,
        .no_proxy = credential_endpoint,
    };
    return job_send(j);
}

int cmh_aws_job_retry(struct cmh_aws_job *j, const struct cmh_curl_uv_response *res)
{
    int transient = (res->error == CMH_CURL_OK && res->status >= 500) ||
                    res->error == CMH_CURL_ERR_CONNECT || res->error == CMH_CURL_ERR_RESET;
    if (!transient || j->attempts >= IMDS_ATTEMPTS || j->p->closing)
        return 0;
    j->attempts++;
    CMH_LOG(j->p->log, CMH_LOG_DEBUG, "aws: retrying metadata request", CMH_URL("url", j->url),
            CMH_UINT("attempt", j->attempts), CMH_INT("status", res->status),
            CMH_STR("error", cmh_curl_uv_error_name(res->error)));
    return job_send(j) == 0;
}

void cmh_aws_job_cancel(struct cmh_aws_job *j)
{
    if (j->in_flight)
        cmh_curl_uv_cancel(j->p->curl, &j->req);
    j->in_flight = 0;
}

void cmh_aws_describe(const struct cmh_curl_uv_response *res, char *buf, size_t len)
{
    if (res->error != CMH_CURL_OK)
        snprintf(buf, len, "%s (%s)", cmh_curl_uv_error_name(res->error),
                 res->error_text != NULL ? res->error_text : "");
    else
        snprintf(buf, len, "HTTP %ld", res->status);
}

/* ---------------------------------------------------------------------------------------------
 * Token files */

static void fs_done(struct cmh_aws_job *j, int rc)
{
    char *data = j->fbuf;
    j->fbuf = NULL;
    j->fs_busy = 0;
    if (j->p->closing) {
        cmh_free_secret(data);
        cmh_aws_provider_maybe_release(j->p);
        return;
    }
    if (rc == 0 && data != NULL) {
        data[j->flen] = '\0';
        size_t n = j->flen;
        while (n > 0 && (data[n - 1] == '\n' || data[n - 1] == '\r' || data[n - 1] == ' ' ||
                         data[n - 1] == '\t'))
            data[--n] = '\0';
    }
    j->on_file(j, rc, data);
    cmh_free_secret(data); /* a web identity or a container authorization token */
}

static void on_fs_close(uv_fs_t *req)
{
    struct cmh_aws_job *j = container_of(req, struct cmh_aws_job, fs);
    int rc = (int)(intptr_t)req->data;
    uv_fs_req_cleanup(req);
    fs_done(j, rc);
}

/* Closes the file; the result rc rides in fs.data (uv_fs_close leaves data alone). */
static void fs_finish(struct cmh_aws_job *j, int rc)
{
    j->fs.data = (void *)(intptr_t)rc;
    if (uv_fs_close(j->p->loop, &j->fs, j->fd, on_fs_close) != 0)
        fs_done(j, rc);
}

static void on_fs_read(uv_fs_t *req)
{
    struct cmh_aws_job *j = container_of(req, struct cmh_aws_job, fs);
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    if (n < 0 || j->p->closing) {
        fs_finish(j, n < 0 ? (int)n : -ECANCELED);
        return;
    }
    j->flen += (size_t)n;
    if (n == 0) {
        fs_finish(j, 0);
        return;
    }
    if (j->flen >= FILE_MAX) {
        fs_finish(j, -EFBIG);
        return;
    }
    uv_buf_t b = uv_buf_init(j->fbuf + j->flen, (unsigned)(FILE_MAX - j->flen));
    if (uv_fs_read(j->p->loop, &j->fs, j->fd, &b, 1, -1, on_fs_read) != 0)
        fs_finish(j, -EIO);
}

static void on_fs_open(uv_fs_t *req)
{
    struct cmh_aws_job *j = container_of(req, struct cmh_aws_job, fs);
    ssize_t fd = req->result;
    uv_fs_req_cleanup(req);
    if (fd < 0) {
        fs_done(j, (int)fd);
        return;
    }
    j->fd = (uv_file)fd;
    if (j->p->closing) {
        fs_finish(j, -ECANCELED);
        return;
    }
    j->fbuf = cmh_malloc(FILE_MAX + 1);
    j->flen = 0;
    if (j->fbuf == NULL) {
        fs_finish(j, -ENOMEM);
        return;
    }
    uv_buf_t b = uv_buf_init(j->fbuf, FILE_MAX);
    if (uv_fs_read(j->p->loop, &j->fs, j->fd, &b, 1, -1, on_fs_read) != 0)
        fs_finish(j, -EIO);
}

int cmh_aws_job_read_file(struct cmh_aws_job *j, const char *path, cmh_aws_file_fn on_file)
{
    j->on_file = on_file;
    j->fbuf = NULL;
    int rc = uv_fs_open(j->p->loop, &j->fs, path, O_RDONLY | O_CLOEXEC, 0, on_fs_open);
    if (rc != 0)
        return rc;
    j->fs_busy = 1;
    return 0;
}
