/* EC2 Query answers: the types the client hands out (address blocks in use, tags) and the
 * streaming expat parser it feeds each answer to, piece by piece as it arrives (DescribeSubnets,
 * DescribeNetworkInterfaces, GetSubnetCidrReservations, DescribeTags, and EC2 error documents).
 * Pure: no I/O, so it can be fuzzed alone. A parser belongs to its caller; any one thread. */
#ifndef CMH_EC2_XML_H
#define CMH_EC2_XML_H

#include "cmh/round/subnets.h"

#include <stddef.h>

#define CMH_EC2_TOKEN_MAX   2048 /* longest NextToken kept */
#define CMH_EC2_MAX_SUBNETS 20000

/* IPv4 blocks in use in a subnet: interface addresses (/32), delegated prefixes, reservations. */
#define CMH_EC2_MAX_USED (1u << 20)
struct cmh_ec2_cidrs {
    /* read-only */
    struct cmh_cidr *v;
    size_t n;
    /* private */
    size_t cap;
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
    /* public: set by the caller before cmh_ec2_xml_new */
    const char *action;              /* the root must be <action>Response; NULL: DescribeSubnets */
    struct cmh_ec2_cidrs *used;      /* borrowed; needed by the two actions above */
    struct cmh_subnet_list *subnets; /* borrowed; subnets are appended */
    /* read-only: cleared by cmh_ec2_xml_new, filled by the parser */
    struct cmh_ec2_tag tags[CMH_EC2_MAX_TAGS]; /* a DescribeTags answer's tags, in its order */
    size_t ntags;
    int tags_answer;                    /* the document was a DescribeTagsResponse */
    char next_token[CMH_EC2_TOKEN_MAX]; /* "" on the last page */
    char error_code[64];                /* "" unless the answer is an error document */
    char error_message[512];
    char request_id[128];
};

struct cmh_ec2_xml; /* opaque */

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

#endif
