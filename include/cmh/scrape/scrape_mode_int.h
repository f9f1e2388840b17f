/* Test seams of scrape_mode.h: the decisions of the scrape modes, for the tests. Not part of the
 * contract: the program never calls these; only the module itself, its tests, fuzzers and
 * benchmarks include this header. */
#ifndef CMH_SCRAPE_MODE_INT_H
#define CMH_SCRAPE_MODE_INT_H

#include "cmh/scrape/scrape_mode.h"

/* 1 for the results after which SCRAPE_MODE=auto tries the proxy: the node's port could not be
 * connected to (refused, timed out, unreachable). A bad body or status proves the path works. */
int cmh_scrape_mode_is_connect_failure(enum cmh_scrape_result r);

/* 1 when name is on the proxy now. */
int cmh_fallback_on_proxy(const struct cmh_fallback *f, const char *name);

#endif
