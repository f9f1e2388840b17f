/* Fuzzes the DescribeSubnets answer parser (cmh_ec2_xml_*): the input is fed whole and again in
 * two pieces split at a point taken from its first byte; both must agree. Every kept subnet has an
 * id, an AZ, a non-negative count and valid CIDRs; an error answer keeps no subnet. The same input
 * is then read as the answer of the free /28 count's action (DescribeNetworkInterfaces or
 * GetSubnetCidrReservations, by its first byte): whole and split agree, and every block kept is
 * IPv4 with a valid prefix. */
#include "cmh/aws/ec2_xml.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run(const char *buf, size_t len, size_t cut, struct cmh_subnet_list *l,
               struct cmh_ec2_page *p)
{
    struct cmh_ec2_xml *x;
    memset(l, 0, sizeof *l);
    p->subnets = l;
    int rc = cmh_ec2_xml_new(&x, p);
    if (rc != 0)
        return rc;
    rc = cmh_ec2_xml_feed(x, buf, cut, 0);
    if (rc == 0)
        rc = cmh_ec2_xml_feed(x, buf + cut, len - cut, 1);
    cmh_ec2_xml_free(x);
    return rc;
}

static int run_usage(const char *action, const char *buf, size_t len, size_t cut,
                     struct cmh_ec2_cidrs *used)
{
    struct cmh_subnet_list l;
    static struct cmh_ec2_page p;
    memset(used, 0, sizeof *used);
    p.action = action;
    p.used = used;
    int rc = run(buf, len, cut, &l, &p);
    p.action = NULL;
    p.used = NULL;
    if (l.n != 0)
        abort(); /* a usage answer is never read as subnets */
    cmh_subnet_list_free(&l);
    return rc;
}

static void usage_answers(const char *buf, size_t size, size_t cut, int pick)
{
    const char *action = pick ? "DescribeNetworkInterfaces" : "GetSubnetCidrReservations";
    struct cmh_ec2_cidrs u1, u2;
    int rc1 = run_usage(action, buf, size, size, &u1);
    int rc2 = run_usage(action, buf, size, cut, &u2);
    if (rc1 != 0 && rc1 != -EPROTO && rc1 != -E2BIG && rc1 != -ENOMEM)
        abort();
    if (rc1 != rc2 && rc1 != -ENOMEM && rc2 != -ENOMEM)
        abort();
    if (rc1 == 0 && rc2 == 0) {
        if (u1.n != u2.n || (u1.n > 0 && memcmp(u1.v, u2.v, u1.n * sizeof *u1.v) != 0))
            abort();
        for (size_t i = 0; i < u1.n; i++)
            if (u1.v[i].family != 4 || u1.v[i].prefix > 32)
                abort();
    }
    cmh_ec2_cidrs_free(&u1);
    cmh_ec2_cidrs_free(&u2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct cmh_ec2_page p1, p2;
    struct cmh_subnet_list l1, l2;
    const char *buf = (const char *)data;
    size_t cut = size > 0 ? (size_t)data[0] * size / 256 : 0;
    int rc1 = run(buf, size, size, &l1, &p1);
    int rc2 = run(buf, size, cut, &l2, &p2);
    if (rc1 != 0 && rc1 != -EPROTO && rc1 != -E2BIG && rc1 != -ENOMEM)
        abort();
    if (rc1 != rc2 && rc1 != -ENOMEM && rc2 != -ENOMEM)
        abort();
    if (rc1 == 0 && rc2 == 0) {
        if (l1.n != l2.n || strcmp(p1.next_token, p2.next_token) != 0 ||
            strcmp(p1.error_code, p2.error_code) != 0)
            abort();
        if (p1.error_code[0] != '\0' && l1.n != 0)
            abort();
        for (size_t i = 0; i < l1.n; i++) {
            const struct cmh_subnet *s = &l1.v[i];
            if (s->id[0] == '\0' || s->az[0] == '\0' || s->available < 0 ||
                s->ncidrs > CMH_SUBNET_MAX_CIDRS || memcmp(s, &l2.v[i], sizeof *s) != 0)
                abort();
            for (unsigned k = 0; k < s->ncidrs; k++)
                if (s->cidrs[k].prefix > (s->cidrs[k].family == 4 ? 32u : 128u))
                    abort();
        }
    }
    cmh_subnet_list_free(&l1);
    cmh_subnet_list_free(&l2);
    usage_answers(buf, size, cut, size > 0 && (data[0] & 1));
    return 0;
}
