/* Test seam of the ENIConfig list (include/cmh/k8s/eniconfig.h): its pure parser, for the unit
 * test and the fuzzer. */
#ifndef CMH_K8S_ENICONFIG_INT_H
#define CMH_K8S_ENICONFIG_INT_H

#include <stddef.h>

/* The subnet ids (spec.subnet) of an ENIConfigList, appended to *ids (cmh_malloc'd strings in a
 * cmh_malloc'd array of *n), each non-empty and shorter than CMH_ENICONFIG_SUBNET_MAX. Returns 0,
 * -EBADMSG (not an ENIConfigList) or -ENOMEM. */
int cmh_eniconfig_parse(const char *buf, size_t len, char ***ids, size_t *n);

#endif
