/* Streaming Prometheus text-format parser. Lines are parsed whole: a line that lies entirely in
 * the caller's chunk is parsed in place, one that spans chunks is first gathered in the line buffer
 * (at most max_line bytes), so every line sees the same bytes however the body was split. */
#include "cmh/scrape/prom.h"
#include "cmh/scrape/prom_int.h"

#include "cmh/core/alloc.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A family known to the parser. Entries outlive a body (gen tells which body declared them last)
 * so that filter decisions are cached across scrapes; everything else is per body. */
struct cmh_prom_fam {
    uint32_t name_off, name_len;
    uint32_t hash;
    uint32_t gen;
    /* Index + 1 of the family whose lines last followed this family's (in this body or an earlier
     * one), 0 when none: expositions repeat their family order, so the next family's name is
     * predicted and compared, not scanned and hashed. A hint only: always checked by name. */
    uint32_t next;
    uint16_t sfx_known;  /* bit s: whether family name + suffix s is itself a family is known */
    uint16_t sfx_shadow; /* bit s: family name + suffix s is a family of its own in this body */
    uint8_t type;
    uint8_t flags;
    int8_t want; /* cached filter decision, -1 when none */
    uint8_t want_type;
    uint8_t bare; /* the name is a valid unquoted metric name */
    /* Line cache (see "line cache" below): this entry's HELP and TYPE lines of an earlier body
     * (offsets in p->cache, length 0 when none), the type that TYPE line gave, whether the HELP
     * text has no backslash; its sample lines' series entries, the next entry to compare with in
     * this body, and whether the last wanted line of this family in this body was not kept. */
    uint8_t type_cached;
    uint8_t help_plain;
    uint8_t ser_miss;
    /* The suffix this entry's own name ends with (NONE when none), and the entry (index + 1) named
     * without it: 0 when there was none while the table had base_nfams entries. */
    uint8_t own_sfx;
    uint32_t base, base_nfams;
    uint32_t help_off, help_len;
    uint32_t type_off, type_len;
    uint32_t ser_first, ser_n, ser_cur;
};

/* A sample line of an earlier body up to its value (name, labels, blanks: the key), with what
 * parsing it found. Another line that starts with the same key, while the same family is the
 * current one, has the same name, suffix and labels, and passes the same checks. */
struct cmh_prom_series {
    uint32_t key_off; /* in p->cache */
    uint32_t key_len;
    uint32_t lab; /* first of its labels in p->slabels (views into p->cache) */
    uint16_t nl;
    uint16_t name_len;
    uint8_t sfx;
    uint8_t type; /* the family's type when it was parsed (the quantile/le checks depend on it) */
};

/* Longest key, and most labels, a series entry keeps. */
#define SERIES_KEY_MAX    65535u
#define SERIES_LABELS_MAX 64u

enum { F_TYPE = 1, F_HELP = 2, F_SAMPLES = 4, F_ANNOUNCED = 8 };

#define MAX_LINE_LIMIT (1024u * 1024u * 1024u)
/* Room in scratch beyond the line, for a number copied out of a line of maximal length. */
#define SCRATCH_SLACK 64

/* For the per-line steps of the hot path, which the compiler would leave as calls: a call with its
 * spills costs as much as the step (callgrind, test/bench/prom.bench.sh). */
#define ALWAYS_INLINE inline __attribute__((always_inline))

/* Character classes of the hot loops, one table lookup per byte. */
enum { C_NAME0 = 1, C_NAME = 2, C_LNAME0 = 4, C_LNAME = 8, C_DIGIT = 16 };

static const uint8_t cls[256] = {
    ['0' ... '9'] = C_NAME | C_LNAME | C_DIGIT,
    ['a' ... 'z'] = C_NAME0 | C_NAME | C_LNAME0 | C_LNAME,
    ['A' ... 'Z'] = C_NAME0 | C_NAME | C_LNAME0 | C_LNAME,
    ['_'] = C_NAME0 | C_NAME | C_LNAME0 | C_LNAME,
    [':'] = C_NAME0 | C_NAME,
};

static const char *const type_names[] = {"untyped",   "counter",        "gauge", "summary",
                                         "histogram", "gaugehistogram", "info",  "stateset"};

struct sfx_def {
    const char *text;
    size_t len;
};

static const struct sfx_def sfx_defs[] = {
    [CMH_PROM_SUFFIX_NONE] = {"", 0},        [CMH_PROM_SUFFIX_SUM] = {"_sum", 4},
    [CMH_PROM_SUFFIX_COUNT] = {"_count", 6}, [CMH_PROM_SUFFIX_BUCKET] = {"_bucket", 7},
    [CMH_PROM_SUFFIX_TOTAL] = {"_total", 6}, [CMH_PROM_SUFFIX_CREATED] = {"_created", 8},
    [CMH_PROM_SUFFIX_GSUM] = {"_gsum", 5},   [CMH_PROM_SUFFIX_GCOUNT] = {"_gcount", 7},
    [CMH_PROM_SUFFIX_INFO] = {"_info", 5},
};
#define NSFX (sizeof sfx_defs / sizeof sfx_defs[0])

#define SB(s) (1u << (s))
/* Which suffixes tie a sample to a family of each type. */
static const uint16_t type_sfx[] = {
    [CMH_PROM_UNTYPED] = 0,
    [CMH_PROM_COUNTER] = SB(CMH_PROM_SUFFIX_TOTAL) | SB(CMH_PROM_SUFFIX_CREATED),
    [CMH_PROM_GAUGE] = 0,
    [CMH_PROM_SUMMARY] =
        SB(CMH_PROM_SUFFIX_SUM) | SB(CMH_PROM_SUFFIX_COUNT) | SB(CMH_PROM_SUFFIX_CREATED),
    [CMH_PROM_HISTOGRAM] = SB(CMH_PROM_SUFFIX_SUM) | SB(CMH_PROM_SUFFIX_COUNT) |
                           SB(CMH_PROM_SUFFIX_BUCKET) | SB(CMH_PROM_SUFFIX_CREATED),
    [CMH_PROM_GAUGE_HISTOGRAM] = SB(CMH_PROM_SUFFIX_SUM) | SB(CMH_PROM_SUFFIX_COUNT) |
                                 SB(CMH_PROM_SUFFIX_BUCKET) | SB(CMH_PROM_SUFFIX_GSUM) |
                                 SB(CMH_PROM_SUFFIX_GCOUNT),
    [CMH_PROM_INFO] = SB(CMH_PROM_SUFFIX_INFO),
    [CMH_PROM_STATESET] = 0,
};

static const double pow10_exact[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static inline uint64_t load64(const char *s)
{
    uint64_t w;
    memcpy(&w, s, 8);
    return w;
}

/* a[0..n) == b[0..n): names and most keys are short, and up to 32 bytes a library call costs more
 * than the comparison itself on the per-line paths. */
static inline int eq_bytes(const char *a, const char *b, size_t n)
{
    if (n > 32)
        return memcmp(a, b, n) == 0; /* past 32 bytes libc's vector compare is cheaper */
    if (n >= 8) {
        /* Two or four words that cover the range, overlapping. */
        uint64_t d = (load64(a) ^ load64(b)) | (load64(a + n - 8) ^ load64(b + n - 8));
        if (n > 16)
            d |= (load64(a + 8) ^ load64(b + 8)) | (load64(a + n - 16) ^ load64(b + n - 16));
        return d == 0;
    }
    if (n >= 4) {
        uint32_t x, y, x2, y2;
        memcpy(&x, a, 4);
        memcpy(&y, b, 4);
        memcpy(&x2, a + n - 4, 4);
        memcpy(&y2, b + n - 4, 4);
        return x == y && x2 == y2;
    }
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

const char *cmh_prom_type_name(enum cmh_prom_type type)
{
    if ((size_t)type >= sizeof type_names / sizeof type_names[0])
        return "untyped";
    return type_names[type];
}

/* ---- errors ---------------------------------------------------------------------------------- */

static int fail(struct cmh_prom_parser *p, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct cmh_prom_parser *p, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err.reason, sizeof p->err.reason, fmt, ap);
    va_end(ap);
    p->err.code = code;
    p->err.line = (unsigned long)p->stats.lines;
    return code;
}

/* Quotes at most 48 bytes of s for an error message, like Go's %q: printable ASCII as is, the rest
 * as escapes, so a reason is always one line of ASCII. */
static const char *quote(char *out, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    size_t lim = n > 48 ? 48 : n;
    if (cap < 8)
        return "";
    out[o++] = '"';
    for (size_t i = 0; i < lim && o + 6 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else if (c == '\t') {
            out[o++] = '\\';
            out[o++] = 't';
        } else if (c < 0x20 || c >= 0x7f) {
            static const char hex[] = "0123456789abcdef";
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    if (lim < n && o + 4 < cap) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}

#define Q(buf, s, n) quote((buf), sizeof(buf), (s), (n))

/* Grows *buf to hold need bytes (contents kept). Callers bound need by the line cap. */
static int ensure(struct cmh_prom_parser *p, char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 4096;
    while (c < need)
        c *= 2;
    char *nb = cmh_realloc(*buf, c);
    if (nb == NULL)
        return fail(p, -ENOMEM, "out of memory");
    *buf = nb;
    *cap = c;
    return 0;
}

/* Where a number of n bytes is copied for strtod: the end of scratch, clear of the unescaped text
 * at its start (scratch holds at least twice the line). */
static inline char *num_buf(struct cmh_prom_parser *p, size_t n)
{
    return p->scratch + p->scratch_cap - n - 1;
}

/* ---- small scanners ---------------------------------------------------------------------------
 */

/* Every line is parsed with a '\n' at *e (its own, or one written after a gathered line), which is
 * neither a blank nor a name character: the scanners below stop there without comparing with e. */
static inline const char *skip_blank(const char *s, const char *e)
{
    (void)e;
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

static inline const char *until_blank(const char *s, const char *e)
{
    while (s < e && *s != ' ' && *s != '\t')
        s++;
    return s;
}

/* Go's utf8.Valid: no overlong forms, no surrogates, nothing above U+10FFFF. */
static int utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0)
                lo = 0xa0;
            else if (c == 0xed)
                hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0)
                lo = 0x90;
            else if (c == 0xf4)
                hi = 0x8f;
        } else {
            return 0;
        }
        if (n - i <= need)
            return 0;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t k = 2; k <= need; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return 0;
        i += need + 1;
    }
    return 1;
}

