/* Our HTTP server (libuv + llhttp): GET/HEAD only, a fixed set of paths answered by a handler,
 * bounded connections, request size and idle time. Owned by the daemon (embedded); thread: the
 * loop thread only. */
#ifndef CMH_HTTP_SERVER_H
#define CMH_HTTP_SERVER_H

#include "cmh/core/buf.h"
#include "cmh/core/log.h"

#include <stddef.h>
#include <uv.h>

/* Answers GET path: fills body and *content_type (a static string) and returns the HTTP status
 * (200, 503...), or 404 for an unknown path. Called on the loop thread, synchronously. */
typedef int (*cmh_http_handler)(void *arg, const char *path, struct cmh_buf *body,
                                const char **content_type);

struct cmh_http_server_opts {
    const char *address; /* IPv4 or IPv6 literal */
    unsigned port;       /* 0: any free port (read it back from cmh_http_server_port) */
    /* Open connections at most (0 = 64). A connection beyond closes the oldest one still waiting
     * for its request of the address holding the most (see on_connection): no address can keep
     * another out by holding connections open. */
    unsigned max_conns;
    unsigned max_request; /* request line + headers, bytes */
    unsigned idle_ms;     /* a connection that sends no complete request by then is closed */
};

struct cmh_http_conn;
struct cmh_http_peer;
struct cmh_http_server;

/* Fires once, when the listener and every connection are closed. */
typedef void (*cmh_http_server_close_cb)(struct cmh_http_server *s);

struct cmh_http_server {
    /* read-only */
    unsigned long long accepted; /* connections accepted: each one's age order */
    unsigned long long requests, rejected;
    unsigned long long evicted; /* closed to make room for a newcomer (counted in rejected too) */
    unsigned long long accept_errors; /* accept failed (EMFILE...): logged at 1, 2, 4, 8... */
    unsigned nconns;
    /* private (cmh_http_server_feed's callers set handler, handler_arg and opt.max_request) */
    uv_loop_t *loop;
    struct cmh_log *log;
    struct cmh_http_server_opts opt;
    uv_tcp_t listener;
    cmh_http_handler handler;
    void *handler_arg;
    struct cmh_http_conn *conns; /* open connections, a doubly linked list */
    unsigned pending_closes;     /* listener + connections being closed */
    int listening;
    cmh_http_server_close_cb close_cb;
    struct cmh_http_peer *peers; /* per remote address: its open connections (max_conns + 1) */
    unsigned npeers;
};

/* Binds and listens. Returns 0 or a negative uv error (logged, with the address). */
int cmh_http_server_start(struct cmh_http_server *s, uv_loop_t *loop,
                          const struct cmh_http_server_opts *opt, cmh_http_handler handler,
                          void *arg, struct cmh_log *log);
/* The port actually bound. */
unsigned cmh_http_server_port(const struct cmh_http_server *s);
/* Closes the listener and every connection; close_cb (may be NULL) fires when all are closed. */
void cmh_http_server_close(struct cmh_http_server *s, cmh_http_server_close_cb close_cb);

#endif
