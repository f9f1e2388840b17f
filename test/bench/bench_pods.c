/* Memory per discovered pod: a PodList of N realistic aws-node pods parsed into the pod store,
 * then the published target set built from it; heap bytes (mallinfo2, arena and mmap) per pod.
 * Usage: bench_pods N... ; prints one BENCH line per N. */
#include "cmh/discovery.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>

static size_t heap(void)
{
    struct mallinfo2 m = mallinfo2();
    return m.uordblks + m.hblkhd;
}

static int one(size_t n)
{
    size_t cap = n * 256 + 128, len = 0;
    char *buf = malloc(cap);
    if (buf == NULL)
        return 1;
    len += (size_t)snprintf(buf, cap, "{\"metadata\":{\"resourceVersion\":\"1\"},\"items\":[");
    for (size_t i = 0; i < n && len < cap; i++) {
        unsigned a = (unsigned)(i >> 16) & 255, b = (unsigned)(i >> 8) & 255, c = (unsigned)i & 255;
        len +=
            (size_t)snprintf(buf + len, cap - len,
                             "%s{\"metadata\":{\"name\":\"aws-node-%05zx\"},\"spec\":{\"nodeName\":"
                             "\"ip-10-%u-%u-%u.us-west-2.compute.internal\"},\"status\":{"
                             "\"phase\":\"Running\",\"hostIP\":\"10.%u.%u.%u\"}}",
                             i ? "," : "", i, a, b, c, a, b, c);
    }
    len += (size_t)snprintf(buf + len, cap - len, "]}");
    if (len >= cap) {
        free(buf);
        return 1;
    }
    struct cmh_discovery_pods pods = {0};
    char rv[64], cont[64];
    size_t h0 = heap();
    int rc = cmh_discovery_parse_list(&pods, buf, len, rv, sizeof rv, cont, sizeof cont);
    size_t h1 = heap();
    struct cmh_discovery_set *set = rc == 0 ? cmh_discovery_set_build(&pods, 1) : NULL;
    size_t h2 = heap();
    free(buf);
    if (set == NULL || pods.n != n)
        return 1;
    printf("BENCH pods n=%zu store_bytes_per_pod=%.1f set_bytes_per_pod=%.1f\n", n,
           (double)(h1 - h0) / (double)n, (double)(h2 - h1) / (double)n);
    cmh_discovery_set_release(set);
    cmh_discovery_pods_free(&pods);
    return 0;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (one((size_t)strtoul(argv[i], NULL, 10)) != 0) {
            fprintf(stderr, "bench_pods: %s pods failed\n", argv[i]);
            return 1;
        }
    return 0;
}
