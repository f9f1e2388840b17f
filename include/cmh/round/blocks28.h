/* Prefix delegation's view of a subnet: how many aligned /28 blocks have no address in use, given
 * the addresses and prefixes of its network interfaces and its CIDR reservations. Pure: no I/O,
 * nothing kept; thread: any. */
#ifndef CMH_BLOCKS28_H
#define CMH_BLOCKS28_H

#include "cmh/round/subnets.h"

#include <stddef.h>

/* Widest subnet counted: AWS subnets are /16 to /28. */
#define CMH_BLOCKS28_MIN_PREFIX 16

/* The aligned /28 blocks of subnet (IPv4, prefix CMH_BLOCKS28_MIN_PREFIX..28) that hold none of
 * used[0..n) (IPv4 CIDRs of any length: an address is a /32; the parts outside the subnet are
 * ignored, IPv6 entries too) and none of the 5 addresses AWS reserves (the first four and the
 * last). Returns 0 with *free_blocks set, or -EINVAL for a subnet that is not IPv4 /16../28. */
int cmh_blocks28_free(const struct cmh_cidr *subnet, const struct cmh_cidr *used, size_t n,
                      size_t *free_blocks);

#endif
