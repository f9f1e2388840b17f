#include "cmh/k8s/token.h"
#include "cmh/k8s/token_int.h"

#include "cmh/core/alloc.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

int cmh_k8s_token_read(const char *file, char **out, char *why, size_t whylen)
{
    /* A few bytes from the kubelet's tmpfs, at most once a minute: a blocking read is fine. */
    static const size_t max = CMH_K8S_TOKEN_MAX;
    char *buf = cmh_malloc(max + 1);
    if (buf == NULL) {
        snprintf(why, whylen, "out of memory reading the token file %s", file);
        return -ENOMEM;
    }
    FILE *f = fopen(file, "re");
    if (f == NULL) {
        int err = errno;
        if (err <= 0)
            err = EIO; /* never 0: 0 means success */
        snprintf(why, whylen, "cannot read the token file %s: %s", file, strerror(err));
        cmh_free(buf); /* nothing read into it */
        return -err;
    }
    /* One byte more than the bound tells a file that is too long; the terminator goes within. */
    size_t len = fread(buf, 1, max + 1, f);
    int bad = ferror(f) || len > max;
    fclose(f);
    if (bad)
        len = 0;
    while (len > 0 && isspace((unsigned char)buf[len - 1]))
        len--;
    buf[len] = '\0';
    if (len == 0 || strpbrk(buf, "\r\n") != NULL) {
        snprintf(why, whylen, "the token file %s is empty, too large or unreadable", file);
        cmh_wipe(buf, max + 1);
        cmh_free(buf);
        return -EINVAL;
    }
    *out = buf;
    return 0;
}

/* "Authorization: Bearer <token>", owned by the caller; NULL when out of memory. */
static char *bearer_header(const char *token)
{
    size_t n = strlen(token) + sizeof "Authorization: Bearer ";
    char *h = cmh_malloc(n);
    if (h != NULL)
        snprintf(h, n, "Authorization: Bearer %s", token);
    return h;
}

int cmh_k8s_token_init(struct cmh_k8s_token *t, const char *file, uint64_t max_age_ms)
{
    memset(t, 0, sizeof *t);
    t->max_age_ms = max_age_ms;
    if (file != NULL && (t->file = cmh_strdup(file)) == NULL)
        return -ENOMEM;
    return 0;
}

int cmh_k8s_token_refresh(struct cmh_k8s_token *t, uint64_t now_ms, char *why, size_t whylen)
{
    if (t->file == NULL || (t->tried && !t->refused && now_ms - t->read_ms < t->max_age_ms))
        return 0;
    t->tried = true;
    t->refused = false;
    t->read_ms = now_ms;
    char *tok = NULL;
    int rc = cmh_k8s_token_read(t->file, &tok, why, whylen);
    if (rc == 0 && tok == NULL) { /* not by contract; keeps the analyzer's every path sound */
        snprintf(why, whylen, "cannot read the token file %s", t->file);
        rc = -EIO;
    }
    if (rc != 0)
        return rc;
    if (t->token != NULL && strcmp(t->token, tok) == 0) {
        cmh_free_secret(tok);
        t->reads++;
        return 0;
    }
    char *header = bearer_header(tok);
    if (header == NULL) {
        cmh_free_secret(tok);
        snprintf(why, whylen, "out of memory reading the token file %s", t->file);
        return -ENOMEM;
    }
    rc = t->token != NULL;
    cmh_free_secret(t->token);
    cmh_free_secret(t->header);
    t->token = tok;
    t->header = header;
    t->reads++;
    return rc;
}

void cmh_k8s_token_free(struct cmh_k8s_token *t)
{
    cmh_free(t->file);
    cmh_free_secret(t->token);
    cmh_free_secret(t->header);
    memset(t, 0, sizeof *t);
}
