/* Test and fuzz seams of discovery (include/cmh/k8s/discovery.h): the streaming PodList parser,
 * the watch event parser and the watch stream's framing, and the pods store's own check. Pure (no
 * I/O); the program reaches them only through discovery. Thread: the caller's. */
#ifndef CMH_DISCOVERY_INT_H
#define CMH_DISCOVERY_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "cmh/k8s/discovery.h"

enum cmh_discovery_event_type {
    CMH_K8S_EV_ADDED,
    CMH_K8S_EV_MODIFIED,
    CMH_K8S_EV_DELETED,
    CMH_K8S_EV_BOOKMARK,
    CMH_K8S_EV_ERROR,
};

/* What one watch line said. */
struct cmh_discovery_event {
    enum cmh_discovery_event_type type;
    char rv[64];  /* object.metadata.resourceVersion ("" for ERROR) */
    long code;    /* ERROR: the Status code (410 = Gone) */
    bool changed; /* the pods map changed */
    bool relist;  /* a kept pod left while pods beyond max exist: list again to take one in */
};

/* Checks the store's own invariants (every pod in the tree once, in strictly increasing name
 * order, balanced, the target count right): 0, or -EFAULT. For tests and fuzzers. */
int cmh_discovery_pods_check(const struct cmh_discovery_pods *pods);

/* A PodList page parsed as it streams, in chunks cut anywhere: memory is one pod object at a
 * time (at most item_max bytes; 0 = CMH_DISCOVERY_ITEM_MAX) plus what pods keeps, whatever the
 * page's size. The top level is scanned here; metadata, each item and every other top-level
 * value is handed to jansson alone, so a page is accepted exactly when jansson accepts it whole,
 * but for a repeated "items" key (refused) and an item over item_max (skipped and counted in
 * items_too_large, not checked). Items are added to pods as they come: on an error, discard pods.
 * _feed returns 0 or the first error (-EBADMSG, -ENOMEM), after which data is ignored; _end
 * returns the page's verdict as cmh_discovery_parse_list does and frees what p holds (call it
 * also to abandon a page). */
void cmh_discovery_list_begin(struct cmh_discovery_list_parser *p, struct cmh_discovery_pods *pods,
                              size_t item_max);
int cmh_discovery_list_feed(struct cmh_discovery_list_parser *p, const char *data, size_t len);
int cmh_discovery_list_end(struct cmh_discovery_list_parser *p, char *rv, size_t rvlen, char *cont,
                           size_t contlen);
/* Applies one watch event line to pods. Returns 0 with ev filled, -EBADMSG, -E2BIG (more than
 * CMH_DISCOVERY_ITEM_VALUES values) or -ENOMEM; on an error pods is unchanged. */
int cmh_discovery_parse_event(struct cmh_discovery_pods *pods, const char *line, size_t len,
                              struct cmh_discovery_event *ev);
/* How the watch log names a parse_event error ("not JSON", "too many values", "out of memory"). */
const char *cmh_discovery_event_error(int rc);
/* The watch stream's framing (what libcurl's chunks of a 200 watch answer go through; a test and
 * fuzz seam, no I/O): cuts data into lines, a line possibly spanning chunks (kept in d->line) and
 * never longer than d->line_max, applies each non-blank line as an event to d->pods and d->rv and
 * records failures in d->err (logged when d->log is set). Only those
 * fields, d->line* and d->abort_* are used: a zeroed struct with pods.max set is enough.
 * *changed says whether the pods map, or the count of pods beyond its bound, changed. Returns 0
 * to go on, or 1 when the watch must end: an ERROR event (410: d->abort_gone), a bad event, a line
 * too long or out of memory (d->abort_bad), a kept pod deleted while pods beyond the bound wait
 * (d->abort_room: a list takes one in); later data is then not applied. */
int cmh_discovery_watch_feed(struct cmh_discovery *d, const char *data, size_t len, bool *changed);

#endif
