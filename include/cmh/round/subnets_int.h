/* Test seams of subnets.h: CIDR and subnet arithmetic, for the tests. Not part of the contract: the
 * program never calls these; only the module itself, its tests, fuzzers and benchmarks include this
 * header. */
#ifndef CMH_SUBNETS_INT_H
#define CMH_SUBNETS_INT_H

#include "cmh/round/subnets.h"

/* 1 when the IP literal ip (IPv4 or IPv6, IPv4-mapped IPv6 counts as IPv4) is inside c, else 0
 * (also for a malformed ip). */
int cmh_cidr_contains(const struct cmh_cidr *c, const char *ip);

/* Usable IPv4 addresses of s: the size of its IPv4 CIDR block less the 5 addresses AWS reserves in
 * every subnet (network, router, DNS, future use, broadcast); 0 when s has no IPv4 block. */
int64_t cmh_subnet_usable_ipv4(const struct cmh_subnet *s);

#endif
