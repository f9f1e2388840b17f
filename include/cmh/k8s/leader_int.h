/* Test and fuzz seam of leader election (include/cmh/k8s/leader.h): the Lease parser. Pure (no
 * I/O); thread: any. */
#ifndef CMH_LEADER_INT_H
#define CMH_LEADER_INT_H

#include <stddef.h>

#include "cmh/k8s/leader.h"

/* Pure: parses a Lease (the body of a GET, POST or PUT answer) into *out. Returns 0, or -EPROTO
 * when body is not a JSON object with a string metadata.resourceVersion of 1-63 bytes, a spec
 * that is an object (or absent/null), a holderIdentity that is a string of at most 253 bytes (the
 * longest identity) or null, and a renewTime that is a string of at most 63 bytes or null; then
 * *out is zeroed. */
int cmh_leader_lease_parse(const char *body, size_t len, struct cmh_lease_record *out);

#endif
