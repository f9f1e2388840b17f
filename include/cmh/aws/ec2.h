/* EC2 DescribeSubnets over the Query API (POST form, Version 2016-11-15, SigV4), paginated, with
 * full-jitter retries, and its streaming XML parser (expat). The client is owned by the daemon or
 * the report command (cmh_ec2_new/_free); thread: the loop thread only. The parser is pure. */
#ifndef CMH_EC2_H
#define CMH_EC2_H

#include "cmh/round/subnets.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct cmh_log;
struct cmh_curl_uv;

/* ---- the pure parser --------------------------------------------------------------------- */

#define CMH_EC2_TOKEN_MAX   2048 /* longest NextToken kept */
#define CMH_EC2_MAX_SUBNETS 20000

/* IPv4 blocks in use in a subnet: interface addresses (/32), delegated prefixes, reservations. */
#define CMH_EC2_MAX_USED (1u << 20)
struct cmh_ec2_cidrs {
    struct cmh_cidr *v;
    size_t n, cap;
};
/* Appends c. Returns 0, -E2BIG past CMH_EC2_MAX_USED, -ENOMEM. */
int cmh_ec2_cidrs_push(struct cmh_ec2_cidrs *l, const struct cmh_cidr *c);
void cmh_ec2_cidrs_free(struct cmh_ec2_cidrs *l);

#define CMH_EC2_MAX_TAGS 50 /* tags kept from one DescribeTags answer */

/* An EC2 tag (DescribeTags tagSet/item): key 1..128 characters, value 0..256. */
struct cmh_ec2_tag {
    char key[129];
    char value[257];
};

/* What one answer said: subnets (appended to the caller's list), the next page's token, or an
 * AWS error (Response/Errors/Error/Code, Message). With action "DescribeNetworkInterfaces" the
 * interfaces' private IPv4 addresses (privateIpAddressesSet) and prefixes (ipv4PrefixSet), with
 * "GetSubnetCidrReservations" the IPv4 reservations' cidr, are appended to used instead; a
 * DescribeTagsResponse's tags go to tags. */
struct cmh_ec2_page {
    const char *action;              /* the root must be <action>Response; NULL: DescribeSubnets */
    struct cmh_ec2_cidrs *used;      /* borrowed; needed by the two actions above */
    struct cmh_subnet_list *subnets; /* borrowed; subnets are appended */
    struct cmh_ec2_tag tags[CMH_EC2_MAX_TAGS]; /* a DescribeTags answer's tags, in its order */
    size_t ntags;
    int tags_answer;                    /* the document was a DescribeTagsResponse */
    char next_token[CMH_EC2_TOKEN_MAX]; /* "" on the last page */
    char error_code[64];                /* "" unless the answer is an error document */
    char error_message[512];
    char request_id[128];
};

struct cmh_ec2_xml; /* private */

/* A parser for one answer, fed in pieces as they arrive. page->subnets must be set; the other
 * fields are cleared here. Returns 0 or -ENOMEM. */
int cmh_ec2_xml_new(struct cmh_ec2_xml **out, struct cmh_ec2_page *page);
/* Feeds len bytes; final marks the end of the document. Returns 0; -EPROTO for anything that is
 * not a DescribeSubnets or DescribeTags answer (a tag without a key, more than CMH_EC2_MAX_TAGS
 * tags: -E2BIG) or an EC2 error document (malformed XML, a DOCTYPE, a subnet without
 * SubnetId/AvailabilityZone/AvailableIpAddressCount, a bad CIDR or count, a field twice, an error
 * without Code), -E2BIG for more than CMH_EC2_MAX_SUBNETS subnets or an over-long field, -ENOMEM.
 * After an error, later calls return the same error. */
int cmh_ec2_xml_feed(struct cmh_ec2_xml *x, const char *data, size_t len, int final);
void cmh_ec2_xml_free(struct cmh_ec2_xml *x);

/* One-shot: new, one feed with final set, free. */
int cmh_ec2_parse(const char *buf, size_t len, struct cmh_ec2_page *page);

/* ---- the client -------------------------------------------------------------------------- */

struct cmh_ec2;

/* Fires once per cmh_ec2_describe_subnets, from the loop, never inside the call. rc 0: subnets
 * (sorted by id, owned by the client, valid during the callback only: take what you keep with
 * cmh_ec2_take). rc < 0: why says what failed and what to do (AccessDenied names
 * ec2:DescribeSubnets). */
