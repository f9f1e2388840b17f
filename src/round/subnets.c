#include "cmh/round/subnets.h"
#include "cmh/round/subnets_int.h"

#include "cmh/core/alloc.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- CIDR blocks ------------------------------------------------------------------------- */

int cmh_cidr_parse(const char *s, size_t len, struct cmh_cidr *out)
{
    char buf[64];
    const char *slash = memchr(s, '/', len);
    if (slash == NULL || (size_t)(slash - s) >= sizeof buf || slash == s)
        return -EINVAL;
    size_t al = (size_t)(slash - s);
    memcpy(buf, s, al);
    buf[al] = '\0';
    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, buf, out->addr) == 1)
        out->family = 4;
    else if (inet_pton(AF_INET6, buf, out->addr) == 1)
        out->family = 6;
    else
        return -EINVAL;
    /* The prefix: 1 to 3 digits, nothing else. */
    const char *p = slash + 1, *end = s + len;
    size_t pl = (size_t)(end - p);
    if (pl == 0 || pl > 3)
        return -EINVAL;
    unsigned prefix = 0;
    for (; p < end; p++) {
        if (!isdigit((unsigned char)*p))
            return -EINVAL;
        prefix = prefix * 10 + (unsigned)(*p - '0');
    }
    unsigned bits = out->family == 4 ? 32 : 128;
    if (prefix > bits)
        return -EINVAL;
    out->prefix = prefix;
    /* Host bits must be zero, as EC2 writes them. */
    for (unsigned b = prefix; b < bits; b++)
        if (out->addr[b / 8] & (0x80u >> (b % 8)))
            return -EINVAL;
    return 0;
}

