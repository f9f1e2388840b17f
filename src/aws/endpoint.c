#include "cmh/aws/endpoint.h"

#include "cmh/core/alloc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

const char *cmh_aws_env_get(char *const *envp, const char *name)
{
    size_t n = strlen(name);
    for (char *const *e = envp; e != NULL && *e != NULL; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=' && (*e)[n + 1] != '\0')
            return *e + n + 1;
    return NULL;
}

const char *cmh_aws_endpoint_override(char *const *envp, const char *service_var)
{
    const char *v = cmh_aws_env_get(envp, service_var);
    return v != NULL ? v : cmh_aws_env_get(envp, "AWS_ENDPOINT_URL");
}

int cmh_aws_endpoint_url(const char *prefix, const char *region, const char *override, char *buf,
                         size_t len)
{
    int n;
    if (override != NULL && override[0] != '\0') {
        n = snprintf(buf, len, "%s", override);
    } else {
        if (region == NULL || region[0] == '\0')
            return -EINVAL;
        for (const char *c = region; *c; c++)
            if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-'))
                return -EINVAL;
        const char *suffix = "amazonaws.com";
        if (strncmp(region, "cn-", 3) == 0)
            suffix = "amazonaws.com.cn";
        else if (strncmp(region, "us-isob-", 8) == 0)
            suffix = "sc2s.sgov.gov";
        else if (strncmp(region, "us-iso-", 7) == 0)
            suffix = "c2s.ic.gov";
        n = snprintf(buf, len, "https://%s.%s.%s", prefix, region, suffix);
    }
    if (n < 0 || (size_t)n >= len)
        return -ENOSPC;
    return n;
}

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

int cmh_aws_endpoint_split(const char *url, char **host, char **path, int *allow_http)
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

int cmh_aws_header_add(char **hdr, size_t *n, size_t max, const char *name, const char *value)
{
    if (*n >= max)
        return -ENOSPC;
    size_t l = strlen(name) + strlen(value) + 3;
    char *h = cmh_malloc(l);
    if (h == NULL)
        return -ENOMEM;
    snprintf(h, l, "%s: %s", name, value);
    hdr[(*n)++] = h;
    return 0;
}
