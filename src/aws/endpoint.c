#include "cmh/aws/endpoint.h"

#include "cmh/core/alloc.h"
#include "cmh/core/config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

const char *cmh_aws_env_get(char *const *envp, const char *name)
{
    const char *v = cmh_env_get(envp, name);
    return v != NULL && v[0] != '\0' ? v : NULL;
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
