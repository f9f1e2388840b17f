/* Free aligned /28 blocks: one bit per block of the subnet (at most 4096 for a /16), each used
 * range marks the blocks it touches. */
#include "cmh/round/blocks28.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

#define MAX_BLOCKS (1u << (28 - CMH_BLOCKS28_MIN_PREFIX))

static uint32_t v4(const struct cmh_cidr *c)
{
    return (uint32_t)c->addr[0] << 24 | (uint32_t)c->addr[1] << 16 | (uint32_t)c->addr[2] << 8 |
           (uint32_t)c->addr[3];
}

/* The last address of a block of this prefix length starting at first. */
static uint32_t last_of(uint32_t first, unsigned prefix)
{
    return prefix == 0 ? UINT32_MAX : first | (uint32_t)((1ull << (32 - prefix)) - 1);
}

static void mark(uint8_t *used, uint32_t base, uint32_t last_sub, uint32_t first, uint32_t last)
{
    if (last < base || first > last_sub)
        return;
    if (first < base)
        first = base;
    if (last > last_sub)
        last = last_sub;
    for (uint32_t b = (first - base) >> 4; b <= (last - base) >> 4; b++)
        used[b / 8] |= (uint8_t)(1u << (b % 8));
}

int cmh_blocks28_free(const struct cmh_cidr *subnet, const struct cmh_cidr *used, size_t n,
                      size_t *free_blocks)
{
    if (subnet->family != 4 || subnet->prefix < CMH_BLOCKS28_MIN_PREFIX || subnet->prefix > 28)
        return -EINVAL;
    uint8_t bits[MAX_BLOCKS / 8];
    memset(bits, 0, sizeof bits);
    uint32_t base = v4(subnet), last_sub = last_of(base, subnet->prefix);
    uint32_t nblocks = 1u << (28 - subnet->prefix);
    /* AWS keeps the network address, the next three (router, DNS, future) and the last. */
    mark(bits, base, last_sub, base, base + 3);
    mark(bits, base, last_sub, last_sub, last_sub);
    for (size_t i = 0; i < n; i++) {
        if (used[i].family != 4 || used[i].prefix > 32)
            continue;
        uint32_t first =
            v4(&used[i]) & (used[i].prefix ? ~(uint32_t)0 << (32 - used[i].prefix) : 0);
        mark(bits, base, last_sub, first, last_of(first, used[i].prefix));
    }
    size_t k = 0;
    for (uint32_t b = 0; b < nblocks; b++)
        k += !((bits[b / 8] >> (b % 8)) & 1);
    *free_blocks = k;
    return 0;
}
