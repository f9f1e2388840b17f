#include "cmh/k8s_token.h"

#include "cmh/alloc.h"

#include <ctype.h>
#include <errno.h>
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
        snprintf(why, whylen, "cannot read the token file %s: %s", file, strerror(err));
        cmh_free(buf);
        return -err;
    }
    size_t len = fread(buf, 1, max + 1, f);
    int bad = ferror(f) || len > max;
    fclose(f);
    while (len > 0 && isspace((unsigned char)buf[len - 1]))
        len--;
    buf[len] = '\0';
    if (bad || len == 0 || strpbrk(buf, "\r\n") != NULL) {
        snprintf(why, whylen, "the token file %s is empty, too large or unreadable", file);
        cmh_free(buf);
        return -EINVAL;
    }
    *out = buf;
    return 0;
}

char *cmh_k8s_bearer_header(const char *token)
{
    size_t n = strlen(token) + sizeof "Authorization: Bearer ";
    char *h = cmh_malloc(n);
    if (h != NULL)
        snprintf(h, n, "Authorization: Bearer %s", token);
    return h;
}