static int prefix_match(const uint8_t *a, const uint8_t *b, unsigned prefix)
{
    unsigned whole = prefix / 8, rest = prefix % 8;
    if (memcmp(a, b, whole) != 0)
        return 0;
    if (rest == 0)
        return 1;
    uint8_t mask = (uint8_t)(0xffu << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

/* An IP literal as family 4 or 6 bytes; IPv4-mapped IPv6 becomes IPv4. Returns the family or 0. */
static int parse_ip(const char *ip, uint8_t addr[16])
{
    if (inet_pton(AF_INET, ip, addr) == 1)
        return 4;
    if (inet_pton(AF_INET6, ip, addr) != 1)
        return 0;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(addr, mapped, 12) == 0) {
        memmove(addr, addr + 12, 4);
        return 4;
    }
    return 6;
}

int cmh_cidr_contains(const struct cmh_cidr *c, const char *ip)
{
    uint8_t addr[16];
    int family = parse_ip(ip, addr);
    return family != 0 && family == c->family && prefix_match(addr, c->addr, c->prefix);
}

/* ---- subnet lists ------------------------------------------------------------------------ */

int cmh_subnet_list_push(struct cmh_subnet_list *l, const struct cmh_subnet *s)
{
    struct cmh_subnet *v = cmh_grow(l->v, &l->cap, l->n + 1, sizeof *v, 16);
    if (v == NULL)
        return -ENOMEM;
    l->v = v;
    l->v[l->n++] = *s;
    return 0;
}

void cmh_subnet_list_free(struct cmh_subnet_list *l)
{
    cmh_free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

static int cmp_subnet(const void *x, const void *y)
{
    const struct cmh_subnet *a = x, *b = y;
    return strcmp(a->id, b->id);
}

void cmh_subnet_list_sort(struct cmh_subnet_list *l)
{
    if (l->n < 2)
        return;
    /* Stable enough for "the first stays": equal ids are dropped after sorting, and qsort's
     * choice among equal ids does not matter because EC2 never answers one id twice with
     * different data within a fetch. */
    qsort(l->v, l->n, sizeof *l->v, cmp_subnet);
    size_t k = 1;
    for (size_t i = 1; i < l->n; i++)
        if (strcmp(l->v[i].id, l->v[k - 1].id) != 0)
            l->v[k++] = l->v[i];
    l->n = k;
}

long cmh_subnet_list_find_id(const struct cmh_subnet_list *l, const char *id)
{
    size_t lo = 0, hi = l->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(l->v[mid].id, id);
        if (c == 0)
            return (long)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

int64_t cmh_subnet_usable_ipv4(const struct cmh_subnet *s)
{
    for (unsigned k = 0; k < s->ncidrs; k++) {
        const struct cmh_cidr *c = &s->cidrs[k];
        if (c->family != 4)
            continue;
        int64_t size = (int64_t)1 << (32 - c->prefix);
        return size > 5 ? size - 5 : 0;
    }
    return 0;
}

long cmh_subnets_find_ip(const struct cmh_subnet_list *l, const char *ip)
{
    uint8_t addr[16];
    int family = parse_ip(ip, addr);
    if (family == 0)
        return -1;
    long best = -1;
    unsigned best_prefix = 0;
    for (size_t i = 0; i < l->n; i++) {
        for (unsigned k = 0; k < l->v[i].ncidrs; k++) {
            const struct cmh_cidr *c = &l->v[i].cidrs[k];
            if (c->family == family && prefix_match(addr, c->addr, c->prefix) &&
                (best < 0 || c->prefix > best_prefix)) {
                best = (long)i;
                best_prefix = c->prefix;
            }
        }
    }
    return best;
}

/* ---- datums ------------------------------------------------------------------------------ */

/* The IP gauges summed over a group of nodes (an AZ). */
struct sums {
    double assigned, total, max;
    int has_assigned, has_total, has_max;
};

static void add_node(struct sums *s, const struct cmh_agg_node_info *ni)
{
    if ((ni->present >> CMH_M_ASSIGNED_IP) & 1) {
        s->assigned += ni->assigned;
        s->has_assigned = 1;
    }
    if ((ni->present >> CMH_M_TOTAL_IP) & 1) {
        s->total += ni->total;
        s->has_total = 1;
    }
    if ((ni->present >> CMH_M_IP_MAX) & 1) {
        s->max += ni->max;
        s->has_max = 1;
    }
}

static int emit_sums(struct cmh_agg *a, const struct sums *s, const struct cmh_dim *dim)
{
    int rc = 0;
    if (s->has_assigned)
        rc = cmh_agg_emit(a, CMH_M_ASSIGNED_IP, s->assigned, dim, 1);
    if (rc == 0 && s->has_total)
        rc = cmh_agg_emit(a, CMH_M_TOTAL_IP, s->total, dim, 1);
    if (rc == 0 && s->has_max)
        rc = cmh_agg_emit(a, CMH_M_IP_MAX, s->max, dim, 1);
    if (rc == 0 && s->has_assigned && s->has_total)
        rc = cmh_agg_emit(a, CMH_M_AVAILABLE_IP, s->total - s->assigned, dim, 1);
    return rc;
}

/* Distinct AZ names of the view, sorted, plus "unknown" last when asked. */
static int az_list(const struct cmh_subnet_list *view, const char ***out, size_t *n)
{
    const char **azs = cmh_calloc(view->n + 1, sizeof *azs);
    if (azs == NULL)
        return -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < view->n; i++) {
        size_t j = 0;
        while (j < k && strcmp(azs[j], view->v[i].az) != 0)
            j++;
        if (j == k)
            azs[k++] = view->v[i].az;
    }
    /* Insertion sort: a handful of AZs. */
    for (size_t i = 1; i < k; i++)
        for (size_t j = i; j > 0 && strcmp(azs[j - 1], azs[j]) > 0; j--) {
            const char *t = azs[j];
            azs[j] = azs[j - 1];
            azs[j - 1] = t;
        }
    *out = azs;
    *n = k;
    return 0;
}

static size_t az_index(const char *const *azs, size_t n, const char *az)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(azs[i], az) == 0)
            return i;
    return n;
}

static int cmp_node_name(const void *x, const void *y)
{
    const struct cmh_subnets_node *a = x, *b = y;
    return strcmp(a->name, b->name);
}

struct ranked {
    size_t index;
    double room;
    const char *name;
};

static int cmp_ranked(const void *x, const void *y)
{
    const struct ranked *a = x, *b = y;
    if (a->room != b->room)
        return a->room < b->room ? -1 : 1;
    return strcmp(a->name, b->name);
}

