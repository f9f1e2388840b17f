/* Datums: what one round publishes, one value per metric and dimension set, timestamped with the
 * round start. Lists are owned by their producer (the aggregator); thread: the loop thread. */
#ifndef CMH_DATUM_H
#define CMH_DATUM_H

#include <stddef.h>
#include <stdint.h>

struct cmh_log;

#define CMH_DATUM_MAX_DIMS 3

struct cmh_dim {
    const char *name;
    const char *value;
};

enum cmh_datum_kind {
    CMH_DATUM_VALUE, /* value */
    CMH_DATUM_STATS, /* count, sum, min, max: a CloudWatch StatisticSet */
};

struct cmh_datum {
    const char *metric; /* CloudWatch metric name */
    const char *unit;   /* CloudWatch unit, e.g. "Count" */
    int64_t timestamp_ms;
    enum cmh_datum_kind kind;
    double value;
    double count, sum, min, max;
    struct cmh_dim dims[CMH_DATUM_MAX_DIMS];
    unsigned ndims;
};

struct cmh_datum_list {
    struct cmh_datum *v;
    size_t n, cap;
};

/* Appends a copy of d (its strings stay borrowed). Returns 0 or -ENOMEM. */
int cmh_datum_push(struct cmh_datum_list *l, const struct cmh_datum *d);
void cmh_datum_list_free(struct cmh_datum_list *l);

/* Writes the dimensions as a JSON object ({"CLUSTER_ID":"c1"}) into buf; returns its length, or
 * -ENOSPC when it does not fit. */
int cmh_datum_dims_json(const struct cmh_datum *d, char *buf, size_t len);

/* Logs d as one event with msg "datum" and fields metric, dimensions (a JSON object), timestamp
 * (RFC 3339 UTC), unit, and value or statistics (sample_count, sum, min, max). */
void cmh_datum_log(struct cmh_log *log, const struct cmh_datum *d);

#endif
