/* The CLUSTER_ID dimension when AWS_CLUSTER_ID is empty, learnt as the original helper did and
 * further: EC2 DescribeTags of the instance this runs on (the first of the tags eks:cluster-name,
 * CLUSTER_ID, Name, the original's rule), the instance and region also from the node's
 * spec.providerID when IMDS is out of reach, then the aws-node pods' CLUSTER_NAME, and only then
 * the shared default k8s-cluster, said in the log and on /readyz. Owned by the publisher
 * (cmh_cluster_finder_new/_free); thread: the loop thread only. The parsers are pure. */
#ifndef CMH_CLUSTER_ID_H
#define CMH_CLUSTER_ID_H

#include "cmh/aws/ec2.h"

#include <stddef.h>
#include <uv.h>

struct cmh_config;
struct cmh_curl_uv;
struct cmh_log;

#define CMH_CLUSTER_DEFAULT "k8s-cluster" /* the original helper's last resort */

/* The tags the original helper asked EC2 for, in its order of preference. */
extern const char *const cmh_cluster_tag_keys[3];

/* The original's rule over a DescribeTags answer: the value of the first of eks:cluster-name,
 * CLUSTER_ID, Name (in that order, whatever the answer's order) whose value is not empty; *key
 * names it. NULL when none. */
const char *cmh_cluster_pick_tag(const struct cmh_ec2_tag *tags, size_t n, const char **key);

/* "aws:///us-west-2a/i-0123456789abcdef0" (the kubelet's spec.providerID on EC2): the region of the
 * zone (us-west-2; local and wavelength zones such as us-west-2-lax-1a give their parent region)
 * and the instance id. Returns 0, or -EPROTO for anything else (Fargate's, another cloud's). */
int cmh_cluster_parse_provider_id(const char *pid, char *region, size_t rlen, char *instance,
                                  size_t ilen);

/* Pure: spec.providerID of a Node object (JSON), cmh_malloc'd into *out. 0, -EPROTO, -ENOMEM. */
int cmh_cluster_node_provider_id(const char *json, size_t len, char **out);

/* Pure: the first non-empty CLUSTER_NAME in the env of a container named aws-node in a PodList
 * (JSON), cmh_malloc'd into *out. 0; -ENOENT when no pod has one; -EPROTO; -ENOMEM. */
int cmh_cluster_aws_node_cluster_name(const char *json, size_t len, char **out);

struct cmh_cluster_finder;

/* Fires once per call, from the loop, never inside it. */
typedef void (*cmh_cluster_node_cb)(struct cmh_cluster_finder *f, void *arg);
/* cluster_id is never NULL; source is one of "ec2-describe-tags:<key>", "aws-node-env",
 * "default"; degraded (NULL unless the default was taken) says why, for /readyz. */
typedef void (*cmh_cluster_found_cb)(struct cmh_cluster_finder *f, const char *cluster_id,
                                     const char *source, const char *degraded, void *arg);

/* cfg, envp (read here: KUBERNETES_SERVICE_HOST/_PORT, NODE_NAME, the AWS SDK variables of the
 * EC2 client) and log are borrowed. Touches no network. 0 or -ENOMEM. */
int cmh_cluster_finder_new(struct cmh_cluster_finder **out, uv_loop_t *loop,
                           struct cmh_curl_uv *curl, const struct cmh_config *cfg,
                           char *const *envp, struct cmh_log *log);

/* The node this pod runs on (NODE_NAME, the downward API's spec.nodeName): GET /api/v1/nodes/NAME
 * and its spec.providerID. Then cmh_cluster_finder_region/_instance say what it gave (NULL when
 * NODE_NAME is unset, the API is out of reach or refuses: logged with the fix). */
int cmh_cluster_finder_node(struct cmh_cluster_finder *f, cmh_cluster_node_cb cb, void *arg);
const char *cmh_cluster_finder_region(const struct cmh_cluster_finder *f);
const char *cmh_cluster_finder_instance(const struct cmh_cluster_finder *f);

/* Looks the cluster id up: DescribeTags of instance_id in region (both may be NULL: skipped),
 * then the aws-node pods' CLUSTER_NAME, then the default. Logs which source was used. */
int cmh_cluster_finder_find(struct cmh_cluster_finder *f, const char *region,
                            const char *instance_id, cmh_cluster_found_cb cb, void *arg);

/* Fires once per cmh_cluster_finder_close, from the loop, when f's timer has closed, just before
 * its memory goes. */
typedef void (*cmh_cluster_finder_close_cb)(struct cmh_cluster_finder *f, void *arg);

/* Abandons what is in flight (no lookup callback fires) and closes f (NULL: nothing to do);
 * close_cb (may be NULL) fires with arg once its timer has closed, then f is freed: keep running
 * the loop. */
void cmh_cluster_finder_close(struct cmh_cluster_finder *f, cmh_cluster_finder_close_cb close_cb,
                              void *arg);

#endif
