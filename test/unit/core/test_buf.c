/* The growable buffer and the percent-encoder: cap, sticky failure, take, reuse, and the
 * encoding of every byte value against the RFC 3986 rule written out independently here. */
#include "cmh/core/alloc.h"
#include "cmh/core/buf.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

static void appends_printf_and_take(void **state)
{
    (void)state;
    struct cmh_buf b;
    cmh_buf_init(&b, 0);
    assert_string_equal(cmh_buf_str(&b), "");
    assert_null(cmh_buf_ptr(&b));
    assert_int_equal(cmh_buf_addstr(&b, "a="), 0);
    assert_int_equal(cmh_buf_printf(&b, "%d/%s", 42, "x"), 0);
    assert_int_equal(cmh_buf_addc(&b, '!'), 0);
    assert_string_equal(cmh_buf_str(&b), "a=42/x!");
    /* Past the first allocation (256) and several doublings. */
    for (int i = 0; i < 1000; i++)
        assert_int_equal(cmh_buf_add(&b, "0123456789", 10), 0);
    assert_int_equal(cmh_buf_len(&b), 7 + 10000);
    size_t len = 0;
    char *s = cmh_buf_take(&b, &len);
    assert_non_null(s);
    assert_int_equal(len, 10007);
    assert_int_equal(strlen(s), 10007);
    assert_memory_equal(s, "a=42/x!0123", 11);
    cmh_free(s);
    /* Taken: the buffer is empty and usable again. */
    assert_int_equal(cmh_buf_len(&b), 0);
    s = cmh_buf_take(&b, NULL);
    assert_string_equal(s, "");
    cmh_free(s);
    cmh_buf_free(&b);
}

static void cap_fails_and_stays_failed(void **state)
{
    (void)state;
    struct cmh_buf b;
    cmh_buf_init(&b, 8);
    assert_int_equal(cmh_buf_addstr(&b, "12345678"), 0); /* exactly the cap */
    assert_int_equal(cmh_buf_addc(&b, '9'), -E2BIG);
    assert_int_equal(cmh_buf_err(&b), -E2BIG);
    assert_int_equal(cmh_buf_len(&b), 0); /* the content went with the failure */
    assert_int_equal(cmh_buf_addstr(&b, ""), -E2BIG);
    assert_int_equal(cmh_buf_printf(&b, "x"), -E2BIG);
    assert_null(cmh_buf_take(&b, NULL));
    /* Reset clears the failure and keeps the cap. */
    cmh_buf_reset(&b);
    assert_int_equal(cmh_buf_err(&b), 0);
    assert_int_equal(cmh_buf_printf(&b, "%s", "123456789"), -E2BIG);
    cmh_buf_reset(&b);
    assert_int_equal(cmh_buf_add_pct(&b, " ", 1, 0), 0);       /* "%20": 3 bytes */
    assert_int_equal(cmh_buf_add_pct(&b, "  ", 2, 0), -E2BIG); /* 3 + 6 > 8 */
    cmh_buf_free(&b);
    assert_int_equal(cmh_buf_err(&b), 0);
    assert_int_equal(cmh_buf_addstr(&b, "12345678"), 0);
    cmh_buf_free(&b);
}

static void reset_keeps_memory(void **state)
{
    (void)state;
    struct cmh_buf b;
    cmh_buf_init(&b, 0);
    assert_int_equal(cmh_buf_addstr(&b, "hello"), 0);
    char *p = cmh_buf_ptr(&b);
    cmh_buf_reset(&b);
    assert_string_equal(cmh_buf_str(&b), "");
    assert_int_equal(cmh_buf_addstr(&b, "world"), 0);
    assert_ptr_equal(cmh_buf_ptr(&b), p);
    assert_string_equal(cmh_buf_str(&b), "world");
    cmh_buf_free(&b);
}

/* RFC 3986 section 2.3, spelled out as a set rather than by ranges. */
static int rfc3986_unreserved(int c)
{
    static const char set[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
    return c != 0 && strchr(set, c) != NULL;
}

static void pct_every_byte(void **state)
{
    (void)state;
    for (int slash = 0; slash < 2; slash++) {
        for (int c = 0; c < 256; c++) {
            char in = (char)c, out[8], want[8];
            if (rfc3986_unreserved(c) || (slash && c == '/'))
                snprintf(want, sizeof want, "%c", c);
            else
                snprintf(want, sizeof want, "%%%02X", c);
            size_t n = cmh_pct_encode(out, sizeof out, &in, 1, slash ? CMH_PCT_KEEP_SLASH : 0);
            assert_int_equal(n, strlen(want));
            assert_string_equal(out, want);
        }
    }
    /* Too small: only whole characters, always terminated, the full length returned. */
    char small[4];
    assert_int_equal(cmh_pct_encode(small, sizeof small, "a b", 3, 0), 5);
    assert_string_equal(small, "a");
    assert_int_equal(cmh_pct_encode(NULL, 0, "a/b c", 5, CMH_PCT_KEEP_SLASH), 7);
    struct cmh_buf b;
    cmh_buf_init(&b, 0);
    assert_int_equal(cmh_buf_add_pct(&b, "k8s-app=aws-node,x y", 20, 0), 0);
    assert_string_equal(cmh_buf_str(&b), "k8s-app%3Daws-node%2Cx%20y");
    cmh_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(appends_printf_and_take),
        cmocka_unit_test(cap_fails_and_stays_failed),
        cmocka_unit_test(reset_keeps_memory),
        cmocka_unit_test(pct_every_byte),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
