#include "cmh/http/url.h"

#include "cmh/core/alloc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

/* Whether host (as in Host: "127.0.0.1:8080", "[::1]:443") is a loopback address literal. */
static int host_is_loopback(const char *h)
{
    char lit[64];
    size_t l;
    if (h[0] == '[') {
        const char *end = strchr(h, ']');
        l = end ? (size_t)(end - h - 1) : 0;
        if (l == 0 || l >= sizeof lit)
            return 0;
        struct in6_addr a6;
        memcpy(lit, h + 1, l);
        lit[l] = '\0';
        return inet_pton(AF_INET6, lit, &a6) == 1 && memcmp(&a6, &in6addr_loopback, 16) == 0;
    }
    const char *colon = strchr(h, ':');
    l = colon ? (size_t)(colon - h) : strlen(h);
    if (l >= sizeof lit)
        return 0;
    struct in_addr a4;
    memcpy(lit, h, l);
    lit[l] = '\0';
    return inet_pton(AF_INET, lit, &a4) == 1 && (ntohl(a4.s_addr) >> 24) == 127;
}

int cmh_url_split(const char *url, char **host, char **path, int *allow_http)
{
    const char *rest;
    int http = 0;
    *allow_http = 0;
    if (strncmp(url, "https://", 8) == 0) {
        rest = url + 8;
    } else if (strncmp(url, "http://", 7) == 0) {
        rest = url + 7;
        http = 1;
    } else {
        return -EINVAL;
    }
    const char *slash = strchr(rest, '/');
    size_t hl = slash ? (size_t)(slash - rest) : strlen(rest);
    if (hl == 0 || memchr(rest, '?', hl) || memchr(rest, '@', hl) || (slash && strchr(slash, '?')))
        return -EINVAL;
    *host = cmh_strndup(rest, hl);
    *path = cmh_strdup(slash ? slash : "/");
    if (*host == NULL || *path == NULL)
        return -ENOMEM;
    if (http) {
        if (!host_is_loopback(*host))
            return -EPROTONOSUPPORT;
        *allow_http = 1;
    }
    return 0;
}