static int eq_nocase(const char *s, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    if (n != l)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c + 32);
        if (c != lit[i])
            return 0;
    }
    return 1;
}

/* Parses a float the way the reference parser does (Go's strconv.ParseFloat without the hex,
 * underscore and 'p' forms): [+-]digits[.digits][e[+-]digits], [+-]Inf/Infinity, NaN, any case;
 * out-of-range values are rejected, underflow gives 0. Exact: short inputs are computed with one
 * correctly rounded operation, the rest by strtod. */
static int parse_float_slow(char *scratch, const char *s, size_t n, double *out)
{
    const char *q = s, *e = s + n;
    int neg = 0;
    if (n == 0)
        return -1;
    if (*q == '+' || *q == '-') {
        neg = *q == '-';
        q++;
    }
    if (q < e && (cls[(unsigned char)*q] & C_DIGIT) == 0 && *q != '.') {
        if (n == 3 && (s[0] | 0x20) == 'n' && (s[1] | 0x20) == 'a' && (s[2] | 0x20) == 'n') {
            *out = NAN;
            return 0;
        }
        if (eq_nocase(q, (size_t)(e - q), "inf") || eq_nocase(q, (size_t)(e - q), "infinity")) {
            *out = neg ? -INFINITY : INFINITY;
            return 0;
        }
        if (q == s && eq_nocase(q, n, "nan")) {
            *out = NAN;
            return 0;
        }
        return -1;
    }
    uint64_t m = 0;
    int ndig = 0, dexp = 0, lossy = 0, seen = 0;
    for (; q < e && (cls[(unsigned char)*q] & C_DIGIT); q++) {
        seen = 1;
        if (ndig < 19) {
            m = m * 10 + (uint64_t)(*q - '0');
            ndig += m != 0;
        } else {
            dexp++;
            lossy = 1;
        }
    }
    if (q < e && *q == '.') {
        for (q++; q < e && (cls[(unsigned char)*q] & C_DIGIT); q++) {
            seen = 1;
            if (ndig < 19) {
                m = m * 10 + (uint64_t)(*q - '0');
                ndig += m != 0;
                dexp--;
            } else {
                lossy = 1;
            }
        }
    }
    if (!seen)
        return -1;
    int ex = 0;
    if (q < e && (*q == 'e' || *q == 'E')) {
        int eneg = 0, edig = 0;
        q++;
        if (q < e && (*q == '+' || *q == '-')) {
            eneg = *q == '-';
            q++;
        }
        for (; q < e && (cls[(unsigned char)*q] & C_DIGIT); q++) {
            edig = 1;
            if (ex < 100000)
                ex = ex * 10 + (*q - '0');
        }
        if (!edig)
            return -1;
        if (eneg)
            ex = -ex;
    }
    if (q != e)
        return -1;
    if (m == 0) {
        *out = neg ? -0.0 : 0.0;
        return 0;
    }
    if (!lossy && m <= (1ull << 53)) {
        int t = dexp + ex;
        if (t >= 0 && t <= 22) {
            double v = (double)m * pow10_exact[t];
            *out = neg ? -v : v;
            return 0;
        }
        if (t < 0 && t >= -22) {
            double v = (double)m / pow10_exact[-t];
            *out = neg ? -v : v;
            return 0;
        }
    }
    /* The grammar is checked above, so strtod (C locale) reads exactly these bytes. */
    memcpy(scratch, s, n);
    scratch[n] = '\0';
    char *end = NULL;
    errno = 0;
    double v = strtod(scratch, &end);
    if (end != scratch + n)
        return -1;
    if (errno == ERANGE && isinf(v))
        return -1;
    *out = v;
    return 0;
}

/* parse_float_slow, with the common sample values decided inline: plain integers (exact in a double
 * below 10^15), short decimals d.ddd (mantissa below 10^15: one correctly rounded division by an
 * exact power of ten, the value strtod gives) and NaN. */
/* Accumulates the decimal digits of s from i into *v; returns where they end. */
static inline size_t add_digits(const char *s, size_t i, size_t n, uint64_t *v)
{
    for (; i < n; i++) {
        unsigned d = (unsigned)(unsigned char)s[i] - '0';
        if (d > 9)
            break;
        *v = *v * 10 + d;
    }
    return i;
}

static inline int parse_float(char *scratch, const char *s, size_t n, double *out)
{
    if (n >= 1 && n <= 15) {
        uint64_t v = 0;
        size_t i = add_digits(s, 0, n, &v);
        if (i == n) {
            *out = (double)v;
            return 0;
        }
        if (i > 0 && s[i] == '.' && i + 1 < n) {
            size_t j = add_digits(s, i + 1, n, &v);
            if (j == n) {
                *out = (double)v / pow10_exact[n - i - 1];
                return 0;
            }
        }
        if (n == 3 && (s[0] | 0x20) == 'n' && (s[1] | 0x20) == 'a' && (s[2] | 0x20) == 'n') {
            *out = NAN;
            return 0;
        }
    }
    return parse_float_slow(scratch, s, n, out);
}

/* The commonest sample values, read in one pass: an integer of at most 15 digits, or "NaN", ended
 * by a blank or the line's '\n'. Their end, with *out what parse_float gives; NULL for anything
 * else. */
static inline const char *quick_value(const char *s, double *out)
{
    const char *q = s;
    uint64_t v = 0;
    unsigned d;
    while (q - s < 15 && (d = (unsigned)(unsigned char)*q - '0') <= 9) {
        v = v * 10 + d;
        q++;
    }
    double x = (double)v;
    if (q == s) {
        /* Each test stops at the line's '\n', so nothing past it is read. */
        if (s[0] != 'N' || s[1] != 'a' || s[2] != 'N')
            return NULL;
        q = s + 3;
        x = NAN;
    }
    if (*q != ' ' && *q != '\t' && *q != '\n')
        return NULL;
    *out = x;
    return q;
}

