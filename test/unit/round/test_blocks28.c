/* Free aligned /28 blocks against a brute-force count: every address of the subnet marked used or
 * reserved one by one, then every aligned run of 16 checked, over generated interface sets (random
 * addresses, /28 prefixes and reservations of any length, some reaching outside the subnet,
 * fragmented on purpose); a subnet with thousands of free addresses and no free /28 reads 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/round/blocks28.h"
#include "cmh/core/rng.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static struct cmh_cidr cidr4(uint32_t a, unsigned prefix)
{
    struct cmh_cidr c = {.family = 4, .prefix = prefix};
    c.addr[0] = (uint8_t)(a >> 24);
    c.addr[1] = (uint8_t)(a >> 16);
    c.addr[2] = (uint8_t)(a >> 8);
    c.addr[3] = (uint8_t)a;
    return c;
}

/* The oracle: one byte per address. */
static size_t brute(uint32_t base, unsigned prefix, const struct cmh_cidr *used, size_t n,
                    size_t *free_addrs)
{
    uint32_t size = 1u << (32 - prefix);
    uint8_t *in_use = calloc(size, 1);
    for (uint32_t k = 0; k < 4; k++)
        in_use[k] = 1;
    in_use[size - 1] = 1;
    for (size_t i = 0; i < n; i++) {
        uint64_t len = 1ull << (32 - used[i].prefix);
        uint32_t a = (uint32_t)used[i].addr[0] << 24 | (uint32_t)used[i].addr[1] << 16 |
                     (uint32_t)used[i].addr[2] << 8 | used[i].addr[3];
        for (uint64_t x = a; x < (uint64_t)a + len; x++)
            if (x >= base && x < (uint64_t)base + size)
                in_use[x - base] = 1;
    }
    size_t blocks = 0, addrs = 0;
    for (uint32_t x = 0; x < size; x++)
        addrs += !in_use[x];
    for (uint32_t b = 0; b + 16 <= size; b += 16) {
        int free_run = 1;
        for (uint32_t x = b; x < b + 16; x++)
            free_run &= !in_use[x];
        blocks += (size_t)free_run;
    }
    free(in_use);
    if (free_addrs != NULL)
        *free_addrs = addrs;
    return blocks;
}

static void blocks28_equals_brute_force_on_random_fragmented_sets(void **state)
{
    (void)state;
    uint64_t r = 19;
    struct cmh_cidr used[3000];
    for (int round = 0; round < 400; round++) {
        unsigned prefix = 16 + (unsigned)(cmh_rng_next(&r) % 13); /* /16 .. /28 */
        uint32_t size = 1u << (32 - prefix);
        uint32_t base = (uint32_t)(10u << 24 | (cmh_rng_next(&r) & 0xffffff)) & ~(size - 1);
        size_t n = (size_t)(cmh_rng_next(&r) % (size / 8 + 2));
        if (n > 3000)
            n = 3000;
        for (size_t i = 0; i < n; i++) {
            uint64_t kind = cmh_rng_next(&r) % 10;
            uint32_t off = (uint32_t)(cmh_rng_next(&r) % size);
            if (kind < 6) { /* an interface address */
                used[i] = cidr4(base + off, 32);
            } else if (kind < 8) { /* a delegated /28 prefix */
                used[i] = cidr4((base + off) & ~15u, 28);
            } else { /* a reservation, /20 .. /32, maybe reaching outside the subnet */
                unsigned p = 20 + (unsigned)(cmh_rng_next(&r) % 13);
                uint32_t a = base + off - (uint32_t)(cmh_rng_next(&r) % 64);
                used[i] = cidr4(p == 32 ? a : a & ~((1u << (32 - p)) - 1), p);
            }
        }
        /* Fragmented on purpose: every third round, one address in most blocks. */
        if (round % 3 == 0)
            for (uint32_t b = 0; b < size && n < 3000; b += 16)
                if (cmh_rng_next(&r) % 8 != 0)
                    used[n++] = cidr4(base + b + (uint32_t)(cmh_rng_next(&r) % 16), 32);
        struct cmh_cidr sub = cidr4(base, prefix);
        size_t got = 999999;
        assert_int_equal(cmh_blocks28_free(&sub, used, n, &got), 0);
        size_t want = brute(base, prefix, used, n, NULL);
        if (got != want)
            fail_msg("round %d /%u with %zu used: %zu free /28, brute force %zu", round, prefix, n,
                     got, want);
    }
}

static void blocks28_thousands_free_addresses_no_free_block_reads_zero(void **state)
{
    (void)state;
    /* A /20: 4091 usable addresses; one address in use in each of its 256 blocks. */
    static struct cmh_cidr used[256];
    uint32_t base = 10u << 24 | 0x20u << 8;
    for (uint32_t b = 0; b < 256; b++)
        used[b] = cidr4(base + b * 16 + 7, 32);
    struct cmh_cidr sub = cidr4(base, 20);
    size_t got = 1, free_addrs = 0;
    assert_int_equal(cmh_blocks28_free(&sub, used, 256, &got), 0);
    assert_int_equal(got, 0);
    assert_int_equal(brute(base, 20, used, 256, &free_addrs), 0);
    assert_true(free_addrs > 3000);
    /* Release one: exactly one block back (not the first or last: AWS keeps addresses there). */
    assert_int_equal(cmh_blocks28_free(&sub, used + 1, 255, &got), 0);
    assert_int_equal(got, 0);
    used[5] = cidr4(base + 7, 32); /* block 5's address moves into block 0 */
    assert_int_equal(cmh_blocks28_free(&sub, used, 256, &got), 0);
    assert_int_equal(got, 1);
    /* An empty subnet: every block but the first and last; a /28 subnet: none. */
    assert_int_equal(cmh_blocks28_free(&sub, NULL, 0, &got), 0);
    assert_int_equal(got, 254);
    struct cmh_cidr tiny = cidr4(base, 28);
    assert_int_equal(cmh_blocks28_free(&tiny, NULL, 0, &got), 0);
    assert_int_equal(got, 0);
    /* Refused: IPv6, narrower than /28, wider than /16. */
    struct cmh_cidr bad = cidr4(base, 29);
    assert_int_equal(cmh_blocks28_free(&bad, NULL, 0, &got), -EINVAL);
    bad = cidr4(10u << 24, 15);
    assert_int_equal(cmh_blocks28_free(&bad, NULL, 0, &got), -EINVAL);
    bad.family = 6;
    bad.prefix = 64;
    assert_int_equal(cmh_blocks28_free(&bad, NULL, 0, &got), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(blocks28_equals_brute_force_on_random_fragmented_sets),
        cmocka_unit_test(blocks28_thousands_free_addresses_no_free_block_reads_zero),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
