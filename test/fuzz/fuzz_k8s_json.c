/* Fuzzes the Kubernetes JSON handling of discovery. The first byte picks the mode: even = the rest
 * is a PodList page, odd = the rest is a watch stream whose lines are events applied in order.
 * After either, the pods map must be sorted with unique names, every pod field bounded, and the
 * target set exactly the Running pods with an address. */
#include "cmh/discovery.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const struct cmh_discovery_pods *pods)
{
    size_t want = 0;
    for (size_t i = 0; i < pods->n; i++) {
        const struct cmh_discovery_pod *p = &pods->v[i];
        if (p->name == NULL || p->node == NULL || p->name[0] == '\0' || strlen(p->name) > 253 ||
            strlen(p->node) > 253 || memchr(p->ip, '\0', sizeof p->ip) == NULL)
            abort();
        if (i > 0 && strcmp(pods->v[i - 1].name, p->name) >= 0)
            abort();
        want += p->running && p->ip[0] != '\0';
    }
    struct cmh_discovery_set *set = cmh_discovery_set_build(pods, 1);
    if (set == NULL)
        return;
    if (set->n != want)
        abort();
    for (size_t i = 0; i < set->n; i++)
        if (set->v[i].ip[0] == '\0' || (i > 0 && strcmp(set->v[i - 1].pod, set->v[i].pod) >= 0))
            abort();
    cmh_discovery_set_release(set);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct cmh_discovery_pods pods = {0};
    const char *buf = (const char *)data + 1;
    size_t len = size - 1;
    if (data[0] % 2 == 0) {
        char rv[64], cont[256];
        int rc = cmh_discovery_parse_list(&pods, buf, len, rv, sizeof rv, cont, sizeof cont);
        if (rc == 0 && (strlen(rv) >= sizeof rv || strlen(cont) >= sizeof cont))
            abort();
    } else {
        while (len > 0) {
            const char *nl = memchr(buf, '\n', len);
            size_t n = nl ? (size_t)(nl - buf) : len;
            struct cmh_discovery_event ev;
            size_t before = pods.n;
            int rc = cmh_discovery_parse_event(&pods, buf, n, &ev);
            if (rc == 0 && ev.type == CMH_K8S_EV_DELETED && ev.changed && pods.n != before - 1)
                abort();
            if (rc == 0 && ev.type == CMH_K8S_EV_ADDED && pods.n < before)
                abort();
            if (rc != 0 && pods.n != before)
                abort();
            buf += nl ? n + 1 : n;
            len -= nl ? n + 1 : n;
        }
    }
    check(&pods);
    cmh_discovery_pods_free(&pods);
    return 0;
}
