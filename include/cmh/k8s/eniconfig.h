/* The cluster's ENIConfig resources (crd.k8s.amazonaws.com/v1alpha1, the VPC CNI's custom
 * networking), listed over the Kubernetes API when asked: the subnet ids they name (spec.subnet),
 * kept from the last good list. Owned by its user (the subnet watch); thread: the loop thread. */
#ifndef CMH_K8S_ENICONFIG_H
#define CMH_K8S_ENICONFIG_H

#include <stddef.h>

struct cmh_config;
struct cmh_curl_uv;
struct cmh_log;
struct cmh_eniconfig; /* opaque */

/* Every subnet id kept is non-empty and shorter than this (a longer spec.subnet names none). */
#define CMH_ENICONFIG_SUBNET_MAX 64

/* Fires once per cmh_eniconfig_list that returned 0, from the loop. rc 0: the list was read (an
 * absent CRD, 404, is an empty list); rc < 0: it was not (403 without RBAC included, logged), and
 * the subnets of the previous good list stay. */
typedef void (*cmh_eniconfig_done_cb)(struct cmh_eniconfig *l, int rc, void *arg);

/* Sets up the list of the API server at server ("https://host:port", or http:// to a loopback
 * address) through the Kubernetes API helper (k8s/api.h), with the service-account token (read
 * again when a minute old or refused) and the CA of cfg. curl and log are borrowed. Touches no
 * network. Returns 0, -EINVAL (no server) or -ENOMEM. */
int cmh_eniconfig_new(struct cmh_eniconfig **out, struct cmh_curl_uv *curl, const char *server,
                      const struct cmh_config *cfg, struct cmh_log *log);

/* Lists the ENIConfigs once. Returns 0 (cb fires later), -EBUSY while a list is running, or the
 * error of starting the request (cb never fires). */
int cmh_eniconfig_list(struct cmh_eniconfig *l, cmh_eniconfig_done_cb cb, void *arg);

/* The subnet ids of the last good list, in its order (owned by l, valid until the next list
 * ends). Returns their number. */
size_t cmh_eniconfig_subnets(const struct cmh_eniconfig *l, const char *const **ids);

/* Cancels a list in flight (its callback never fires) and frees l at once. */
void cmh_eniconfig_free(struct cmh_eniconfig *l);

#endif