static int node_datums(struct cmh_agg *a, const struct cmh_subnets_opts *o)
{
    size_t nn = cmh_agg_nodes(a), k = 0;
    struct ranked *r = cmh_calloc(nn ? nn : 1, sizeof *r);
    if (r == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < nn; i++) {
        struct cmh_agg_node_info ni;
        cmh_agg_node_info(a, i, &ni);
        if (!ni.fresh)
            continue;
        /* A node without the capacity figures sorts last: it cannot be near exhaustion. */
        double room = ((ni.present >> CMH_M_IP_MAX) & 1) ? ni.max - ni.assigned : 1e300;
        r[k++] = (struct ranked){i, room, ni.name};
    }
    qsort(r, k, sizeof *r, cmp_ranked);
    if (k > o->per_node_max)
        k = o->per_node_max;
    int rc = 0;
    for (size_t i = 0; i < k && rc == 0; i++) {
        struct cmh_agg_node_info ni;
        cmh_agg_node_info(a, r[i].index, &ni);
        struct sums s = {0};
        add_node(&s, &ni);
        struct cmh_dim dim = {"NodeName", ni.name};
        rc = emit_sums(a, &s, &dim);
    }
    cmh_free(r);
    return rc;
}

/* How full a block of addresses is, in percent; clamped, since EC2's count of free addresses and
 * the block's size come from different fields. */
static double utilization(double usable, double available)
{
    double u = 100.0 * (usable - available) / usable;
    return u < 0 ? 0 : u > 100 ? 100 : u;
}

/* Free, usable and used-percent per subnet and per AZ, the emptiest and the fullest subnet. */
static int subnet_datums(struct cmh_agg *a, const struct cmh_subnet_list *view,
                         const char *const *azs, size_t naz)
{
    int rc = 0;
    double min = 0, max_util = 0;
    int has_util = 0;
    for (size_t i = 0; i < view->n && rc == 0; i++) {
        const struct cmh_subnet *sn = &view->v[i];
        struct cmh_dim dim = {"SubnetId", sn->id};
        double avail = (double)sn->available, usable = (double)cmh_subnet_usable_ipv4(sn);
        rc = cmh_agg_emit(a, CMH_M_SUBNET_AVAILABLE_IP, avail, &dim, 1);
        if (i == 0 || avail < min)
            min = avail;
        if (rc == 0 && usable > 0) {
            double u = utilization(usable, avail);
            rc = cmh_agg_emit(a, CMH_M_SUBNET_TOTAL_IP, usable, &dim, 1);
            if (rc == 0)
                rc = cmh_agg_emit(a, CMH_M_SUBNET_IP_UTILIZATION, u, &dim, 1);
            if (!has_util || u > max_util)
                max_util = u;
            has_util = 1;
        }
    }
    for (size_t z = 0; z < naz && rc == 0; z++) {
        /* The AZ's utilization is over the subnets whose size is known, free IPs over all. */
        double sum = 0, usable = 0, avail_sized = 0;
        for (size_t i = 0; i < view->n; i++) {
            const struct cmh_subnet *sn = &view->v[i];
            if (strcmp(sn->az, azs[z]) != 0)
                continue;
            sum += (double)sn->available;
            double u = (double)cmh_subnet_usable_ipv4(sn);
            if (u > 0) {
                usable += u;
                avail_sized += (double)sn->available;
            }
        }
        struct cmh_dim dim = {"AvailabilityZone", azs[z]};
        rc = cmh_agg_emit(a, CMH_M_SUBNET_AVAILABLE_IP, sum, &dim, 1);
        if (rc == 0 && usable > 0) {
            rc = cmh_agg_emit(a, CMH_M_SUBNET_TOTAL_IP, usable, &dim, 1);
            if (rc == 0)
                rc = cmh_agg_emit(a, CMH_M_SUBNET_IP_UTILIZATION, utilization(usable, avail_sized),
                                  &dim, 1);
        }
    }
    if (rc == 0)
        rc = cmh_agg_emit(a, CMH_M_MIN_SUBNET_AVAILABLE_IP, min, NULL, 0);
    if (rc == 0 && has_util)
        rc = cmh_agg_emit(a, CMH_M_MAX_SUBNET_IP_UTILIZATION, max_util, NULL, 0);
    return rc;
}

/* Time to exhaustion: per subnet that has a forecast, the soonest per AZ (of azs[0..naz): none
 * without CW_PER_AZ), the soonest overall; and the free /28 blocks and their forecast per subnet
 * that has them. */
