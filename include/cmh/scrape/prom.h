/* Streaming Prometheus text-format parser (0.0.4, tolerating OpenMetrics text): bytes in, events
 * out. Owned by its caller (one per in-flight scrape, reused across scrapes); thread: any, one at a
 * time. */
#ifndef CMH_PROM_H
#define CMH_PROM_H

#include <stddef.h>
#include <stdint.h>

/* What is accepted: the text format 0.0.4 as the reference Go parser (prometheus/common expfmt)
 * reads it, with UTF-8 names in quotes ({"my.metric", "label.name"="v"}), case-insensitive TYPE
 * words, and OpenMetrics text as ipamD-compatible servers may send it: "# EOF", "# UNIT" and other
 * comments are ignored, counter samples may be name_total / name_created, types unknown, info,
 * stateset, gaugehistogram. Deliberate differences from the Go parser: spaces and tabs at the end
 * of a line are ignored; a bare name must be followed by a space, a tab or '{'; a quoted name is
 * only accepted inside braces and after HELP/TYPE; duplicate label names are rejected in every
 * family (Go lets a second "quantile"/"le" through); float timestamps and exemplars are rejected.
 *
 * Lines of unwanted families (see cmh_prom_want_cb) are checked only for their metric name and the
 * character after it, then skipped to the next '\n': their labels, value, timestamp and UTF-8 are
 * not decoded, so a malformed skipped line does not fail the body. HELP and TYPE lines are always
 * checked in full. */

/* Longest line accepted by default (excluding its '\n'); a longer line is an error. */
#define CMH_PROM_MAX_LINE_DEFAULT (64u * 1024u)
/* Default bound on the per-body family table (entries plus names), in bytes. */
#define CMH_PROM_MAX_STATE_DEFAULT (1024u * 1024u)
/* Default bound on the line cache: the lines of earlier bodies kept so that the same lines are
 * compared rather than parsed again (about 20 KiB for an ipamD scrape). Lines past it are parsed
 * as if there were no cache. */
#define CMH_PROM_MAX_CACHE_DEFAULT (64u * 1024u)
/* Longest error reason, including the terminating NUL. */
#define CMH_PROM_REASON_MAX 192

enum cmh_prom_type {
    CMH_PROM_UNTYPED, /* no TYPE line, "untyped", or OpenMetrics "unknown" */
    CMH_PROM_COUNTER,
    CMH_PROM_GAUGE,
    CMH_PROM_SUMMARY,
    CMH_PROM_HISTOGRAM,
    CMH_PROM_GAUGE_HISTOGRAM, /* "gaugehistogram" or "gauge_histogram" */
    CMH_PROM_INFO,            /* OpenMetrics */
    CMH_PROM_STATESET,        /* OpenMetrics */
};

/* How a sample's name relates to its family's name. A suffix is only recognised where the
 * family's type allows it (e.g. _bucket for histograms, _total for counters). */
enum cmh_prom_suffix {
    CMH_PROM_SUFFIX_NONE,
    CMH_PROM_SUFFIX_SUM,
    CMH_PROM_SUFFIX_COUNT,
    CMH_PROM_SUFFIX_BUCKET,
    CMH_PROM_SUFFIX_TOTAL,
    CMH_PROM_SUFFIX_CREATED,
    CMH_PROM_SUFFIX_GSUM,
    CMH_PROM_SUFFIX_GCOUNT,
    CMH_PROM_SUFFIX_INFO,
};

