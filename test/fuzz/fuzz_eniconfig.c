/* Fuzzes the ENIConfig list parser (cmh_eniconfig_parse: the API server's ENIConfigList, whose
 * spec.subnet values join the subnet view). The input is the answer body, as an exact-size
 * allocation. Checks: the ids already in the array stay in place; a refused list appends nothing;
 * every appended id is non-empty and shorter than CMH_ENICONFIG_SUBNET_MAX; in a body without
 * escapes every id appears quoted in it, and there are no more ids than "subnet" keys; a second
 * parse of the same bytes gives the same list. */
#include "cmh/core/alloc.h"
#include "cmh/k8s/eniconfig.h"
#include "cmh/k8s/eniconfig_int.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SEED_ID "subnet-0123456789abcdef0"

static size_t count(const char *buf, size_t len, const char *what)
{
    size_t n = 0, wl = strlen(what);
    for (size_t i = 0; i + wl <= len; i++)
        n += memcmp(buf + i, what, wl) == 0;
    return n;
}

static int quoted_in(const char *buf, size_t len, const char *id)
{
    size_t il = strlen(id);
    for (size_t i = 0; i + il + 2 <= len; i++)
        if (buf[i] == '"' && memcmp(buf + i + 1, id, il) == 0 && buf[i + 1 + il] == '"')
            return 1;
    return 0;
}

static int parse(const char *buf, size_t len, char ***ids, size_t *n)
{
    *n = 1;
    *ids = cmh_malloc(sizeof **ids);
    if (*ids == NULL || ((*ids)[0] = cmh_strdup(SEED_ID)) == NULL)
        abort();
    int rc = cmh_eniconfig_parse(buf, len, ids, n);
    if (rc != 0 && rc != -EBADMSG)
        abort(); /* no allocation fails here */
    if (*n < 1 || strcmp((*ids)[0], SEED_ID) != 0 || (rc != 0 && *n != 1))
        abort();
    return rc;
}

static void release(char **ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cmh_free(ids[i]);
    cmh_free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    char **ids, **again;
    size_t n, m;
    int rc = parse(buf, size, &ids, &n);
    int escapes = memchr(buf, '\\', size) != NULL;
    if (!escapes && n - 1 > count(buf, size, "\"subnet\""))
        abort();
    for (size_t i = 1; i < n; i++) {
        size_t l = strlen(ids[i]);
        if (l == 0 || l >= CMH_ENICONFIG_SUBNET_MAX)
            abort();
        if (!escapes && !quoted_in(buf, size, ids[i]))
            abort();
    }
    if (parse(buf, size, &again, &m) != rc || m != n)
        abort();
    for (size_t i = 0; i < n; i++)
        if (strcmp(ids[i], again[i]) != 0)
            abort();
    release(ids, n);
    release(again, m);
    free(buf);
    return 0;
}
