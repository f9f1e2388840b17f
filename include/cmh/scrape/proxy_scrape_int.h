/* Test seams of proxy_scrape.h: the proxy URL of a pod, for the tests. Not part of the contract:
 * the program never calls these; only the module itself, its tests, fuzzers and benchmarks include
 * this header. */
#ifndef CMH_PROXY_SCRAPE_INT_H
#define CMH_PROXY_SCRAPE_INT_H

#include "cmh/scrape/proxy_scrape.h"

/* "https://server/api/v1/namespaces/NS/pods/POD:PORT/proxy/metrics" into buf. Returns 0, -EINVAL
 * when ns or pod is not a DNS-1123 name, or -ENOSPC. */
int cmh_proxy_scrape_url(char *buf, size_t len, const char *server, const char *ns, const char *pod,
                         uint16_t port);

#endif
