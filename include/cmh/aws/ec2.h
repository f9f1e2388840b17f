/* The EC2 client: Query API requests (POST form, Version 2016-11-15, SigV4) for DescribeSubnets,
 * a subnet's address usage and DescribeTags, paginated, with full-jitter retries; answers are read
 * by the parser of include/cmh/aws/ec2_xml.h. Owned by its user (the subnet watch, the cluster-id
 * lookup; cmh_ec2_new/_close); thread: the loop thread only. */
#ifndef CMH_EC2_H
#define CMH_EC2_H

#include "cmh/aws/ec2_xml.h"
#include "cmh/round/subnets.h"

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct cmh_log;
struct cmh_curl_uv;
struct cmh_ec2; /* opaque */

/* Fires once per cmh_ec2_describe_subnets, from the loop, never inside the call. rc 0: subnets
 * (sorted by id, owned by the client, valid during the callback only: take what you keep with
 * cmh_ec2_take). rc < 0: why says what failed and what to do (AccessDenied names
 * ec2:DescribeSubnets). */
typedef void (*cmh_ec2_done_cb)(struct cmh_ec2 *e, int rc, struct cmh_subnet_list *subnets,
                                const char *why, void *arg);

/* Fires once per cmh_ec2_close, from the loop, when e's handles have closed, just before its
 * memory goes. */
typedef void (*cmh_ec2_close_cb)(struct cmh_ec2 *e, void *arg);

struct cmh_ec2_opts {
    char *const *envp;     /* AWS SDK variables for credentials and the endpoint; read in new() */
    const char *region;    /* AWS_REGION from the config, or NULL: resolved by the chain */
    uint64_t timeout_ms;   /* one request; 0 = 10 s */
    unsigned max_attempts; /* per page; 0 = 5 */
    uint64_t backoff_base_ms, backoff_cap_ms; /* 0 = 200 ms, 20 s */
    uint64_t seed;                            /* jitter PRNG; 0 = from the clock */
    uint64_t imds_timeout_ms;                 /* 0 = 1000 */
};

/* Sets up the client: the endpoint (AWS_ENDPOINT_URL_EC2, then AWS_ENDPOINT_URL, else
 * https://ec2.<region>.amazonaws.com; plain http only to a loopback address) and the credential
 * chain (include/cmh/aws/aws_creds.h). curl and log are borrowed. Touches no network. Returns 0,
 * -EINVAL (bad endpoint override, logged) or -ENOMEM. */
int cmh_ec2_new(struct cmh_ec2 **out, uv_loop_t *loop, struct cmh_curl_uv *curl,
                const struct cmh_ec2_opts *opts, struct cmh_log *log);

/* Describes the subnets with these ids (nids > 0, SubnetId.N), or every subnet of the region
 * (nids 0), following NextToken to the last page. ids are copied. An id EC2 does not know
 * (InvalidSubnetID.NotFound) is left out and the others are asked again: the ids the message
 * names, or, when it names none of them, every id in a request of its own. The callback then has
 * rc 0 and cmh_ec2_missing says which were left out; rc -ENOENT when none exists. Returns 0, or
 * -EBUSY while a call is running, -ENOMEM. */
int cmh_ec2_describe_subnets(struct cmh_ec2 *e, const char *const *ids, size_t nids,
                             cmh_ec2_done_cb cb, void *arg);

/* The ids of the call whose callback is running that EC2 does not know, in the order they were
 * found; owned by e, valid during the callback only. Returns their number. */
size_t cmh_ec2_missing(const struct cmh_ec2 *e, const char *const **ids);

/* Fires once per cmh_ec2_subnet_usage, from the loop. rc 0: used holds every IPv4 address and
 * prefix of the subnet's network interfaces and its IPv4 CIDR reservations (owned by the client,
 * valid during the callback only). rc < 0: why says what failed (AccessDenied names the
 * permission). */
typedef void (*cmh_ec2_usage_cb)(struct cmh_ec2 *e, int rc, const struct cmh_ec2_cidrs *used,
                                 const char *why, void *arg);

/* What the subnet's addresses are used by: DescribeNetworkInterfaces filtered by subnet-id, then
 * GetSubnetCidrReservations, each at MaxResults 1000 following NextToken, with the retries and
 * backoff of describe_subnets (RequestLimitExceeded included). Returns 0, -EBUSY while a call is
 * running, -EINVAL for an over-long id. */
int cmh_ec2_subnet_usage(struct cmh_ec2 *e, const char *subnet_id, cmh_ec2_usage_cb cb, void *arg);

/* Fires once per cmh_ec2_describe_tags, from the loop, never inside the call. rc 0: the tags EC2
 * answered (n may be 0: none of the keys is set), owned by the client and valid during the
 * callback only. rc < 0: why says what failed (-EACCES names ec2:DescribeTags). */
typedef void (*cmh_ec2_tags_cb)(struct cmh_ec2 *e, int rc, const struct cmh_ec2_tag *tags, size_t n,
                                const char *why, void *arg);

/* DescribeTags of one resource (Filter resource-id) with these keys (Filter key; nkeys 0: every
 * key), with the same signing, retries and credential refresh as DescribeSubnets. The strings are
 * copied. Returns 0, -EBUSY while a call is running, -EINVAL, -ENOMEM. */
int cmh_ec2_describe_tags(struct cmh_ec2 *e, const char *resource_id, const char *const *keys,
                          size_t nkeys, cmh_ec2_tags_cb cb, void *arg);

/* Moves the result out of a done callback's list into *dst (freed first). */
void cmh_ec2_take(struct cmh_subnet_list *src, struct cmh_subnet_list *dst);

/* Requests sent since new (every attempt), for logs and tests. */
uint64_t cmh_ec2_requests(const struct cmh_ec2 *e);

/* Abandons a call in flight (its callback never fires) and closes e (NULL: nothing to do):
 * close_cb (may be NULL) fires with arg from the loop once its handles have closed, then e is
 * freed (keep running the loop). */
void cmh_ec2_close(struct cmh_ec2 *e, cmh_ec2_close_cb close_cb, void *arg);

#endif
