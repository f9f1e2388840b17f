/* Structured logging: one event per line, logfmt text or JSON, UTC timestamps.
 * Owned by the daemon; thread: the loop thread (each event is one write(2), so lines never mix). */
#ifndef CMH_LOG_H
#define CMH_LOG_H

#include <stddef.h>

enum cmh_log_level { CMH_LOG_DEBUG, CMH_LOG_INFO, CMH_LOG_WARN, CMH_LOG_ERROR };
enum cmh_log_format { CMH_LOG_TEXT, CMH_LOG_JSON };

enum cmh_kv_type {
    CMH_KV_STR,
    CMH_KV_INT,
    CMH_KV_UINT,
    CMH_KV_DBL,
    CMH_KV_BOOL,
    CMH_KV_JSON,
    CMH_KV_URL
};

/* One field of an event. Strings are borrowed for the duration of the call only. CMH_KV_JSON is
 * a ready-made JSON value: inserted as is in JSON lines, quoted as a string in text lines.
 * CMH_KV_URL is a URL written as cmh_url_redact shows it (no user information). */
struct cmh_kv {
    const char *key;
    enum cmh_kv_type type;
    union {
        const char *s;
        long long i;
        unsigned long long u;
        double d;
        int b;
    } v;
};

#define CMH_STR(k, x) ((struct cmh_kv){.key = (k), .type = CMH_KV_STR, .v.s = (x)})
#define CMH_INT(k, x) ((struct cmh_kv){.key = (k), .type = CMH_KV_INT, .v.i = (long long)(x)})
#define CMH_UINT(k, x)                                                                             \
    ((struct cmh_kv){.key = (k), .type = CMH_KV_UINT, .v.u = (unsigned long long)(x)})
#define CMH_DBL(k, x)  ((struct cmh_kv){.key = (k), .type = CMH_KV_DBL, .v.d = (double)(x)})
#define CMH_BOOL(k, x) ((struct cmh_kv){.key = (k), .type = CMH_KV_BOOL, .v.b = !!(x)})
#define CMH_JSON(k, x) ((struct cmh_kv){.key = (k), .type = CMH_KV_JSON, .v.s = (x)})
#define CMH_URL(k, x)  ((struct cmh_kv){.key = (k), .type = CMH_KV_URL, .v.s = (x)})

struct cmh_log {
    /* read-only (cmh_log_init sets them) */
    enum cmh_log_level min;
    enum cmh_log_format format;
    int fd;
    /* Lines that could not be written (full disk, closed pipe): counted, never fatal. */
    unsigned long long write_errors;
};

/* Longest line written; a longer event is cut and ends with a `truncated=true` field. */
#define CMH_LOG_LINE_MAX 16384

void cmh_log_init(struct cmh_log *log, enum cmh_log_level min, enum cmh_log_format format, int fd);
int cmh_log_enabled(const struct cmh_log *log, enum cmh_log_level level);
/* Writes one event if level >= log->min. kv may be NULL when nkv is 0. */
void cmh_log_event(struct cmh_log *log, enum cmh_log_level level, const char *msg,
                   const struct cmh_kv *kv, size_t nkv);
const char *cmh_log_level_name(enum cmh_log_level level);

/* CMH_LOG(log, CMH_LOG_INFO, "msg", CMH_STR("k", v), ...): at least one field. */
#define CMH_LOG(log, level, msg, ...)                                                              \
    do {                                                                                           \
        if (cmh_log_enabled((log), (level))) {                                                     \
            const struct cmh_kv cmh_kv_[] = {__VA_ARGS__};                                         \
            cmh_log_event((log), (level), (msg), cmh_kv_, sizeof cmh_kv_ / sizeof cmh_kv_[0]);     \
        }                                                                                          \
    } while (0)

/* Rate limit for repeated lines (per round or per window): the first `budget` lines pass, the rest
 * are counted. */
struct cmh_ratelimit {
    unsigned budget, used;
    size_t suppressed;
};
void cmh_ratelimit_reset(struct cmh_ratelimit *r, unsigned budget);
/* Returns 1 when a line may be written now, else counts it as suppressed and returns 0. */
int cmh_ratelimit_allow(struct cmh_ratelimit *r);

/* Writes url into out as every log line, /readyz answer and error message shows it: the user
 * information of its authority (user@ or user:password@, which may hold a password) replaced by
 * "<redacted>@"; truncated to len. The one redaction of URLs: print no URL without it. */
void cmh_url_redact(const char *url, char *out, size_t len);

/* Formats a double as the shortest text that reads back to the same value; NaN, +Inf, -Inf as
 * Prometheus spells them. Returns the length written (always < len when len >= 32). */
size_t cmh_fmt_double(char *buf, size_t len, double d);

/* Writes the current UTC time as RFC 3339 with milliseconds ("2026-01-02T03:04:05.678Z"). buf
 * must hold 25 bytes. ms_epoch < 0 means now. */
void cmh_fmt_rfc3339(char *buf, size_t len, long long ms_epoch);

#endif
