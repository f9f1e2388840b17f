/* Test seams of alloc.h: fault hooks of the allocation wrappers (built with CMH_FAULT_INJECT). Not
 * part of the contract: the program never calls these; only the module itself, its tests, fuzzers
 * and benchmarks include this header. */
#ifndef CMH_ALLOC_INT_H
#define CMH_ALLOC_INT_H

#include "cmh/core/alloc.h"

#ifdef CMH_FAULT_INJECT
/* Test hook: the nth allocation from now (1-based) fails and every later one succeeds; 0 turns the
 * hook off. Returns nothing; cmh_alloc_count() says how many allocations were made since. */
void cmh_alloc_fail_at(unsigned long n);
unsigned long cmh_alloc_count(void);
/* Test hook: fn(p) runs inside every cmh_free (and cmh_free_secret) just before p is released,
 * so a test can read what the memory held at that moment; NULL turns it off. */
void cmh_alloc_on_free(void (*fn)(void *p));
#endif

#endif
