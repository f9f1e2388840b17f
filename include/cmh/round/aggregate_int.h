/* Test seams of aggregate.h: the parser callbacks cmh_agg_prom_options installs, for the tests. Not
 * part of the contract: the program never calls these; only the module itself, its tests, fuzzers
 * and benchmarks include this header. */
#ifndef CMH_AGGREGATE_INT_H
#define CMH_AGGREGATE_INT_H

#include "cmh/round/aggregate.h"

/* Parser callbacks. want: arg unused (may be NULL); wants every published family,
 * process_start_time_seconds and every "awscni_" family the table does not know (to count it).
 * on_family: arg is the struct cmh_agg_scrape; notes an unknown family. on_sample: arg is the
 * struct cmh_agg_scrape; returns non-zero (and sets s->reason) on a value the aggregator refuses: a
 * gauge or counter that is not a count (negative, fractional, not finite, a counter above 2^53), a
 * node's gauge total above what any EC2 instance can have (bounds in aggregate.c), too many series.
 */
int cmh_agg_want(void *arg, const char *family, size_t len, enum cmh_prom_type type);
int cmh_agg_on_family(void *arg, const struct cmh_prom_family *family);
int cmh_agg_on_sample(void *arg, const struct cmh_prom_sample *sample);

#endif
