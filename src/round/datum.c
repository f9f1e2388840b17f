#include "cmh/round/datum.h"

#include "cmh/core/alloc.h"
#include "cmh/core/log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int cmh_datum_push(struct cmh_datum_list *l, const struct cmh_datum *d)
{
    struct cmh_datum *v = cmh_grow(l->v, &l->cap, l->n + 1, sizeof *v, 64);
    if (v == NULL)
        return -ENOMEM;
    l->v = v;
    l->v[l->n++] = *d;
    return 0;
}

void cmh_datum_list_free(struct cmh_datum_list *l)
{
    cmh_free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

/* Appends s as a JSON string; returns the new offset, or len + 1 when it does not fit. */
static size_t json_str(char *buf, size_t off, size_t len, const char *s)
{
    if (off < len)
        buf[off] = '"';
    off++;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char tmp[8];
        size_t n = 1;
        if (*p == '"' || *p == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)*p;
            n = 2;
        } else if (*p < 0x20) {
            n = (size_t)snprintf(tmp, sizeof tmp, "\\u%04x", *p);
        } else {
            tmp[0] = (char)*p;
        }
        if (off + n < len)
            memcpy(buf + off, tmp, n);
        off += n;
    }
    if (off < len)
        buf[off] = '"';
    return off + 1;
}

int cmh_datum_dims_json(const struct cmh_datum *d, char *buf, size_t len)
{
    size_t off = 0;
    if (len < 3)
        return -ENOSPC;
    buf[off++] = '{';
    for (unsigned i = 0; i < d->ndims; i++) {
        if (i > 0) {
            if (off < len)
                buf[off] = ',';
            off++;
        }
        off = json_str(buf, off, len, d->dims[i].name);
        if (off < len)
            buf[off] = ':';
        off++;
        off = json_str(buf, off, len, d->dims[i].value);
    }
    if (off + 1 >= len)
        return -ENOSPC;
    buf[off++] = '}';
    buf[off] = '\0';
    return (int)off;
}

void cmh_datum_log(struct cmh_log *log, const struct cmh_datum *d)
{
    if (!cmh_log_enabled(log, CMH_LOG_INFO))
        return;
    char dims[1024], ts[32], stats[256];
    if (cmh_datum_dims_json(d, dims, sizeof dims) < 0)
        snprintf(dims, sizeof dims, "{}");
    cmh_fmt_rfc3339(ts, sizeof ts, d->timestamp_ms);
    if (d->kind == CMH_DATUM_VALUE) {
        CMH_LOG(log, CMH_LOG_INFO, "datum", CMH_STR("metric", d->metric),
                CMH_JSON("dimensions", dims), CMH_STR("timestamp", ts), CMH_STR("unit", d->unit),
                CMH_DBL("value", d->value));
        return;
    }
    char c[40], s[40], mn[40], mx[40];
    cmh_fmt_double(c, sizeof c, d->count);
    cmh_fmt_double(s, sizeof s, d->sum);
    cmh_fmt_double(mn, sizeof mn, d->min);
    cmh_fmt_double(mx, sizeof mx, d->max);
    snprintf(stats, sizeof stats, "{\"sample_count\":%s,\"sum\":%s,\"min\":%s,\"max\":%s}", c, s,
             mn, mx);
    CMH_LOG(log, CMH_LOG_INFO, "datum", CMH_STR("metric", d->metric), CMH_JSON("dimensions", dims),
            CMH_STR("timestamp", ts), CMH_STR("unit", d->unit), CMH_JSON("statistics", stats));
}