/* One label: views (not NUL-terminated); values are unescaped and valid UTF-8. */
struct cmh_prom_label {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* A family, announced once per body just before its first wanted sample. */
struct cmh_prom_family {
    const char *name; /* unescaped; a view */
    size_t name_len;
    enum cmh_prom_type type;
    const char *help; /* unescaped HELP text seen before the first sample, or NULL */
    size_t help_len;
};

/* One sample line. Every pointer is a view valid only during the callback. */
struct cmh_prom_sample {
    const char *family; /* family name, e.g. "go_gc_duration_seconds" */
    size_t family_len;
    const char *name; /* sample name as written, e.g. "go_gc_duration_seconds_sum" */
    size_t name_len;
    enum cmh_prom_type type;             /* of the family */
    enum cmh_prom_suffix suffix;         /* name = family + suffix */
    const struct cmh_prom_label *labels; /* in line order, including "le" and "quantile" */
    size_t nlabels;
    double value;
    int has_timestamp;
    int64_t timestamp_ms;
    unsigned long line; /* 1-based line number in the body */
};

/* Decides whether the samples of a family are wanted (non-zero) or skipped (0). Called at most once
 * per family and body, at the family's first sample line, with its final type; the answer is cached
 * by name (and type) across cmh_prom_reset(), so it must depend only on its arguments. */
typedef int cmh_prom_want_cb(void *arg, const char *family, size_t len, enum cmh_prom_type type);
/* Event callbacks: return 0 to go on, non-zero to abort the body with -ECANCELED. */
typedef int cmh_prom_family_cb(void *arg, const struct cmh_prom_family *family);
typedef int cmh_prom_sample_cb(void *arg, const struct cmh_prom_sample *sample);

struct cmh_prom_options {
    size_t max_line;        /* 0: CMH_PROM_MAX_LINE_DEFAULT */
    size_t max_state;       /* 0: CMH_PROM_MAX_STATE_DEFAULT; bounds the family table of one body */
    size_t max_cache;       /* 0: CMH_PROM_MAX_CACHE_DEFAULT; bounds the line cache */
    cmh_prom_want_cb *want; /* NULL: every family is wanted */
    void *want_arg;
    cmh_prom_family_cb *on_family; /* may be NULL */
    cmh_prom_sample_cb *on_sample; /* may be NULL */
    void *arg;                     /* of on_family and on_sample */
};

/* Why a body was rejected. line is 1-based; 0 when the error is not tied to a line. */
struct cmh_prom_error {
    int code; /* 0, -EINVAL (malformed), -E2BIG (a limit), -ECANCELED (callback), -ENOMEM */
    unsigned long line;
    char reason[CMH_PROM_REASON_MAX];
};

/* Counters of the current body (reset by cmh_prom_reset). */
struct cmh_prom_stats {
    uint64_t bytes;
    uint64_t lines;
    uint64_t samples; /* sample lines delivered to on_sample */
    uint64_t skipped; /* sample lines of unwanted families */
};

struct cmh_prom_fam;    /* private */
struct cmh_prom_series; /* private */

/* Embeddable. */
struct cmh_prom_parser {
    /* read-only */
    struct cmh_prom_stats stats;
    /* private */
    struct cmh_prom_options opt;
    struct cmh_prom_error err;
    /* The partial line carried between chunks, scratch for unescaped text and numbers, the last
     * HELP text. They grow on demand up to their bound (max_line; scratch 2 * max_line) and are
     * kept across resets. */
    char *line;
    size_t line_len, line_cap;
    char *scratch;
    size_t scratch_cap;
    struct cmh_prom_label *labels;
    size_t labels_cap;
    /* Family table: entries, open-addressing slots (index + 1), names arena. */
    struct cmh_prom_fam *fams;
    uint32_t nfams, fams_cap;
    uint32_t *slots;
    uint32_t slots_cap;
    char *names;
    size_t names_len, names_cap;
    uint32_t gen;       /* body number: entries of other bodies only cache want decisions */
    uint32_t cur;       /* index + 1 of the family of the previous line, 0 when none */
    uint32_t help_fam;  /* index + 1 of the family whose HELP text is in help */
    uint32_t help_coff; /* or in the line cache at this offset; UINT32_MAX when not */
    char *help;
    size_t help_len, help_cap;
    int finished;
    /* Line cache: HELP/TYPE lines and sample lines up to their value, as earlier bodies had them,
     * with what parsing them found; a line that starts with the same bytes is not parsed again.
     * Bytes arena (live: bytes still referenced), series entries, their labels. */
    char *cache;
    size_t cache_len, cache_cap, cache_live, cache_seen;
    struct cmh_prom_series *series;
    uint32_t nseries, series_cap;
    struct cmh_prom_label *slabels;
    uint32_t nslabels, slabels_cap;
};

/* Initialises p with copies of opt's values (opt may be NULL: defaults, no callbacks) and small
 * buffers (a few KiB) that grow only for longer lines, never past 4 * max_line in all. Returns 0,
 * -EINVAL on a max_line of more than 1 GiB, or -ENOMEM. */
int cmh_prom_init(struct cmh_prom_parser *p, const struct cmh_prom_options *opt);
/* Frees everything p owns. Safe on a zeroed or already closed parser. */
void cmh_prom_close(struct cmh_prom_parser *p);
/* Makes p ready for a new body without freeing its buffers; cached filter decisions and the line
 * cache are kept. A reused parser gives exactly the events and errors a fresh one would: the cache
 * only spares it scanning lines it has seen before. */
void cmh_prom_reset(struct cmh_prom_parser *p);

/* Feeds the next len bytes of the body; a line may span any number of calls. Callbacks run inside
 * this call, in line order, for every complete line. Returns 0, or the error code (also kept in
 * cmh_prom_error()); after an error every later call returns it again until cmh_prom_reset(). */
int cmh_prom_feed(struct cmh_prom_parser *p, const char *buf, size_t len);
/* Ends the body: a last line without its '\n' is an error (spaces and tabs alone are tolerated,
 * as by the reference parser). Returns 0 or the error code. */
int cmh_prom_finish(struct cmh_prom_parser *p);
/* The error of the current body (code 0 when none). */
const struct cmh_prom_error *cmh_prom_error(const struct cmh_prom_parser *p);

/* qsort comparator for an array of label pointers: by name, bytewise. */
int cmh_prom_label_ptr_cmp(const void *a, const void *b);

#endif
