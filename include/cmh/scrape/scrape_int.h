/* Test seams of scrape.h: one response parsed without a socket, for the tests and the fuzzer. Not
 * part of the contract: the program never calls these; only the module itself, its tests, fuzzers
 * and benchmarks include this header. */
#ifndef CMH_SCRAPE_INT_H
#define CMH_SCRAPE_INT_H

#include "cmh/scrape/scrape.h"

/* Pure, for fuzzing and tests: one response's bytes, fed in reads of at most chunk bytes (0: one
 * read), then the end of the stream if it is not complete by then, through the same llhttp
 * settings, header/body size caps (o->max_header, o->max_body), status, Content-Type and
 * Content-Encoding checks, gzip inflation and consumer calls (target index 0) as a scrape over a
 * socket. Returns the result (a response cut short is CMH_SCRAPE_TRUNCATED); rec (may be NULL)
 * gets result, http_status and bytes; *keep_alive (may be NULL) whether the connection could be
 * kept for the next round. */
enum cmh_scrape_result cmh_scrape_parse_response(const struct cmh_scrape_opts *o,
                                                 const struct cmh_scrape_consumer *consumer,
                                                 const char *buf, size_t len, size_t chunk,
                                                 struct cmh_scrape_record *rec, int *keep_alive);

#endif
