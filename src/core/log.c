#include "cmh/core/log.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const level_names[] = {"debug", "info", "warn", "error"};

const char *cmh_log_level_name(enum cmh_log_level level)
{
    return (unsigned)level < 4 ? level_names[level] : "unknown";
}

void cmh_log_init(struct cmh_log *log, enum cmh_log_level min, enum cmh_log_format format, int fd)
{
    log->min = min;
    log->format = format;
    log->fd = fd;
    log->write_errors = 0;
}

int cmh_log_enabled(const struct cmh_log *log, enum cmh_log_level level)
{
    return log != NULL && level >= log->min;
}

void cmh_ratelimit_reset(struct cmh_ratelimit *r, unsigned budget)
{
    r->budget = budget;
    r->used = 0;
    r->suppressed = 0;
}

int cmh_ratelimit_allow(struct cmh_ratelimit *r)
{
    if (r->used < r->budget) {
        r->used++;
        return 1;
    }
    r->suppressed++;
    return 0;
}

size_t cmh_fmt_double(char *buf, size_t len, double d)
{
    int n;
    if (isnan(d))
        n = snprintf(buf, len, "NaN");
    else if (isinf(d))
        n = snprintf(buf, len, d > 0 ? "+Inf" : "-Inf");
    else {
        /* Shortest of %.15g..%.17g that round-trips, so 0.1 prints as 0.1, not 0.10000000000000001.
         */
        n = snprintf(buf, len, "%.15g", d);
        if (strtod(buf, NULL) != d) {
            n = snprintf(buf, len, "%.16g", d);
            if (strtod(buf, NULL) != d)
                n = snprintf(buf, len, "%.17g", d);
        }
    }
    if (n < 0)
        n = 0;
    return (size_t)n < len ? (size_t)n : (len ? len - 1 : 0);
}

void cmh_fmt_rfc3339(char *buf, size_t len, long long ms_epoch)
{
    if (ms_epoch < 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ms_epoch = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    }
    time_t secs = (time_t)(ms_epoch / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms_epoch % 1000));
}

/* A bounded line under construction; once full, further appends are ignored and `cut` is set. */
struct line {
    char buf[CMH_LOG_LINE_MAX];
    size_t len;
    int cut;
};

/* Room kept back for the truncation marker and the final newline. */
#define LINE_RESERVE 40

static void put(struct line *l, const char *s, size_t n)
{
    size_t room = sizeof l->buf - LINE_RESERVE - l->len;
    if (n > room) {
        n = room;
        l->cut = 1;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void puts_(struct line *l, const char *s)
{
    put(l, s, strlen(s));
}

static void json_string(struct line *l, const char *s)
{
    put(l, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        switch (*p) {
        case '"':
            put(l, "\\\"", 2);
            break;
        case '\\':
            put(l, "\\\\", 2);
            break;
        case '\n':
            put(l, "\\n", 2);
            break;
        case '\r':
            put(l, "\\r", 2);
            break;
        case '\t':
            put(l, "\\t", 2);
            break;
        default:
            if (*p < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", *p);
                put(l, esc, 6);
            } else {
                put(l, (const char *)p, 1);
            }
        }
    }
    put(l, "\"", 1);
}

/* logfmt value: bare when it is a plain token, quoted with escapes otherwise. */
static void text_value(struct line *l, const char *s)
{
    int bare = *s != '\0';
    for (const char *p = s; *p && bare; p++)
        if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p == 0x7f)
            bare = 0;
    if (bare)
        puts_(l, s);
    else
        json_string(l, s);
}

static void scalar(struct line *l, const struct cmh_kv *kv, int json)
{
    char num[40];
    switch (kv->type) {
    case CMH_KV_STR:
        if (json)
            json_string(l, kv->v.s ? kv->v.s : "");
        else
            text_value(l, kv->v.s ? kv->v.s : "");
        return;
    case CMH_KV_URL: {
        char shown[1024];
        cmh_url_redact(kv->v.s ? kv->v.s : "", shown, sizeof shown);
        if (json)
            json_string(l, shown);
        else
            text_value(l, shown);
        return;
    }
    case CMH_KV_JSON:
        if (json)
            puts_(l, kv->v.s ? kv->v.s : "null");
        else
            text_value(l, kv->v.s ? kv->v.s : "null");
        return;
    case CMH_KV_INT:
        snprintf(num, sizeof num, "%lld", kv->v.i);
        break;
    case CMH_KV_UINT:
        snprintf(num, sizeof num, "%llu", kv->v.u);
        break;
    case CMH_KV_BOOL:
        snprintf(num, sizeof num, "%s", kv->v.b ? "true" : "false");
        break;
    case CMH_KV_DBL:
        cmh_fmt_double(num, sizeof num, kv->v.d);
        /* JSON has no NaN or infinities: those go as strings. */
        if (json && !isfinite(kv->v.d)) {
            json_string(l, num);
            return;
        }
        break;
    }
    puts_(l, num);
}

void cmh_url_redact(const char *url, char *out, size_t len)
{
    const char *h = strstr(url, "://");
    h = h != NULL ? h + 3 : url;
    const char *at = memchr(h, '@', strcspn(h, "/?#"));
    if (at == NULL)
        snprintf(out, len, "%s", url);
    else
        snprintf(out, len, "%.*s<redacted>%s", (int)(h - url), url, at);
}

static void field(struct line *l, const struct cmh_kv *kv, int json)
{
    if (json) {
        put(l, ",", 1);
        json_string(l, kv->key);
        put(l, ":", 1);
    } else {
        put(l, " ", 1);
        puts_(l, kv->key);
        put(l, "=", 1);
    }
    scalar(l, kv, json);
}

static void build(struct line *l, int json, enum cmh_log_level level, const char *msg,
                  const struct cmh_kv *kv, size_t nkv)
{
    char ts[32];
    cmh_fmt_rfc3339(ts, sizeof ts, -1);
    const struct cmh_kv head[] = {CMH_STR("level", cmh_log_level_name(level)), CMH_STR("msg", msg)};
    l->len = 0;
    l->cut = 0;
    if (json) {
        puts_(l, "{\"ts\":");
        json_string(l, ts);
    } else {
        puts_(l, "ts=");
        puts_(l, ts);
    }
    for (size_t i = 0; i < 2; i++)
        field(l, &head[i], json);
    for (size_t i = 0; i < nkv; i++)
        field(l, &kv[i], json);
}

void cmh_log_event(struct cmh_log *log, enum cmh_log_level level, const char *msg,
                   const struct cmh_kv *kv, size_t nkv)
{
    if (!cmh_log_enabled(log, level))
        return;
    const struct cmh_kv truncated = CMH_BOOL("truncated", 1);
    struct line l;
    int json = log->format == CMH_LOG_JSON;
    build(&l, json, level, msg, kv, nkv);
    /* An event too long for one line keeps its head and says it was cut, rather than ending
     * mid-escape in a line no reader can parse. */
    if (l.cut) {
        build(&l, json, level, msg, NULL, 0);
        field(&l, &truncated, json);
    }
    if (json)
        l.buf[l.len++] = '}';
    l.buf[l.len++] = '\n';

    size_t off = 0;
    while (off < l.len) {
        ssize_t n = write(log->fd, l.buf + off, l.len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            log->write_errors++;
            return;
        }
        off += (size_t)n;
    }
}