typedef void (*cmh_ec2_done_cb)(struct cmh_ec2 *e, int rc, struct cmh_subnet_list *subnets,
                                const char *why, void *arg);

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

/* Requests sent since new (every attempt), for tests and logs. */
uint64_t cmh_ec2_requests(const struct cmh_ec2 *e);

/* Abandons a call in flight (its callback never fires) and frees e once its handles closed
 * (keep running the loop). */
void cmh_ec2_free(struct cmh_ec2 *e);

/* ---- the watch: the daemon's subnet view ------------------------------------------------- */

struct cmh_config;
struct cmh_ec2_watch;

/* Fires after every fetch (rc 0, or < 0 with why), from the loop. */
typedef void (*cmh_ec2_fetch_cb)(void *arg, int rc, const char *why);

/* Fetches the subnets now and then every SUBNET_METRICS_INTERVAL: SUBNET_IDS when set (ENIConfigs
 * are then not read; an unknown id is left out), else every subnet of the region (kept whole;
 * cmh_ec2_watch_view picks the cluster's) plus, with k8s_server (NULL: none), the subnets named
 * by ENIConfig resources (crd.k8s.amazonaws.com/v1alpha1; 404 = the CRD is absent = none; any
 * other failure, 403 without RBAC included, keeps the previous list), listed before every fetch
 * with the service-account token and CA of the config. cfg,
 * envp (read in new) and log are borrowed; on_fetch may be NULL. Returns 0, -EINVAL for a bad
 * SUBNET_IDS or endpoint (logged), -ENOMEM. */
int cmh_ec2_watch_new(struct cmh_ec2_watch **out, uv_loop_t *loop, struct cmh_curl_uv *curl,
                      const struct cmh_config *cfg, char *const *envp, const char *k8s_server,
                      struct cmh_log *log, cmh_ec2_fetch_cb on_fetch, void *arg);

/* The cluster's subnets from the last good fetch: those of SUBNET_IDS, or those holding one of
 * nodes' IPs or named by an ENIConfig; sorted by id, owned by w, valid until the next call. NULL
 * when no fetch succeeded yet or the last good one is older than 3 intervals (stale: logged). */
const struct cmh_subnet_list *cmh_ec2_watch_view(struct cmh_ec2_watch *w,
                                                 const struct cmh_subnets_node *nodes, size_t n);

/* How many ids of SUBNET_IDS EC2 did not know at the last good fetch (each is logged once when it
 * goes missing; the view holds the others). */
size_t cmh_ec2_watch_missing(const struct cmh_ec2_watch *w);

/* After every round (after cmh_ec2_watch_view): whether a node of it reports IPv4 prefixes
 * (awscni_total_ipv4_prefixes > 0). With SUBNET_PREFIX_METRICS=auto the first true turns the free
 * /28 count on for good (prefixes may drop to 0 for a while). While the count is on and has not
 * walked yet, the first walk starts as soon as the view holds subnets; later walks follow
 * SUBNET_PREFIX_INTERVAL. */
void cmh_ec2_watch_prefix_delegation(struct cmh_ec2_watch *w, bool seen);

/* The free /28 count as it stands: on (walks run), per-subnet counts by result, and, in auto mode
 * after a denied usage call (the count is then off for good), why (owned by w; NULL otherwise). */
struct cmh_ec2_prefix_status {
    int on;
    unsigned long long counts_ok, counts_failed, counts_denied;
    const char *denied;
};
void cmh_ec2_watch_prefix_status(const struct cmh_ec2_watch *w, struct cmh_ec2_prefix_status *st);

/* Stops fetching and frees w (keep running the loop until its handles closed). */
void cmh_ec2_watch_free(struct cmh_ec2_watch *w);

/* Pure: the subnet ids (spec.subnet) of an ENIConfigList, appended to *ids (cmh_malloc'd strings
 * in a cmh_malloc'd array of *n). Returns 0, -EBADMSG (not an ENIConfigList) or -ENOMEM. */
int cmh_ec2_parse_eniconfigs(const char *buf, size_t len, char ***ids, size_t *n);

/* Pure: the endpoint URL (override when not NULL/"", else the regional one). Returns the length,
 * -EINVAL for a region that is not [a-z0-9-]+, -ENOSPC. */
int cmh_ec2_endpoint(const char *region, const char *override, char *buf, size_t len);

#endif
