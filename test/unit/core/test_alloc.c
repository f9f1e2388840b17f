/* cmh_grow: room for what is needed, capacity doubled from the first size, the array kept when it
 * already has room, the contents moved when it does not. */
#include "cmh/core/alloc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static void grow_doubles_from_first_and_keeps_contents(void **state)
{
    (void)state;
    int *v = NULL;
    size_t cap = 0, n = 0;
    for (int i = 0; i < 1000; i++) {
        int *nv = cmh_grow(v, &cap, n + 1, sizeof *nv, 16);
        assert_non_null(nv);
        v = nv;
        v[n++] = i;
        /* 16, 32, 64, ...: the least power-of-two multiple of 16 that holds n */
        size_t want = 16;
        while (want < n)
            want *= 2;
        assert_int_equal(cap, want);
    }
    for (int i = 0; i < 1000; i++)
        assert_int_equal(v[i], i);
    /* Room already: the same array, the capacity unchanged. */
    int *same = cmh_grow(v, &cap, 10, sizeof *same, 16);
    assert_ptr_equal(same, v);
    assert_int_equal(cap, 1024);
    /* A jump: straight to a capacity that holds it. */
    int *big = cmh_grow(v, &cap, 5000, sizeof *big, 16);
    assert_non_null(big);
    assert_int_equal(cap, 8192);
    assert_int_equal(big[999], 999);
    cmh_free(big);
}

static void grow_refuses_overflow_and_keeps_the_array(void **state)
{
    (void)state;
    size_t cap = 0;
    int *v = cmh_grow(NULL, &cap, 4, sizeof *v, 4);
    assert_non_null(v);
    v[3] = 7;
    assert_null(cmh_grow(v, &cap, SIZE_MAX / 2 + 2, sizeof *v, 4));
    assert_int_equal(cap, 4);
    assert_null(cmh_grow(v, &cap, SIZE_MAX / 4, sizeof *v, 4)); /* n * size overflows */
    assert_int_equal(cap, 4);
    assert_int_equal(v[3], 7);
    cmh_free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(grow_doubles_from_first_and_keeps_contents),
        cmocka_unit_test(grow_refuses_overflow_and_keeps_the_array),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
