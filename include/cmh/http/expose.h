/* Our own Prometheus exposition (text format 0.0.4) on /metrics: a list of parts, each a callback
 * that renders the families of the module owning them, in the order they were added, then the
 * build_info family. Knows nothing of rounds: the daemon adds the parts and owns their state. Names
 * are prefixed cni_metrics_helper_, so a Prometheus scraping ipamD too never double counts. Owned
 * by the daemon (embedded); thread: the loop thread. */
#ifndef CMH_EXPOSE_H
#define CMH_EXPOSE_H

#include "cmh/core/buf.h"
#include "cmh/core/log.h"
#include "cmh/http/http_server.h"

#include <stddef.h>

#define CMH_EXPOSE_PREFIX    "cni_metrics_helper_"
#define CMH_EXPOSE_MAX_PARTS 16

/* Appends the families of one part to out. arg is the one given to cmh_expose_add. */
typedef void (*cmh_expose_cb)(void *arg, struct cmh_buf *out);

struct cmh_expose {
    /* private */
    struct {
        cmh_expose_cb cb;
        void *arg;
    } parts[CMH_EXPOSE_MAX_PARTS];
    size_t nparts;
};

/* Adds a part after those added before; arg is borrowed for e's life. Returns 0, or -ENOSPC past
 * CMH_EXPOSE_MAX_PARTS. */
int cmh_expose_add(struct cmh_expose *e, cmh_expose_cb cb, void *arg);

/* Renders every part in order into out, then build_info. */
void cmh_expose_render(const struct cmh_expose *e, struct cmh_buf *out);

/* Writers of the text format for the parts. */

/* The HELP and TYPE lines of a family of ours (name without CMH_EXPOSE_PREFIX). */
void cmh_expose_family(struct cmh_buf *out, const char *name, const char *type, const char *help);
/* A family of ours with one unlabelled sample. */
void cmh_expose_scalar(struct cmh_buf *out, const char *name, const char *type, const char *help,
                       unsigned long long v);
/* One sample line: name, suffix and labels ("{...}" or "") as given, the value as
 * cmh_fmt_double writes it. */
void cmh_expose_sample(struct cmh_buf *out, const char *name, const char *suffix,
                       const char *labels, double v);
/* A label value escaped as the text format wants: backslash, quote and newline. */
void cmh_expose_label_value(struct cmh_buf *out, const char *v);

/* Parts of this layer. arg: the const struct cmh_http_server whose own errors are shown. */
void cmh_expose_http_server(void *arg, struct cmh_buf *out);
/* arg: the struct cmh_log whose lost lines are counted. */
void cmh_expose_log(void *arg, struct cmh_buf *out);

#endif