/* Go's strconv.ParseInt(s, 10, 64). */
static int parse_int64(const char *s, size_t n, int64_t *out)
{
    const char *q = s, *e = s + n;
    int neg = 0;
    if (q < e && (*q == '+' || *q == '-')) {
        neg = *q == '-';
        q++;
    }
    if (q == e)
        return -1;
    uint64_t v = 0;
    uint64_t lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; q < e; q++) {
        if ((cls[(unsigned char)*q] & C_DIGIT) == 0)
            return -1;
        unsigned d = (unsigned)(*q - '0');
        if (v > (lim - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 0;
}

/* First byte at or after q that is '"', '\\' or not ASCII (e when none): eight bytes at a time. */
static inline const char *plain_ascii(const char *q, const char *e)
{
    while (e - q >= 8) {
        uint64_t w, a, b;
        memcpy(&w, q, 8);
        a = w ^ 0x2222222222222222ull;
        b = w ^ 0x5c5c5c5c5c5c5c5cull;
        uint64_t hit =
            (((a - 0x0101010101010101ull) & ~a) | ((b - 0x0101010101010101ull) & ~b) | w) &
            0x8080808080808080ull;
        if (hit != 0) {
            /* The lowest flagged byte is a true hit (borrows only run upwards). */
            return q + (__builtin_ctzll(hit) >> 3);
        }
        q += 8;
    }
    while (q < e && (unsigned char)*q < 0x80 && *q != '"' && *q != '\\')
        q++;
    return q;
}

/* Reads a quoted string whose opening quote is just before *ps. Escapes \\, \" and \n are decoded
 * into *sc (advanced past the result) when present; otherwise the result is a view into the line.
 * Returns 0, 1 at end of line before the closing quote, 2 on a bad escape (*ps at the escape). */
static int read_quoted(const char **ps, const char *e, char **sc, const char **out, size_t *outlen,
                       int *non_ascii)
{
    const char *s = *ps, *q = plain_ascii(s, e);
    unsigned hi = 0;
    while (q < e && *q != '"' && *q != '\\')
        hi |= (unsigned char)*q++;
    if (q < e && *q == '"') {
        *out = s;
        *outlen = (size_t)(q - s);
        *non_ascii = (hi & 0x80) != 0;
        *ps = q + 1;
        return 0;
    }
    char *d = *sc, *d0 = *sc;
    memcpy(d, s, (size_t)(q - s));
    d += q - s;
    while (q < e) {
        char c = *q;
        if (c == '"') {
            *out = d0;
            *outlen = (size_t)(d - d0);
            *non_ascii = (hi & 0x80) != 0;
            *sc = d;
            *ps = q + 1;
            return 0;
        }
        if (c == '\\') {
            if (q + 1 >= e) {
                *ps = q;
                return 2;
            }
            c = q[1];
            if (c == 'n')
                *d++ = '\n';
            else if (c == '\\' || c == '"')
                *d++ = c;
            else {
                *ps = q;
                return 2;
            }
            q += 2;
            continue;
        }
        hi |= (unsigned char)c;
        *d++ = c;
        q++;
    }
    *out = d0;
    *outlen = (size_t)(d - d0);
    *ps = q;
    return 1;
}

static int bad_escape(struct cmh_prom_parser *p, const char *at, const char *e)
{
    if (at + 1 >= e)
        return fail(p, -EINVAL, "invalid escape sequence '\\' at end of line");
    unsigned char c = (unsigned char)at[1];
    if (c > 0x20 && c < 0x7f)
        return fail(p, -EINVAL, "invalid escape sequence '\\%c'", c);
    return fail(p, -EINVAL, "invalid escape sequence '\\x%02x'", c);
}

/* ---- family table -----------------------------------------------------------------------------
 */

/* A multiplicative hash over 8-byte words: names are short and this runs once per family. */
static uint32_t hash_name(const char *s, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    if (n > 0) {
        uint64_t w = 0;
        for (size_t i = 0; i < n; i++)
            w |= (uint64_t)(unsigned char)s[i] << (8 * i);
        h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    }
    h ^= h >> 32;
    return (uint32_t)h;
}

static size_t state_bytes(const struct cmh_prom_parser *p)
{
    return (size_t)p->fams_cap * sizeof(struct cmh_prom_fam) +
           (size_t)p->slots_cap * sizeof(uint32_t) + p->names_cap;
}

/* Index + 1 of the entry named s (of any body), 0 when none. */
static uint32_t fam_find(const struct cmh_prom_parser *p, const char *s, size_t n, uint32_t h)
{
    if (p->slots_cap == 0)
        return 0;
    uint32_t mask = p->slots_cap - 1;
    for (uint32_t i = h & mask;; i = (i + 1) & mask) {
        uint32_t v = p->slots[i];
        if (v == 0)
            return 0;
        const struct cmh_prom_fam *f = &p->fams[v - 1];
        if (f->hash == h && f->name_len == n && eq_bytes(p->names + f->name_off, s, n))
            return v;
    }
}

/* Index + 1 of the family named s in the current body, 0 when none. */
static uint32_t fam_in_body(const struct cmh_prom_parser *p, const char *s, size_t n)
{
    uint32_t v = fam_find(p, s, n, hash_name(s, n));
    return v != 0 && p->fams[v - 1].gen == p->gen ? v : 0;
}

static int grow_table(struct cmh_prom_parser *p, size_t name_len)
{
    size_t fams_cap = p->fams_cap, slots_cap = p->slots_cap, names_cap = p->names_cap;
    if (p->nfams == fams_cap)
        fams_cap = fams_cap ? fams_cap * 2 : 64;
    if ((size_t)(p->nfams + 1) * 2 > slots_cap)
        slots_cap = slots_cap ? slots_cap * 2 : 128;
    while (p->names_len + name_len > names_cap)
        names_cap = names_cap ? names_cap * 2 : 4096;
    size_t state =
        fams_cap * sizeof(struct cmh_prom_fam) + slots_cap * sizeof(uint32_t) + names_cap;
    if (state > p->opt.max_state || fams_cap > UINT32_MAX / 2)
        return fail(p, -E2BIG, "too many metric families (family table over %zu bytes)",
                    p->opt.max_state);
    if (fams_cap != p->fams_cap) {
        struct cmh_prom_fam *nf = cmh_reallocarray(p->fams, fams_cap, sizeof *nf);
        if (nf == NULL)
            return fail(p, -ENOMEM, "out of memory");
        p->fams = nf;
        p->fams_cap = (uint32_t)fams_cap;
    }
    if (names_cap != p->names_cap) {
        char *nn = cmh_realloc(p->names, names_cap);
        if (nn == NULL)
            return fail(p, -ENOMEM, "out of memory");
        p->names = nn;
        p->names_cap = names_cap;
    }
    if (slots_cap != p->slots_cap) {
        uint32_t *ns = cmh_calloc(slots_cap, sizeof *ns);
        if (ns == NULL)
            return fail(p, -ENOMEM, "out of memory");
        uint32_t mask = (uint32_t)slots_cap - 1;
        for (uint32_t k = 0; k < p->nfams; k++) {
            uint32_t i = p->fams[k].hash & mask;
            while (ns[i] != 0)
                i = (i + 1) & mask;
            ns[i] = k + 1;
        }
        cmh_free(p->slots);
        p->slots = ns;
        p->slots_cap = (uint32_t)slots_cap;
    }
    return 0;
}

static int ends_with(const char *s, size_t n, enum cmh_prom_suffix k)
{
    size_t l = sfx_defs[k].len;
    return n > l && memcmp(s + n - l, sfx_defs[k].text, l) == 0;
}

/* The suffix s ends with (with a non-empty rest before it), or NONE. */
static enum cmh_prom_suffix trailing_suffix(const char *s, size_t n)
{
    if (n < 5)
        return CMH_PROM_SUFFIX_NONE;
    switch (s[n - 1]) {
    case 'm':
        return ends_with(s, n, CMH_PROM_SUFFIX_SUM)    ? CMH_PROM_SUFFIX_SUM
               : ends_with(s, n, CMH_PROM_SUFFIX_GSUM) ? CMH_PROM_SUFFIX_GSUM
                                                       : CMH_PROM_SUFFIX_NONE;
    case 't':
        return ends_with(s, n, CMH_PROM_SUFFIX_COUNT)    ? CMH_PROM_SUFFIX_COUNT
               : ends_with(s, n, CMH_PROM_SUFFIX_BUCKET) ? CMH_PROM_SUFFIX_BUCKET
               : ends_with(s, n, CMH_PROM_SUFFIX_GCOUNT) ? CMH_PROM_SUFFIX_GCOUNT
                                                         : CMH_PROM_SUFFIX_NONE;
    case 'l':
        return ends_with(s, n, CMH_PROM_SUFFIX_TOTAL) ? CMH_PROM_SUFFIX_TOTAL
                                                      : CMH_PROM_SUFFIX_NONE;
    case 'd':
        return ends_with(s, n, CMH_PROM_SUFFIX_CREATED) ? CMH_PROM_SUFFIX_CREATED
                                                        : CMH_PROM_SUFFIX_NONE;
    case 'o':
        return ends_with(s, n, CMH_PROM_SUFFIX_INFO) ? CMH_PROM_SUFFIX_INFO : CMH_PROM_SUFFIX_NONE;
    default:
        return CMH_PROM_SUFFIX_NONE;
    }
}

/* Makes s (hash h; v the index + 1 of its entry of an earlier body, or 0) a family of the current
 * body. */
static int fam_declare(struct cmh_prom_parser *p, const char *s, size_t n, uint32_t h, uint32_t v,
                       enum cmh_prom_suffix sfx, uint32_t base, uint32_t *idx)
{
    if (v == 0) {
        if (n > UINT32_MAX)
            return fail(p, -E2BIG, "metric name too long");
        if ((p->nfams + 1) * 2 > p->slots_cap || p->nfams == p->fams_cap ||
            p->names_len + n > p->names_cap) {
            int rc = grow_table(p, n);
            if (rc != 0)
                return rc;
        }
        struct cmh_prom_fam *f = &p->fams[p->nfams];
        memcpy(p->names + p->names_len, s, n);
        f->name_off = (uint32_t)p->names_len;
        f->name_len = (uint32_t)n;
        f->hash = h;
        f->next = 0;
        f->want = -1;
        f->want_type = 0;
        f->bare = n > 0 && (cls[(unsigned char)s[0]] & C_NAME0) != 0;
        for (size_t i = 1; i < n && f->bare; i++)
            f->bare = (cls[(unsigned char)s[i]] & C_NAME) != 0;
        f->help_len = f->type_len = 0;
        f->ser_first = f->ser_n = 0;
        f->own_sfx = (uint8_t)trailing_suffix(s, n);
        f->base = 0;
        f->base_nfams = UINT32_MAX;
        p->names_len += n;
        uint32_t mask = p->slots_cap - 1, i = h & mask;
        while (p->slots[i] != 0)
            i = (i + 1) & mask;
        p->slots[i] = ++p->nfams;
        v = p->nfams;
    }
    struct cmh_prom_fam *f = &p->fams[v - 1];
    f->gen = p->gen;
    f->type = CMH_PROM_UNTYPED;
    f->flags = 0;
    f->sfx_known = 0;
    f->sfx_shadow = 0;
    f->ser_cur = 0;
    f->ser_miss = 0;
    /* A family named base + suffix shadows that suffix of base: from now on such samples are its.
     * (base is the index + 1 of the family named s minus sfx in this body, 0 when none.) */
    if (sfx != CMH_PROM_SUFFIX_NONE && base != 0) {
        p->fams[base - 1].sfx_known |= (uint16_t)SB(sfx);
        p->fams[base - 1].sfx_shadow |= (uint16_t)SB(sfx);
    }
    *idx = v;
    return 0;
}

/* Whether s (n bytes: the name of family f and a suffix k that f's type allows) is a sample name of
 * f: unless it names a family of its own in this body, which is looked up once per body and suffix.
 */
static inline int suffix_is_fams(struct cmh_prom_parser *p, struct cmh_prom_fam *f, const char *s,
                                 size_t n, enum cmh_prom_suffix k)
{
    if ((f->sfx_known & SB(k)) == 0) {
        uint32_t other = fam_in_body(p, s, n);
        f->sfx_known |= (uint16_t)SB(k);
        if (other != 0)
            f->sfx_shadow |= (uint16_t)SB(k);
    }
    return (f->sfx_shadow & SB(k)) == 0;
}

/* The family a name belongs to, as the reference parser decides it: the family of that exact name;
 * else, for name = base + suffix, base when its type has that suffix; else a new family. */
static int resolve_slow(struct cmh_prom_parser *p, const char *s, size_t n, int cur_prefix,
                        uint32_t *idx, enum cmh_prom_suffix *sfx)
{
    uint32_t c = p->cur;
    if (c != 0) {
        /* Fast path: the family of the previous line, or one of its suffixes. */
        struct cmh_prom_fam *f = &p->fams[c - 1];
        size_t fl = f->name_len;
        /* (cur_prefix 2: the name starts with the predicted family's, so not with this one's.) */
        if (cur_prefix == 1 ||
            (cur_prefix == 0 && n >= fl && eq_bytes(s, p->names + f->name_off, fl))) {
            if (n == fl) {
                *idx = c;
                *sfx = CMH_PROM_SUFFIX_NONE;
                return 0;
            }
            uint16_t allowed = type_sfx[f->type];
            enum cmh_prom_suffix k = allowed != 0 ? trailing_suffix(s, n) : CMH_PROM_SUFFIX_NONE;
            if (k != CMH_PROM_SUFFIX_NONE && (allowed & SB(k)) && sfx_defs[k].len == n - fl) {
                if (suffix_is_fams(p, f, s, n, k)) {
                    *idx = c;
                    *sfx = k;
                    return 0;
                }
            }
        }
    }
    uint32_t h = 0, any;
    if (cur_prefix == 2 && c != 0 && p->fams[c - 1].next != 0 &&
        p->fams[p->fams[c - 1].next - 1].name_len == n) {
        /* The name is the predicted family's (scan_name compared it): the entry fam_find would
         * return, as names are unique in the table. Its hash is only needed for a new entry. */
        any = p->fams[c - 1].next;
    } else {
        h = hash_name(s, n);
        any = fam_find(p, s, n, h);
    }
    uint32_t v = any != 0 && p->fams[any - 1].gen == p->gen ? any : 0;
    *sfx = CMH_PROM_SUFFIX_NONE;
    enum cmh_prom_suffix t = CMH_PROM_SUFFIX_NONE;
    uint32_t b = 0;
    if (v == 0) {
        if (any != 0) {
            /* The entry remembers its base: entries are only added (until the table is reset). */
            struct cmh_prom_fam *a = &p->fams[any - 1];
            t = (enum cmh_prom_suffix)a->own_sfx;
            if (t != CMH_PROM_SUFFIX_NONE && a->base == 0 && a->base_nfams != p->nfams) {
                size_t bl = n - sfx_defs[t].len;
                a->base = fam_find(p, s, bl, hash_name(s, bl));
                a->base_nfams = p->nfams;
            }
            b = t != CMH_PROM_SUFFIX_NONE && a->base != 0 && p->fams[a->base - 1].gen == p->gen
                    ? a->base
                    : 0;
        } else {
            t = trailing_suffix(s, n);
            if (t != CMH_PROM_SUFFIX_NONE)
                b = fam_in_body(p, s, n - sfx_defs[t].len);
        }
        if (t != CMH_PROM_SUFFIX_NONE) {
            if (b != 0 && (type_sfx[p->fams[b - 1].type] & SB(t))) {
                v = b;
                *sfx = t;
            }
        }
    }
    if (v == 0) {
        int rc = fam_declare(p, s, n, h, any, t, b, &v);
        if (rc != 0)
            return rc;
    }
    if (c != 0 && c != v)
        p->fams[c - 1].next = v;
    p->cur = v;
    *idx = v;
    return 0;
}

/* resolve_slow, with its most common case inline: the exact name of the previous line's family. */
static inline int resolve(struct cmh_prom_parser *p, const char *s, size_t n, int cur_prefix,
                          uint32_t *idx, enum cmh_prom_suffix *sfx)
{
    if (cur_prefix == 1 && n == p->fams[p->cur - 1].name_len) {
        *idx = p->cur;
        *sfx = CMH_PROM_SUFFIX_NONE;
        return 0;
    }
    return resolve_slow(p, s, n, cur_prefix, idx, sfx);
}

/* End of the unquoted metric name at s (s itself when there is none). Most lines start with the
 * name of the previous line's family, so that prefix is compared at memcmp speed, not classified
 * byte by byte. */
static inline const char *scan_name(const struct cmh_prom_parser *p, const char *s, const char *e,
                                    int *cur_prefix)
{
    const char *q = s;
    *cur_prefix = 0;
    if (p->cur != 0) {
        const struct cmh_prom_fam *f = &p->fams[p->cur - 1];
        if (f->bare && (size_t)(e - s) >= f->name_len &&
            eq_bytes(s, p->names + f->name_off, f->name_len)) {
            q = s + f->name_len;
            *cur_prefix = 1;
        } else if (f->next != 0) {
            const struct cmh_prom_fam *g = &p->fams[f->next - 1];
            if (g->bare && (size_t)(e - s) >= g->name_len &&
                eq_bytes(s, p->names + g->name_off, g->name_len)) {
                q = s + g->name_len;
                *cur_prefix = 2;
            }
        }
    }
    if (q == s) {
        if ((cls[(unsigned char)*q] & C_NAME0) == 0) /* the '\n' at e included */
            return s;
        q++;
    }
    while (cls[(unsigned char)*q] & C_NAME)
        q++;
    return q;
}

static int wanted_slow(struct cmh_prom_parser *p, struct cmh_prom_fam *f)
{
    {
        int w = 1;
        if (p->opt.want != NULL)
            w = p->opt.want(p->opt.want_arg, p->names + f->name_off, f->name_len,
                            (enum cmh_prom_type)f->type) != 0;
        f->want = (int8_t)w;
        f->want_type = f->type;
    }
    return f->want;
}

/* Whether f's samples are wanted: the cached decision, asking the filter only when there is none
 * for f's current type. */
static inline int wanted(struct cmh_prom_parser *p, struct cmh_prom_fam *f)
{
    if (f->want >= 0 && f->want_type == f->type)
        return f->want;
    return wanted_slow(p, f);
}

/* ---- line cache -------------------------------------------------------------------------------
 * Expositions repeat: every scrape of a node, and of its neighbours, has the same HELP and TYPE
 * lines and the same series; mostly only the values change. The parser keeps the lines it parsed,
 * and a line that starts with the same bytes as the one predicted is not scanned again: its name,
 * labels and the checks on them come from the cache, while everything that depends on the body
 * (the family the name belongs to, flags, the filter, the value) goes through the same code as for
 * an uncached line. Predicted are the HELP and TYPE lines of the current family and of the family
 * that followed it last time, and for the i-th wanted sample line of the current family in this
 * body, its i-th series entry. A wrong prediction costs one comparison. The cache is bounded by
 * max_cache, and dropped whole when mostly stale. */

static size_t cache_bytes(const struct cmh_prom_parser *p)
{
    return p->cache_cap + (size_t)p->series_cap * sizeof *p->series +
           (size_t)p->slabels_cap * sizeof *p->slabels;
}

static void cache_clear(struct cmh_prom_parser *p)
{
    for (uint32_t i = 0; i < p->nfams; i++) {
        struct cmh_prom_fam *f = &p->fams[i];
        f->help_len = f->type_len = 0;
        f->ser_first = f->ser_n = 0;
    }
    p->cache_len = p->cache_live = p->cache_seen = 0;
    p->nseries = p->nslabels = 0;
}

/* Drops the cache at the start of a body when most of it is stale: lines replaced by others. */
static void cache_trim(struct cmh_prom_parser *p)
{
    /* Nothing was kept since the last look (every line kept adds bytes): nothing went stale. */
    if (p->cache_len == p->cache_seen)
        return;
    p->cache_seen = p->cache_len;
    size_t live_series = 0, live_labels = 0;
    for (uint32_t i = 0; i < p->nfams; i++) {
        const struct cmh_prom_fam *f = &p->fams[i];
        live_series += f->ser_n;
        for (uint32_t j = 0; j < f->ser_n; j++)
            live_labels += p->series[f->ser_first + j].nl;
    }
    if (p->cache_len > 2 * p->cache_live + 4096 || p->nseries > 2 * live_series + 64 ||
        p->nslabels > 2 * live_labels + 256)
        cache_clear(p);
}

/* Room for need items in a cache array; -1 when the cache would pass its bound or memory is short
 * (the line is then not kept: the cache is only ever an aid). */
static int cache_room(struct cmh_prom_parser *p, void **v, uint32_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    if (c > UINT32_MAX || cache_bytes(p) + (c - *cap) * size > p->opt.max_cache)
        return -1;
    void *n = cmh_reallocarray(*v, c, size);
    if (n == NULL)
        return -1;
    *v = n;
    *cap = (uint32_t)c;
    return 0;
}

/* Copies n bytes into the arena: their offset, or UINT32_MAX when they are not kept. */
static uint32_t cache_put(struct cmh_prom_parser *p, const char *s, size_t n)
{
    if (p->cache_len + n > p->cache_cap) {
        size_t c = p->cache_cap ? p->cache_cap : 4096;
        while (c < p->cache_len + n)
            c *= 2;
        if (c > UINT32_MAX || cache_bytes(p) + (c - p->cache_cap) > p->opt.max_cache)
            return UINT32_MAX;
        char *nb = cmh_realloc(p->cache, c);
        if (nb == NULL)
            return UINT32_MAX;
        /* The series' labels are views into the arena: they move with it. */
        uintptr_t from = (uintptr_t)p->cache, to = (uintptr_t)nb;
        for (uint32_t i = 0; i < p->nslabels; i++) {
            struct cmh_prom_label *l = &p->slabels[i];
            l->name = (const char *)((uintptr_t)l->name - from + to);
            l->value = (const char *)((uintptr_t)l->value - from + to);
        }
        p->cache = nb;
        p->cache_cap = c;
    }
    memcpy(p->cache + p->cache_len, s, n);
    uint32_t off = (uint32_t)p->cache_len;
    p->cache_len += n;
    p->cache_live += n;
    return off;
}

/* Keeps line s..e (from its '#') as the HELP (help) or TYPE line of entry fi, which it names;
 * extra is whether the HELP text is plain, or the type. */
static void cache_comment(struct cmh_prom_parser *p, uint32_t fi, int help, const char *s,
                          const char *e, uint8_t extra)
{
    struct cmh_prom_fam *f = &p->fams[fi - 1];
    uint32_t *off = help ? &f->help_off : &f->type_off, *len = help ? &f->help_len : &f->type_len;
    size_t n = (size_t)(e - s);
    if (*len == n && eq_bytes(p->cache + *off, s, n))
        return;
    uint32_t o = cache_put(p, s, n);
    if (o == UINT32_MAX)
        return;
    p->cache_live -= *len;
    *off = o;
    *len = (uint32_t)n;
    if (help)
        f->help_plain = extra;
    else
        f->type_cached = extra;
}

/* Keeps the wanted sample line at s (key_len bytes up to its value, nl labels in p->labels) as the
 * next series entry of family fi, whose current family it now is. */
static void cache_series(struct cmh_prom_parser *p, uint32_t fi, const char *s, size_t key_len,
                         size_t name_len, enum cmh_prom_suffix sfx, size_t nl)
{
    struct cmh_prom_fam *f = &p->fams[fi - 1];
    uint32_t i = f->ser_cur;
    struct cmh_prom_series *k = i < f->ser_n ? &p->series[f->ser_first + i] : NULL;
    if (k != NULL && k->key_len == key_len && k->type == f->type &&
        eq_bytes(p->cache + k->key_off, s, key_len)) {
        f->ser_cur++; /* the kept line (the cache was not asked: another family was current) */
        f->ser_miss = 0;
        return;
    }
    if (k != NULL && !f->ser_miss) {
        /* Perhaps a series this body has and the kept ones not: the next line may be entry i. */
        f->ser_miss = 1;
        return;
    }
    /* Entry i was replaced (two misses in a row), or this is past the kept ones: keep this. */
    f->ser_cur++;
    /* The key must end where nothing after it could change how it reads: at a blank or the '}'
     * (a line "name" alone would otherwise key "name_sum 1"). */
    if (key_len == 0 || key_len > SERIES_KEY_MAX || nl > SERIES_LABELS_MAX || i > f->ser_n ||
        (s[key_len - 1] != ' ' && s[key_len - 1] != '\t' && s[key_len - 1] != '}'))
        return;
    uintptr_t lo = (uintptr_t)s, hi = lo + key_len;
    for (size_t j = 0; j < nl; j++) {
        const struct cmh_prom_label *l = &p->labels[j];
        /* Unescaped text lives in scratch: such a line is not kept. */
        if ((uintptr_t)l->name < lo || (uintptr_t)l->name + l->name_len > hi ||
            (uintptr_t)l->value < lo || (uintptr_t)l->value + l->value_len > hi)
            return;
    }
    uint32_t off = cache_put(p, s, key_len);
    if (off == UINT32_MAX)
        return;
    uint32_t lab = k != NULL && k->nl >= nl ? k->lab : p->nslabels;
    if (lab == p->nslabels) {
        if (cache_room(p, (void **)&p->slabels, &p->slabels_cap, (size_t)p->nslabels + nl,
                       sizeof *p->slabels) != 0)
            goto drop;
        p->nslabels += (uint32_t)nl;
    }
    uint32_t slot;
    if (k == NULL) {
        /* A new last entry: f's entries move to the end of the array unless they are there. */
        int at_end = f->ser_n > 0 && f->ser_first + f->ser_n == p->nseries;
        size_t need = (size_t)p->nseries + (at_end ? 1 : f->ser_n + 1);
        if (cache_room(p, (void **)&p->series, &p->series_cap, need, sizeof *p->series) != 0)
            goto drop;
        if (!at_end) {
            if (f->ser_n > 0)
                memcpy(&p->series[p->nseries], &p->series[f->ser_first],
                       f->ser_n * sizeof *p->series);
            f->ser_first = p->nseries;
            p->nseries += f->ser_n;
        }
        slot = p->nseries++;
        f->ser_n++;
    } else {
        p->cache_live -= k->key_len;
        slot = f->ser_first + i;
    }
    p->series[slot] = (struct cmh_prom_series){
        off, (uint32_t)key_len, lab, (uint16_t)nl, (uint16_t)name_len, (uint8_t)sfx, f->type};
    const char *a = p->cache + off;
    for (size_t j = 0; j < nl; j++) {
        const struct cmh_prom_label *l = &p->labels[j];
        p->slabels[lab + j] = (struct cmh_prom_label){a + ((uintptr_t)l->name - lo), l->name_len,
                                                      a + ((uintptr_t)l->value - lo), l->value_len};
    }
    return;
drop:
    p->cache_live -= key_len;
}

/* ---- lines ------------------------------------------------------------------------------------
 */

/* The HELP text s..e of family fi. coff: where the same text, known to have no backslash, is in the
 * cache arena (it is used from there), or UINT32_MAX. */
static int parse_help(struct cmh_prom_parser *p, uint32_t fi, const char *s, const char *e,
                      uint32_t coff)
{
    struct cmh_prom_fam *f = &p->fams[fi - 1];
    if (f->flags & F_HELP) {
        char b[64];
        return fail(p, -EINVAL, "second HELP line for metric name %s",
                    Q(b, p->names + f->name_off, f->name_len));
    }
    f->flags |= F_HELP;
    p->help_fam = fi;
    p->help_len = (size_t)(e - s);
    p->help_coff = coff;
    if (coff != UINT32_MAX)
        return 0;
    p->help_fam = 0;
    int rc = ensure(p, &p->help, &p->help_cap, (size_t)(e - s));
    if (rc != 0)
        return rc;
    const char *bs = memchr(s, '\\', (size_t)(e - s));
    if (bs == NULL) {
        memcpy(p->help, s, (size_t)(e - s));
        p->help_len = (size_t)(e - s);
    } else {
        char *d = p->help;
        memcpy(d, s, (size_t)(bs - s));
        d += bs - s;
        for (const char *q = bs; q < e; q++) {
            if (*q != '\\') {
                *d++ = *q;
                continue;
            }
            if (q + 1 < e && q[1] == 'n')
                *d++ = '\n';
            else if (q + 1 < e && (q[1] == '\\' || q[1] == '"'))
                *d++ = q[1];
            else {
                p->help_fam = 0;
                return bad_escape(p, q, e);
            }
            q++;
        }
        p->help_len = (size_t)(d - p->help);
    }
    p->help_fam = fi;
    return 0;
}

static int set_type(struct cmh_prom_parser *p, uint32_t fi, enum cmh_prom_type t)
{
    struct cmh_prom_fam *f = &p->fams[fi - 1];
    if (f->flags & F_TYPE) {
        char b[64];
        return fail(p, -EINVAL,
                    "second TYPE line for metric name %s, or TYPE reported after samples",
                    Q(b, p->names + f->name_off, f->name_len));
    }
    f->type = (uint8_t)t;
    f->flags |= F_TYPE;
    return 0;
}

/* The type word s..e of family fi's TYPE line; *t is what it says. */
static int parse_type(struct cmh_prom_parser *p, uint32_t fi, const char *s, const char *e,
                      enum cmh_prom_type *type)
{
    char b[64];
    if (p->fams[fi - 1].flags & F_TYPE)
        return set_type(p, fi, CMH_PROM_UNTYPED); /* the error */
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    size_t n = (size_t)(e - s);
    enum cmh_prom_type t;
    if (eq_nocase(s, n, "counter"))
        t = CMH_PROM_COUNTER;
    else if (eq_nocase(s, n, "gauge"))
        t = CMH_PROM_GAUGE;
    else if (eq_nocase(s, n, "summary"))
        t = CMH_PROM_SUMMARY;
    else if (eq_nocase(s, n, "histogram"))
        t = CMH_PROM_HISTOGRAM;
    else if (eq_nocase(s, n, "untyped") || eq_nocase(s, n, "unknown"))
        t = CMH_PROM_UNTYPED;
    else if (eq_nocase(s, n, "gaugehistogram") || eq_nocase(s, n, "gauge_histogram"))
        t = CMH_PROM_GAUGE_HISTOGRAM;
    else if (eq_nocase(s, n, "info"))
        t = CMH_PROM_INFO;
    else if (eq_nocase(s, n, "stateset"))
        t = CMH_PROM_STATESET;
    else
        return fail(p, -EINVAL, "unknown metric type %s", Q(b, s, n));
    *type = t;
    return set_type(p, fi, t);
}

/* Reads a metric name at s: bare, or quoted (UTF-8 names). *name is a view into the line or
 * scratch; an empty name means there was none. */
static int read_metric_name(struct cmh_prom_parser *p, const char **ps, const char *e, char **sc,
                            const char **name, size_t *len, int *cur_prefix)
{
    const char *s = *ps;
    *cur_prefix = 0;
    if (s < e && *s == '"') {
        const char *q = s + 1;
        int non_ascii = 0;
        int r = read_quoted(&q, e, sc, name, len, &non_ascii);
        if (r == 1) {
            char b[64];
            return fail(p, -EINVAL, "metric name %s contains unescaped new-line",
                        Q(b, *name, *len));
        }
        if (r == 2)
            return bad_escape(p, q, e);
        if (*len == 0 || (non_ascii && !utf8_valid((const unsigned char *)*name, *len))) {
            char b[64];
            return fail(p, -EINVAL, "invalid metric name %s", Q(b, *name, *len));
        }
        *ps = q;
        return 0;
    }
    const char *q = scan_name(p, s, e, cur_prefix);
    *name = s;
    *len = (size_t)(q - s);
    *ps = q;
    return 0;
}

/* The entry (index + 1) whose kept HELP (help) or TYPE line is the line at s, 0 when none: the
 * current family's or the one predicted after it. avail: bytes readable at s; the line must end
 * with a '\n' among them. */
static inline uint32_t comment_match(const struct cmh_prom_parser *p, const char *s, size_t avail,
                                     int help)
{
    uint32_t c = p->cur;
    if (c == 0)
        return 0;
    uint32_t next = p->fams[c - 1].next;
    /* A HELP line usually starts the next family, a TYPE line follows its family's HELP line. */
    uint32_t cand[2] = {help ? next : c, help ? c : next};
    for (int i = 0; i < 2; i++) {
        uint32_t g = cand[i];
        if (g == 0)
            continue;
        const struct cmh_prom_fam *f = &p->fams[g - 1];
        uint32_t len = help ? f->help_len : f->type_len;
        if (len != 0 && len < avail && s[len] == '\n' &&
            eq_bytes(s, p->cache + (help ? f->help_off : f->type_off), len))
            return g;
    }
    return 0;
}

/* Applies the kept HELP or TYPE line s..e of entry g as parse_comment would, without scanning it.
 */
static ALWAYS_INLINE int comment_cached(struct cmh_prom_parser *p, uint32_t g, const char *s,
                                        const char *e, int help)
{
    const struct cmh_prom_fam *f = &p->fams[g - 1];
    /* The name is f's (lines are kept only for bare names); whether it starts with the current
     * family's name is what scan_name would have found. */
    const char *name = skip_blank(s + 7, e);
    size_t nlen = f->name_len;
    uint8_t plain = f->help_plain, t = f->type_cached;
    uint32_t off = f->help_off;
    uint32_t c = p->cur;
    const struct cmh_prom_fam *cf = &p->fams[c - 1];
    int cur_prefix = g == c || (cf->bare && nlen >= cf->name_len &&
                                eq_bytes(name, p->names + cf->name_off, cf->name_len))
                         ? 1
                         : 2;
    uint32_t fi;
    enum cmh_prom_suffix sfx;
    int rc = resolve(p, name, nlen, cur_prefix, &fi, &sfx);
    if (rc != 0)
        return rc;
    if (help) {
        const char *text = skip_blank(name + nlen, e);
        return parse_help(p, fi, text, e, plain ? off + (uint32_t)(text - s) : UINT32_MAX);
    }
    return set_type(p, fi, (enum cmh_prom_type)t);
}

static int parse_comment(struct cmh_prom_parser *p, const char *s, const char *e)
{
    const char *line = s - 1; /* at '#' */
    int help, usual = 0;
    if (e - s >= 7 && s[0] == ' ' && s[5] == ' ' &&
        (memcmp(s + 1, "HELP", 4) == 0 || memcmp(s + 1, "TYPE", 4) == 0)) {
        /* The usual "# HELP name" / "# TYPE name": the same as the general path below. */
        help = s[1] == 'H';
        uint32_t g = comment_match(p, line, (size_t)(e - line) + 1, help);
        if (g != 0)
            return comment_cached(p, g, line, e, help);
        usual = 1;
        s += 6;
    } else {
        s = skip_blank(s, e);
        const char *kw = s;
        s = until_blank(s, e);
        if (s == e)
            return 0;
        if (s - kw == 4 && memcmp(kw, "HELP", 4) == 0)
            help = 1;
        else if (s - kw == 4 && memcmp(kw, "TYPE", 4) == 0)
            help = 0;
        else
            return 0; /* any other comment, "# EOF" and "# UNIT" included */
    }
    s = skip_blank(s, e);
    usual = usual && *s != '"';
    char *sc = p->scratch;
    const char *name = NULL;
    size_t len = 0;
    int cur_prefix;
    int rc = read_metric_name(p, &s, e, &sc, &name, &len, &cur_prefix);
    if (rc != 0)
        return rc;
    if (s == e)
        return 0; /* "# HELP name" alone says nothing */
    if (*s != ' ' && *s != '\t')
        return fail(p, -EINVAL, "invalid metric name in comment");
    uint32_t fi;
    enum cmh_prom_suffix sfx;
    rc = resolve(p, name, len, cur_prefix, &fi, &sfx);
    if (rc != 0)
        return rc;
    s = skip_blank(s, e);
    if (s == e)
        return 0;
    /* Kept for the next body when the line names fi itself (not a suffix of it). */
    usual = usual && p->fams[fi - 1].name_len == len && p->fams[fi - 1].bare;
    if (help) {
        rc = parse_help(p, fi, s, e, UINT32_MAX);
        if (rc == 0 && usual)
            cache_comment(p, fi, 1, line, e, memchr(s, '\\', (size_t)(e - s)) == NULL);
        return rc;
    }
    enum cmh_prom_type t = CMH_PROM_UNTYPED;
    rc = parse_type(p, fi, s, e, &t);
    if (rc == 0 && usual)
        cache_comment(p, fi, 0, line, e, (uint8_t)t);
    return rc;
}

int cmh_prom_label_ptr_cmp(const void *a, const void *b)
{
    const struct cmh_prom_label *x = *(const struct cmh_prom_label *const *)a;
    const struct cmh_prom_label *y = *(const struct cmh_prom_label *const *)b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    if (c != 0)
        return c;
    return (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

static int has_dup_labels(struct cmh_prom_parser *p, size_t n)
{
    const struct cmh_prom_label *l = p->labels;
    if (n <= 16) {
        for (size_t i = 1; i < n; i++)
            for (size_t j = 0; j < i; j++)
                if (l[i].name_len == l[j].name_len && eq_bytes(l[i].name, l[j].name, l[i].name_len))
                    return 1;
        return 0;
    }
    /* Many labels: sort pointers (kept beside the labels) so a hostile line costs n log n. */
    const struct cmh_prom_label **v = (const struct cmh_prom_label **)(p->labels + p->labels_cap);
    for (size_t i = 0; i < n; i++)
        v[i] = &l[i];
    qsort(v, n, sizeof *v, cmh_prom_label_ptr_cmp);
    for (size_t i = 1; i < n; i++)
        if (cmh_prom_label_ptr_cmp(&v[i - 1], &v[i]) == 0)
            return 1;
    return 0;
}

static int grow_labels(struct cmh_prom_parser *p)
{
    /* One allocation holds the labels and, after them, as many pointers for the duplicate check. */
    size_t cap = p->labels_cap * 2;
    size_t unit = sizeof(struct cmh_prom_label) + sizeof(struct cmh_prom_label *);
    void *nl = cmh_reallocarray(NULL, cap, unit);
    if (nl == NULL)
        return fail(p, -ENOMEM, "out of memory");
    memcpy(nl, p->labels, p->labels_cap * sizeof(struct cmh_prom_label));
    cmh_free(p->labels);
    p->labels = nl;
    p->labels_cap = cap;
    return 0;
}

static int check_special_label(struct cmh_prom_parser *p, enum cmh_prom_type t, size_t nl)
{
    const char *want;
    size_t wl;
    if (t == CMH_PROM_SUMMARY) {
        want = "quantile";
        wl = 8;
    } else if (t == CMH_PROM_HISTOGRAM || t == CMH_PROM_GAUGE_HISTOGRAM) {
        want = "le";
        wl = 2;
    } else {
        return 0;
    }
    for (size_t i = 0; i < nl; i++) {
        const struct cmh_prom_label *l = &p->labels[i];
        if (l->name_len != wl || !eq_bytes(l->name, want, wl))
            continue;
        double d;
        if (parse_float(num_buf(p, l->value_len), l->value, l->value_len, &d) != 0) {
            char b[64];
            return fail(p, -EINVAL, "expected float as value for '%s' label, got %s", want,
                        Q(b, l->value, l->value_len));
        }
    }
    return 0;
}

/* The rest of a wanted sample line of family fi from its value at s: value, timestamp, checks that
 * need the value, then the events. */
static ALWAYS_INLINE int sample_tail(struct cmh_prom_parser *p, uint32_t fi,
                                     enum cmh_prom_suffix sfx, const char *name, size_t name_len,
                                     const struct cmh_prom_label *labels, size_t nl, const char *s,
                                     const char *e)
{
    struct cmh_prom_fam *f = &p->fams[fi - 1];
    enum cmh_prom_type type = (enum cmh_prom_type)f->type;
    char b[64];
    struct cmh_prom_sample smp;
    const char *q = quick_value(s, &smp.value);
    if (q != NULL) {
        s = q;
    } else {
        const char *v = s;
        s = until_blank(s, e);
        if (parse_float(num_buf(p, (size_t)(s - v)), v, (size_t)(s - v), &smp.value) != 0)
            return fail(p, -EINVAL, "expected float as value, got %s", Q(b, v, (size_t)(s - v)));
    }
    smp.has_timestamp = 0;
    smp.timestamp_ms = 0;
    s = skip_blank(s, e);
    if (s < e) {
        const char *t = s;
        s = until_blank(s, e);
        if (parse_int64(t, (size_t)(s - t), &smp.timestamp_ms) != 0)
            return fail(p, -EINVAL, "expected integer as timestamp, got %s",
                        Q(b, t, (size_t)(s - t)));
        smp.has_timestamp = 1;
        s = skip_blank(s, e);
        if (s < e)
            return fail(p, -EINVAL, "spurious string after timestamp: %s",
                        Q(b, s, (size_t)(e - s)));
    }
    if (type == CMH_PROM_HISTOGRAM || type == CMH_PROM_GAUGE_HISTOGRAM) {
        if (sfx == CMH_PROM_SUFFIX_COUNT && smp.value < 0)
            return fail(p, -EINVAL, "negative count for histogram %s",
                        Q(b, p->names + f->name_off, f->name_len));
        if (sfx == CMH_PROM_SUFFIX_BUCKET && smp.value < 0)
            return fail(p, -EINVAL, "negative bucket population for histogram %s",
                        Q(b, p->names + f->name_off, f->name_len));
    }
    if (p->finished)
        return 0; /* the unterminated last line is only checked, never delivered */

    if ((f->flags & F_ANNOUNCED) == 0) {
        f->flags |= F_ANNOUNCED;
        if (p->opt.on_family != NULL) {
            struct cmh_prom_family fam = {p->names + f->name_off, f->name_len, type, NULL, 0};
            if (p->help_fam == fi) {
                fam.help = p->help_coff != UINT32_MAX ? p->cache + p->help_coff : p->help;
                fam.help_len = p->help_len;
            }
            if (p->opt.on_family(p->opt.arg, &fam) != 0)
                return fail(p, -ECANCELED, "aborted by the family callback");
            f = &p->fams[fi - 1];
        }
    }
    p->stats.samples++;
    if (p->opt.on_sample != NULL) {
        smp.family = p->names + f->name_off;
        smp.family_len = f->name_len;
        smp.name = name;
        smp.name_len = name_len;
        smp.type = type;
        smp.suffix = sfx;
        smp.labels = labels;
        smp.nlabels = nl;
        smp.line = (unsigned long)p->stats.lines;
        if (p->opt.on_sample(p->opt.arg, &smp) != 0)
            return fail(p, -ECANCELED, "aborted by the sample callback");
    }
    return 0;
}

/* The current family's next series entry, or the one after it (this body lacks a kept series),
 * when the line at s starts with its key (avail: bytes readable at s, more than the key); else
 * NULL. */
static inline const struct cmh_prom_series *series_match(const struct cmh_prom_parser *p,
                                                         const char *s, size_t avail)
{
    uint32_t c = p->cur;
    if (c == 0)
        return NULL;
    const struct cmh_prom_fam *f = &p->fams[c - 1];
    for (uint32_t i = f->ser_cur; i < f->ser_n && i <= f->ser_cur + 1; i++) {
        const struct cmh_prom_series *k = &p->series[f->ser_first + i];
        if (avail > k->key_len && k->type == f->type &&
            eq_bytes(s, p->cache + k->key_off, k->key_len))
            return k;
    }
    return NULL;
}

/* The sample line s..e, which starts with the key of series entry k of the current family: name,
 * suffix and labels come from the entry, the rest is parsed as parse_sample does. 1 when the entry
 * does not apply after all (nothing done). */
static ALWAYS_INLINE int sample_cached(struct cmh_prom_parser *p, const struct cmh_prom_series *k,
                                       const char *s, const char *e)
{
    uint32_t c = p->cur;
    struct cmh_prom_fam *f = &p->fams[c - 1];
    const char *v = skip_blank(s + k->key_len, e);
    /* "name {labels} value" is read with labels: not this entry's "name value". */
    if (*v == '{')
        return 1;
    enum cmh_prom_suffix sfx = (enum cmh_prom_suffix)k->sfx;
    if (sfx != CMH_PROM_SUFFIX_NONE && !suffix_is_fams(p, f, s, k->name_len, sfx))
        return 1;
    if (!wanted(p, f))
        return 1;
    f->ser_cur = (uint32_t)(k - &p->series[f->ser_first]) + 1;
    f->ser_miss = 0;
    f->flags |= F_TYPE | F_SAMPLES;
    /* The name and labels are views into the kept key: the same bytes as the line's. */
    return sample_tail(p, c, sfx, p->cache + k->key_off, k->name_len,
                       k->nl != 0 ? &p->slabels[k->lab] : NULL, k->nl, v, e);
}

static int parse_sample(struct cmh_prom_parser *p, const char *s, const char *e)
{
    char *sc = p->scratch;
    const char *name = NULL;
    size_t name_len = 0;
    uint32_t fi = 0;
    enum cmh_prom_suffix sfx = CMH_PROM_SUFFIX_NONE;
    const char *s0 = s;
    int braces = *s == '{';
    char b[64];
    int rc;

    if (!braces) {
        const struct cmh_prom_series *k = series_match(p, s, (size_t)(e - s) + 1);
        if (k != NULL && (rc = sample_cached(p, k, s, e)) != 1)
            return rc;
        int cur_prefix;
        const char *q = scan_name(p, s, e, &cur_prefix);
        if (q == s || (q < e && *q != ' ' && *q != '\t' && *q != '{'))
            return fail(p, -EINVAL, "invalid metric name");
        name = s;
        name_len = (size_t)(q - s);
        rc = resolve(p, name, name_len, cur_prefix, &fi, &sfx);
        if (rc != 0)
            return rc;
        struct cmh_prom_fam *f = &p->fams[fi - 1];
        f->flags |= F_TYPE | F_SAMPLES;
        if (!wanted(p, f)) {
            /* Skipped: the name alone decides; labels and value are not decoded. */
            p->stats.skipped++;
            return 0;
        }
        s = skip_blank(q, e);
    }

    size_t nl = 0;
    if (s < e && *s == '{') {
        s++;
        for (;;) {
            /* Fast path, the canonical form: name="plain ASCII value" then ',' or '}'. Anything
             * else (blanks, escapes, UTF-8, quoted names, "__name__") takes the general path from
             * the label's start, which reads it the same way. */
            if (cls[(unsigned char)*s] & C_LNAME0) {
                const char *q = s + 1;
                while (cls[(unsigned char)*q] & C_LNAME)
                    q++;
                /* q[0] == '=' means q < e (*e is '\n'), so q[1] is readable. */
                if (q[0] == '=' && q[1] == '"' && !(q - s == 8 && memcmp(s, "__name__", 8) == 0)) {
                    const char *v = q + 2, *w = plain_ascii(v, e);
                    if (w < e && *w == '"' && (w[1] == ',' || w[1] == '}')) {
                        if (nl == p->labels_cap) {
                            rc = grow_labels(p);
                            if (rc != 0)
                                return rc;
                        }
                        p->labels[nl++] =
                            (struct cmh_prom_label){s, (size_t)(q - s), v, (size_t)(w - v)};
                        s = w + 2;
                        if (w[1] == '}')
                            break;
                        continue;
                    }
                }
            }
            s = skip_blank(s, e);
            if (s < e && *s == '}') {
                s++;
                break;
            }
            const char *ln;
            size_t ll;
            int quoted = s < e && *s == '"', quoted_ok = 1;
            if (quoted) {
                const char *q = s + 1;
                int non_ascii = 0;
                int r = read_quoted(&q, e, &sc, &ln, &ll, &non_ascii);
                if (r == 1)
                    return fail(p, -EINVAL, "label name %s contains unescaped new-line",
                                Q(b, ln, ll));
                if (r == 2)
                    return bad_escape(p, q, e);
                quoted_ok = ll > 0 && (!non_ascii || utf8_valid((const unsigned char *)ln, ll));
                s = q;
            } else {
                const char *q = s;
                if (cls[(unsigned char)*q] & C_LNAME0) /* not the '\n' at e */
                    for (q++; cls[(unsigned char)*q] & C_LNAME; q++)
                        ;
                if (q == s)
                    return fail(p, -EINVAL, "invalid label name for metric %s",
                                Q(b, name ? name : "", name_len));
                ln = s;
                ll = (size_t)(q - s);
                s = q;
            }
            /* Blanks are skipped only where the canonical form has none (name="value"). */
            if (s < e && *s != '=')
                s = skip_blank(s, e);
            if (s == e || *s != '=') {
                if (braces && quoted && s < e && (*s == ',' || *s == '}')) {
                    /* {"metric.name", ...}: the quoted name of a UTF-8 metric. */
                    if (name != NULL)
                        return fail(p, -EINVAL, "multiple metric names");
                    if (!quoted_ok)
                        return fail(p, -EINVAL, "invalid metric name %s", Q(b, ln, ll));
                    name = ln;
                    name_len = ll;
                    if (*s++ == '}')
                        break;
                    continue;
                }
                if (braces && quoted)
                    return fail(p, -EINVAL, "unexpected end of metric name");
                return fail(p, -EINVAL, "expected '=' after label name, found %s",
                            s < e ? Q(b, s, 1) : "end of line");
            }
            if (quoted && !quoted_ok)
                return fail(p, -EINVAL, "invalid label name %s", Q(b, ln, ll));
            if (ll == 8 && memcmp(ln, "__name__", 8) == 0)
                return fail(p, -EINVAL, "label name \"__name__\" is reserved");
            s++;
            if (s < e && *s != '"')
                s = skip_blank(s, e);
            if (s == e || *s != '"')
                return fail(p, -EINVAL, "expected '\"' at start of label value, found %s",
                            s < e ? Q(b, s, 1) : "end of line");
            const char *lv;
            size_t lvl;
            int non_ascii = 0, r = 0;
            s++;
            /* Inline fast path: a short plain ASCII value (the common case) needs no call. */
            const char *q = plain_ascii(s, e);
            if (q < e && *q == '"') {
                lv = s;
                lvl = (size_t)(q - s);
                s = q + 1;
            } else {
                r = read_quoted(&s, e, &sc, &lv, &lvl, &non_ascii);
            }
            if (r == 1)
                return fail(p, -EINVAL, "label value %s contains unescaped new-line",
                            Q(b, lv, lvl));
            if (r == 2)
                return bad_escape(p, s, e);
            if (non_ascii && !utf8_valid((const unsigned char *)lv, lvl))
                return fail(p, -EINVAL, "invalid label value %s", Q(b, lv, lvl));
            if (nl == p->labels_cap) {
                rc = grow_labels(p);
                if (rc != 0)
                    return rc;
            }
            p->labels[nl++] = (struct cmh_prom_label){ln, ll, lv, lvl};
            if (s < e && *s != ',' && *s != '}')
                s = skip_blank(s, e);
            if (s < e && *s == ',') {
                s++;
                continue;
            }
            if (s < e && *s == '}') {
                s++;
                break;
            }
            return fail(p, -EINVAL, "unexpected end of label value %s", Q(b, lv, lvl));
        }
        s = skip_blank(s, e);
    }

    if (braces) {
        if (name == NULL)
            return fail(p, -EINVAL, "invalid metric name");
        rc = resolve(p, name, name_len, 0, &fi, &sfx);
        if (rc != 0)
            return rc;
        struct cmh_prom_fam *f = &p->fams[fi - 1];
        f->flags |= F_TYPE | F_SAMPLES;
        if (!wanted(p, f)) {
            p->stats.skipped++;
            return 0;
        }
    }
    struct cmh_prom_fam *f = &p->fams[fi - 1];
    enum cmh_prom_type type = (enum cmh_prom_type)f->type;

    if (nl > 1 && has_dup_labels(p, nl))
        return fail(p, -EINVAL, "duplicate label names for metric %s",
                    Q(b, p->names + f->name_off, f->name_len));
    rc = check_special_label(p, type, nl);
    if (rc != 0)
        return rc;
    if (!braces)
        cache_series(p, fi, s0, (size_t)(s - s0), name_len, sfx, nl);
    return sample_tail(p, fi, sfx, name, name_len, p->labels, nl, s, e);
}

/* The hot path of the interest filter: whether the line at s is a sample of the current family (or
 * of one of its suffixes, known not to be a family of its own), whose samples are decided unwanted
 * for its type. Checks only that the line starts with that name and a delimiter; the rest of the
 * line is not read. avail: bytes readable at s. */
static ALWAYS_INLINE int skip_match(const struct cmh_prom_parser *p, const char *s, size_t avail)
{
    uint32_t c = p->cur;
    if (c == 0)
        return 0;
    const struct cmh_prom_fam *f = &p->fams[c - 1];
    size_t fl = f->name_len;
    if (f->want != 0 || f->want_type != f->type || !f->bare || avail <= fl ||
        !eq_bytes(s, p->names + f->name_off, fl))
        return 0;
    const char *q = s + fl, *end = s + avail;
    if (*q != ' ' && *q != '{' && *q != '\t') {
        while (q < end && (cls[(unsigned char)*q] & C_NAME))
            q++;
        if (q == end || (*q != ' ' && *q != '{' && *q != '\t'))
            return 0;
        size_t n = (size_t)(q - s);
        enum cmh_prom_suffix k = trailing_suffix(s, n);
        if (k == CMH_PROM_SUFFIX_NONE || (type_sfx[f->type] & SB(k)) == 0 ||
            sfx_defs[k].len != n - fl || (f->sfx_known & SB(k)) == 0 || (f->sfx_shadow & SB(k)))
            return 0;
    }
    return 1;
}

/* What parse_sample does with a line skip_match accepted. */
static inline void skip_line(struct cmh_prom_parser *p)
{
    p->fams[p->cur - 1].flags |= F_TYPE | F_SAMPLES;
    p->stats.lines++;
    p->stats.skipped++;
}

/* The first '\n' in [q, end), eight bytes at a time; NULL when there is none. */
static inline const char *find_nl(const char *q, const char *end)
{
    while (end - q >= 8) {
        uint64_t w, x;
        memcpy(&w, q, 8);
        x = w ^ 0x0a0a0a0a0a0a0a0aull;
        uint64_t hit = (x - 0x0101010101010101ull) & ~x & 0x8080808080808080ull;
        if (hit != 0)
            return q + (__builtin_ctzll(hit) >> 3); /* the lowest flagged byte is a true hit */
        q += 8;
    }
    while (q < end && *q != '\n')
        q++;
    return q < end ? q : NULL;
}

/* A line at s, ending before end, that the cache predicts (a kept HELP or TYPE line, a kept series,
 * or an unwanted sample of the current family): handled as parse_line would, and the pointer past
 * its '\n' returned (*rc: 0 or the error); NULL when it needs the general path (nothing done). Only
 * the part of the line the cache does not cover is scanned for the '\n'. */
static inline const char *fast_line(struct cmh_prom_parser *p, const char *s, const char *end,
                                    int *rc)
{
    size_t avail = (size_t)(end - s);
    const char *nl;
    if (*s == '#') {
        if (avail < 8 || s[1] != ' ' || s[6] != ' ')
            return NULL;
        int help = s[2] == 'H';
        uint32_t g = comment_match(p, s, avail, help);
        if (g == 0)
            return NULL;
        nl = s + (help ? p->fams[g - 1].help_len : p->fams[g - 1].type_len);
        p->stats.lines++;
        *rc = comment_cached(p, g, s, nl, help);
        return nl + 1;
    }
    const struct cmh_prom_series *k = series_match(p, s, avail);
    if (k != NULL) {
        nl = find_nl(s + k->key_len, end);
        if (nl == NULL || (size_t)(nl - s) > p->opt.max_line ||
            2 * (size_t)(nl - s) + SCRATCH_SLACK > p->scratch_cap)
            return NULL;
        p->stats.lines++;
        int r = sample_cached(p, k, s, nl);
        if (r == 1) {
            p->stats.lines--;
            return NULL;
        }
        *rc = r;
        return nl + 1;
    }
    if (skip_match(p, s, avail)) {
        nl = find_nl(s + p->fams[p->cur - 1].name_len, end);
        if (nl == NULL || (size_t)(nl - s) > p->opt.max_line)
            return NULL;
        skip_line(p);
        *rc = 0;
        return nl + 1;
    }
    return NULL;
}

static int parse_line(struct cmh_prom_parser *p, const char *s, const char *e)
{
    if (skip_match(p, s, (size_t)(e - s) + 1)) {
        skip_line(p);
        return 0;
    }
    p->stats.lines++;
    s = skip_blank(s, e);
    if (s == e)
        return 0;
    if (2 * (size_t)(e - s) + SCRATCH_SLACK > p->scratch_cap) {
        int rc = ensure(p, &p->scratch, &p->scratch_cap, 2 * (size_t)(e - s) + SCRATCH_SLACK);
        if (rc != 0)
            return rc;
    }
    if (*s == '#')
        return parse_comment(p, s + 1, e);
    return parse_sample(p, s, e);
}

/* ---- public -----------------------------------------------------------------------------------
 */

int cmh_prom_init(struct cmh_prom_parser *p, const struct cmh_prom_options *opt)
{
    memset(p, 0, sizeof *p);
    if (opt != NULL)
        p->opt = *opt;
    if (p->opt.max_line == 0)
        p->opt.max_line = CMH_PROM_MAX_LINE_DEFAULT;
    if (p->opt.max_state == 0)
        p->opt.max_state = CMH_PROM_MAX_STATE_DEFAULT;
    if (p->opt.max_cache == 0)
        p->opt.max_cache = CMH_PROM_MAX_CACHE_DEFAULT;
    if (p->opt.max_line > MAX_LINE_LIMIT)
        return -EINVAL;
    int rc = -ENOMEM;
    p->line_cap = p->help_cap = 4096;
    p->scratch_cap = 2 * 4096 + SCRATCH_SLACK;
    p->line = cmh_malloc(p->line_cap);
    p->scratch = cmh_malloc(p->scratch_cap);
    p->help = cmh_malloc(p->help_cap);
    p->labels_cap = 16;
    p->labels = cmh_reallocarray(NULL, p->labels_cap,
                                 sizeof(struct cmh_prom_label) + sizeof(struct cmh_prom_label *));
    if (p->line == NULL || p->scratch == NULL || p->help == NULL || p->labels == NULL)
        goto out;
    p->gen = 1;
    rc = 0;
out:
    if (rc != 0)
        cmh_prom_close(p);
    return rc;
}

void cmh_prom_close(struct cmh_prom_parser *p)
{
    cmh_free(p->line);
    cmh_free(p->scratch);
    cmh_free(p->help);
    cmh_free(p->labels);
    cmh_free(p->fams);
    cmh_free(p->slots);
    cmh_free(p->names);
    cmh_free(p->cache);
    cmh_free(p->series);
    cmh_free(p->slabels);
    memset(p, 0, sizeof *p);
}

void cmh_prom_reset(struct cmh_prom_parser *p)
{
    /* Entries of earlier bodies only keep filter decisions; a table that grew past half its bound
     * (a node sending ever new names) or a wrapped body counter starts over. */
    if (state_bytes(p) > p->opt.max_state / 2 || p->gen == UINT32_MAX) {
        p->nfams = 0;
        p->names_len = 0;
        if (p->slots != NULL)
            memset(p->slots, 0, (size_t)p->slots_cap * sizeof *p->slots);
        p->gen = 0;
        cache_clear(p);
    } else {
        cache_trim(p);
    }
    p->gen++;
    p->cur = 0;
    p->help_fam = 0;
    p->help_len = 0;
    p->line_len = 0;
    p->finished = 0;
    memset(&p->stats, 0, sizeof p->stats);
    memset(&p->err, 0, sizeof p->err);
}

static int too_long(struct cmh_prom_parser *p)
{
    p->stats.lines++;
    return fail(p, -E2BIG, "line longer than %zu bytes", p->opt.max_line);
}

int cmh_prom_feed(struct cmh_prom_parser *p, const char *buf, size_t len)
{
    if (p->err.code != 0)
        return p->err.code;
    if (p->finished)
        return fail(p, -EINVAL, "data after the end of the body");
    const char *s = buf, *e = buf + len;
    size_t max = p->opt.max_line;
    int rc;
    p->stats.bytes += len;
    if (p->line_len > 0) {
        const char *nl = memchr(s, '\n', len);
        size_t take = (size_t)((nl != NULL ? nl : e) - s);
        if (take > max - p->line_len)
            return too_long(p);
        rc = ensure(p, &p->line, &p->line_cap, p->line_len + take + 1);
        if (rc != 0)
            return rc;
        memcpy(p->line + p->line_len, s, take);
        p->line_len += take;
        if (nl == NULL)
            return 0;
        p->line[p->line_len] = '\n'; /* see skip_blank */
        rc = parse_line(p, p->line, p->line + p->line_len);
        p->line_len = 0;
        if (rc != 0)
            return rc;
        s = nl + 1;
    }
    while (s < e) {
        const char *nl = fast_line(p, s, e, &rc);
        if (nl != NULL) {
            if (rc != 0)
                return rc;
            s = nl;
            continue;
        }
        nl = memchr(s, '\n', (size_t)(e - s));
        if (nl == NULL) {
            if ((size_t)(e - s) > max)
                return too_long(p);
            rc = ensure(p, &p->line, &p->line_cap, (size_t)(e - s) + 1);
            if (rc != 0)
                return rc;
            memcpy(p->line, s, (size_t)(e - s));
            p->line_len = (size_t)(e - s);
            return 0;
        }
        if ((size_t)(nl - s) > max)
            return too_long(p);
        rc = parse_line(p, s, nl);
        if (rc != 0)
            return rc;
        s = nl + 1;
    }
    return 0;
}

int cmh_prom_finish(struct cmh_prom_parser *p)
{
    if (p->err.code != 0)
        return p->err.code;
    if (p->finished)
        return 0;
    p->finished = 1;
    if (p->line_len == 0)
        return 0;
    const char *s = p->line, *e = p->line + p->line_len;
    p->line[p->line_len] = '\n'; /* see skip_blank; room was ensured when the line was kept */
    p->line_len = 0;
    if (skip_blank(s, e) == e)
        return 0; /* trailing blanks without a newline: accepted, as by the reference parser */
    /* A last line without '\n' is an error; report what is wrong with it if anything is, else the
     * missing newline. Its sample is never delivered (p->finished). */
    int rc = parse_line(p, s, e);
    if (rc != 0)
        return rc;
    return fail(p, -EINVAL, "unexpected end of input stream (no newline after the last line)");
}

const struct cmh_prom_error *cmh_prom_error(const struct cmh_prom_parser *p)
{
    return &p->err;
}

int cmh_prom_want_names(void *arg, const char *family, size_t len, enum cmh_prom_type type)
{
    const struct cmh_prom_names *set = arg;
    (void)type;
    for (size_t i = 0; i < set->n; i++) {
        const char *w = set->names[i];
        size_t wl = strlen(w);
        if (wl > 0 && w[wl - 1] == '*') {
            if (len >= wl - 1 && memcmp(family, w, wl - 1) == 0)
                return 1;
        } else if (wl == len && memcmp(family, w, len) == 0) {
            return 1;
        }
    }
    return 0;
}