static int forecast_datums(struct cmh_agg *a, const struct cmh_subnet_list *view,
                           const char *const *azs, size_t naz)
{
    int rc = 0, any = 0;
    double min = 0;
    for (size_t i = 0; i < view->n && rc == 0; i++) {
        const struct cmh_subnet *s = &view->v[i];
        struct cmh_dim dim = {"SubnetId", s->id};
        if (s->has_free_prefixes)
            rc = cmh_agg_emit(a, CMH_M_SUBNET_FREE_PREFIXES, (double)s->free_prefixes, &dim, 1);
        if (rc == 0 && s->has_prefix_tte)
            rc = cmh_agg_emit(a, CMH_M_SUBNET_PREFIX_TTE, s->prefix_tte_s, &dim, 1);
        if (rc != 0 || !s->has_tte)
            continue;
        rc = cmh_agg_emit(a, CMH_M_SUBNET_TTE, s->tte_s, &dim, 1);
        if (!any || s->tte_s < min)
            min = s->tte_s;
        any = 1;
    }
    for (size_t z = 0; z < naz && rc == 0; z++) {
        int az_any = 0;
        double az_min = 0;
        for (size_t i = 0; i < view->n; i++) {
            const struct cmh_subnet *s = &view->v[i];
            if (s->has_tte && strcmp(s->az, azs[z]) == 0 && (!az_any || s->tte_s < az_min)) {
                az_min = s->tte_s;
                az_any = 1;
            }
        }
        struct cmh_dim dim = {"AvailabilityZone", azs[z]};
        if (az_any)
            rc = cmh_agg_emit(a, CMH_M_SUBNET_TTE, az_min, &dim, 1);
    }
    if (rc == 0 && any)
        rc = cmh_agg_emit(a, CMH_M_MIN_TTE, min, NULL, 0);
    return rc;
}

int cmh_subnets_round_datums(struct cmh_agg *a, const struct cmh_subnet_list *view,
                             const struct cmh_subnets_node *nodes, size_t n,
                             const struct cmh_subnets_opts *o)
{
    int rc = 0;
    const char **azs = NULL;
    struct sums *per_az = NULL;
    struct cmh_subnets_node *sorted = NULL;
    size_t naz = 0;
    if (view != NULL && view->n > 0) {
        rc = az_list(view, &azs, &naz);
        if (rc == 0)
            rc = subnet_datums(a, view, azs, naz);
        if (rc == 0)
            rc = forecast_datums(a, view, azs, o->per_az ? naz : 0);
        if (rc != 0)
            goto out;
    }
    if (o->per_az && view != NULL) {
        /* One slot per AZ plus one for "unknown". Nodes are matched to targets by name; a node
         * that was a target of the round always has one. */
        per_az = cmh_calloc(naz + 1, sizeof *per_az);
        if (per_az == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        sorted = cmh_calloc(n ? n : 1, sizeof *sorted);
        if (sorted == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        memcpy(sorted, nodes, n * sizeof *sorted);
        qsort(sorted, n, sizeof *sorted, cmp_node_name);
        size_t nn = cmh_agg_nodes(a);
        for (size_t i = 0; i < nn; i++) {
            struct cmh_agg_node_info ni;
            cmh_agg_node_info(a, i, &ni);
            if (!ni.counted)
                continue;
            size_t slot = naz;
            struct cmh_subnets_node key = {ni.name, NULL};
            const struct cmh_subnets_node *t =
                bsearch(&key, sorted, n, sizeof *sorted, cmp_node_name);
            long s = t != NULL ? cmh_subnets_find_ip(view, t->ip) : -1;
            if (s >= 0)
                slot = az_index(azs, naz, view->v[s].az);
            add_node(&per_az[slot], &ni);
        }
        for (size_t z = 0; z <= naz && rc == 0; z++) {
            struct cmh_dim dim = {"AvailabilityZone", z < naz ? azs[z] : CMH_SUBNETS_AZ_UNKNOWN};
            rc = emit_sums(a, &per_az[z], &dim);
        }
        if (rc != 0)
            goto out;
    }
    if (o->per_node && o->per_node_max > 0)
        rc = node_datums(a, o);
out:
    cmh_free(sorted);
    cmh_free(per_az);
    cmh_free(azs);
    return rc;
}
