/* Log lines: one event per line, logfmt and JSON escaping, levels, truncation, doubles. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/core/log.h"

#include <jansson.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Captures what one call writes through a pipe. */
struct capture {
    int fds[2];
    struct cmh_log log;
    char buf[65536];
};

static void cap_open(struct capture *c, enum cmh_log_level min, enum cmh_log_format fmt)
{
    assert_int_equal(pipe(c->fds), 0);
    cmh_log_init(&c->log, min, fmt, c->fds[1]);
}

static const char *cap_read(struct capture *c)
{
    close(c->fds[1]);
    size_t off = 0;
    ssize_t n;
    while ((n = read(c->fds[0], c->buf + off, sizeof c->buf - 1 - off)) > 0)
        off += (size_t)n;
    close(c->fds[0]);
    c->buf[off] = '\0';
    return c->buf;
}

static void text_line_has_utc_timestamp_level_msg_and_quoted_fields(void **state)
{
    struct capture c;
    cap_open(&c, CMH_LOG_INFO, CMH_LOG_TEXT);
    CMH_LOG(&c.log, CMH_LOG_INFO, "round done", CMH_UINT("targets", 5), CMH_STR("node", "a b"),
            CMH_STR("q", "say \"hi\"\n"), CMH_INT("neg", -3), CMH_DBL("ratio", 0.1),
            CMH_BOOL("ok", 1), CMH_STR("empty", ""));
    const char *line = cap_read(&c);
    regex_t re;
    assert_int_equal(
        regcomp(&re,
                "^ts=[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "
                "level=info msg=\"round done\" targets=5 node=\"a b\" "
                "q=\"say \\\\\"hi\\\\\"\\\\n\" neg=-3 ratio=0\\.1 ok=true empty=\"\"\n$",
                REG_EXTENDED | REG_NOSUB),
        0);
    if (regexec(&re, line, 0, NULL, 0) != 0)
        fail_msg("unexpected line: %s", line);
    regfree(&re);
}

static void json_line_parses_and_keeps_types(void **state)
{
    struct capture c;
    cap_open(&c, CMH_LOG_DEBUG, CMH_LOG_JSON);
    CMH_LOG(&c.log, CMH_LOG_WARN, "datum", CMH_STR("metric", "ipamdErr"),
            CMH_JSON("dimensions", "{\"CLUSTER_ID\":\"c1\"}"), CMH_DBL("value", 12.5),
            CMH_DBL("nan", NAN), CMH_STR("ctl", "\x01\t"), CMH_UINT("big", 4294967296ull));
    const char *line = cap_read(&c);
    assert_int_equal(line[strlen(line) - 1], '\n');
    json_error_t jerr;
    json_t *o = json_loads(line, 0, &jerr);
    if (o == NULL)
        fail_msg("not JSON (%s): %s", jerr.text, line);
    assert_string_equal(json_string_value(json_object_get(o, "level")), "warn");
    assert_string_equal(json_string_value(json_object_get(o, "msg")), "datum");
    assert_string_equal(json_string_value(json_object_get(o, "metric")), "ipamdErr");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(o, "dimensions"), "CLUSTER_ID")), "c1");
    assert_true(json_real_value(json_object_get(o, "value")) == 12.5);
    assert_string_equal(json_string_value(json_object_get(o, "nan")), "NaN");
    assert_string_equal(json_string_value(json_object_get(o, "ctl")), "\x01\t");
    const char *ts = json_string_value(json_object_get(o, "ts"));
    assert_non_null(ts);
    assert_int_equal(strlen(ts), 24);
    assert_int_equal(ts[23], 'Z');
    json_decref(o);
}

static void events_below_the_level_are_not_written(void **state)
{
    struct capture c;
    cap_open(&c, CMH_LOG_WARN, CMH_LOG_TEXT);
    CMH_LOG(&c.log, CMH_LOG_INFO, "hidden", CMH_INT("x", 1));
    CMH_LOG(&c.log, CMH_LOG_DEBUG, "hidden", CMH_INT("x", 1));
    CMH_LOG(&c.log, CMH_LOG_ERROR, "shown", CMH_INT("x", 1));
    const char *out = cap_read(&c);
    assert_null(strstr(out, "hidden"));
    assert_non_null(strstr(out, "level=error msg=shown x=1\n"));
}

static void oversized_event_is_cut_to_a_valid_line_that_says_so(void **state)
{
    static char big[CMH_LOG_LINE_MAX * 2];
    memset(big, 'x', sizeof big - 1);
    for (int fmt = CMH_LOG_TEXT; fmt <= CMH_LOG_JSON; fmt++) {
        struct capture c;
        cap_open(&c, CMH_LOG_INFO, (enum cmh_log_format)fmt);
        CMH_LOG(&c.log, CMH_LOG_INFO, "big", CMH_STR("payload", big));
        const char *line = cap_read(&c);
        assert_true(strlen(line) <= CMH_LOG_LINE_MAX);
        assert_int_equal(strchr(line, '\n') - line, (long)strlen(line) - 1);
        if (fmt == CMH_LOG_JSON) {
            json_t *o = json_loads(line, 0, NULL);
            assert_non_null(o);
            assert_true(json_is_true(json_object_get(o, "truncated")));
            json_decref(o);
        } else {
            assert_non_null(strstr(line, " truncated=true\n"));
        }
    }
}

static void write_failure_is_counted_not_fatal(void **state)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    close(fds[0]);
    close(fds[1]);
    struct cmh_log log;
    cmh_log_init(&log, CMH_LOG_INFO, CMH_LOG_TEXT, fds[1]); /* a closed descriptor */
    CMH_LOG(&log, CMH_LOG_INFO, "lost", CMH_INT("x", 1));
    CMH_LOG(&log, CMH_LOG_INFO, "lost", CMH_INT("x", 2));
    assert_int_equal(log.write_errors, 2);
}

static void doubles_print_shortest_round_trip_and_prometheus_specials(void **state)
{
    char b[40];
    const struct {
        double d;
        const char *s;
    } cases[] = {{0.1, "0.1"},
                 {1.0, "1"},
                 {1e21, "1e+21"},
                 {-2.5, "-2.5"},
                 {INFINITY, "+Inf"},
                 {-INFINITY, "-Inf"},
                 {NAN, "NaN"},
                 {1.0 / 3, "0.3333333333333333"},
                 {123456789012345678.0, "1.2345678901234568e+17"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cmh_fmt_double(b, sizeof b, cases[i].d);
        assert_string_equal(b, cases[i].s);
        if (isfinite(cases[i].d))
            assert_true(strtod(b, NULL) == cases[i].d);
    }
}

static void rfc3339_formats_epoch_milliseconds_in_utc(void **state)
{
    char b[32];
    cmh_fmt_rfc3339(b, sizeof b, 1764140225123LL);
    assert_string_equal(b, "2025-11-26T06:57:05.123Z");
    cmh_fmt_rfc3339(b, sizeof b, 0);
    assert_string_equal(b, "1970-01-01T00:00:00.000Z");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(text_line_has_utc_timestamp_level_msg_and_quoted_fields),
        cmocka_unit_test(json_line_parses_and_keeps_types),
        cmocka_unit_test(events_below_the_level_are_not_written),
        cmocka_unit_test(oversized_event_is_cut_to_a_valid_line_that_says_so),
        cmocka_unit_test(write_failure_is_counted_not_fatal),
        cmocka_unit_test(doubles_print_shortest_round_trip_and_prometheus_specials),
        cmocka_unit_test(rfc3339_formats_epoch_milliseconds_in_utc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
