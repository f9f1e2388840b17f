/* Publishing to CloudWatch, assembled: the credential provider and region/cluster-id resolution
 * (aws_creds), the publisher (cloudwatch), and the adapter between them. Owned by the daemon
 * (cmh_publish_new/_free); thread: the loop thread only. */
#ifndef CMH_PUBLISH_H
#define CMH_PUBLISH_H

#include "cmh/aws/cloudwatch.h"
#include "cmh/core/config.h"
#include "cmh/http/curl_uv.h"
#include "cmh/round/datum.h"

#include <uv.h>

#include <stdbool.h>

struct cmh_log;
struct cmh_aws_provider;
struct cmh_publish;

/* Fires once, from the loop, when region and cluster id are known and the publisher runs (rc 0:
 * cmh_publish_cluster_id is valid), or when that failed (rc < 0, why says what went wrong and fix
 * what to do about it). */
typedef void (*cmh_publish_ready_cb)(struct cmh_publish *p, int rc, const char *why,
                                     const char *fix, void *arg);

/* Starts resolving region and cluster id (AWS_REGION/AWS_CLUSTER_ID from cfg, else the chain),
 * then creates the publisher. envp is read for the AWS SDK variables (credentials, endpoints:
 * AWS_ENDPOINT_URL_CLOUDWATCH, then AWS_ENDPOINT_URL). curl and log are borrowed. Returns 0 or
 * a negative code (logged). */
int cmh_publish_new(struct cmh_publish **out, uv_loop_t *loop, struct cmh_curl_uv *curl,
                    const struct cmh_config *cfg, char *const *envp, struct cmh_log *log,
                    cmh_publish_ready_cb cb, void *arg);

const char *cmh_publish_cluster_id(const struct cmh_publish *p);

/* After ready: where the cluster id came from ("AWS_CLUSTER_ID", "ec2-describe-tags:<tag>",
 * "aws-node-env", "default"); *degraded (when degraded is not NULL) a sentence for /readyz when it
 * is the shared default, else NULL. Without AWS_CLUSTER_ID the node's spec.providerID (NODE_NAME),
 * IMDS, EC2 DescribeTags and the aws-node pods are consulted (include/cmh/aws/cluster_id.h). */
const char *cmh_publish_cluster_id_source(const struct cmh_publish *p, const char **degraded);

/* Queues a round's datums (copied). Returns 0, -EAGAIN before ready, or -ENOMEM. */
int cmh_publish_datums(struct cmh_publish *p, const struct cmh_datum *d, size_t n);

/* Flushes within deadline_ms; cb fires from the loop when done (at once if not ready). */
int cmh_publish_flush(struct cmh_publish *p, uint64_t deadline_ms, void (*cb)(void *arg),
                      void *arg);

/* With leader election: standby true when this replica lost the lease, false when it holds it
 * (see cmh_cloudwatch_standby: what is queued is dropped as not_leader, nothing more is sent).
 * Before ready, remembered and applied when the publisher starts. */
void cmh_publish_standby(struct cmh_publish *p, bool standby);

/* Publisher figures; zeroes before ready. */
void cmh_publish_stats(const struct cmh_publish *p, struct cmh_cloudwatch_stats *out);

/* Publishing that has failed for this many metric intervals in a row is not ready. */
#define CMH_PUBLISH_UNREADY_INTERVALS 3

/* 0 when ready and not refused for lack of permission; else -EAGAIN (resolving), -EACCES (the
 * last credentials request failed, or CloudWatch answers AccessDenied) or -ETIMEDOUT (every
 * PutMetricData attempt for CMH_PUBLISH_UNREADY_INTERVALS intervals failed, whatever the answer),
 * with a sentence for /readyz in why (valid until the next call). */
int cmh_publish_ready(struct cmh_publish *p, const char **why);

/* Abandons what is in flight and frees p (memory of pending requests goes when curl_uv ends
 * them: keep running the loop). */
void cmh_publish_free(struct cmh_publish *p);

#endif
