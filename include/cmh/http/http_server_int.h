/* Test seams of http_server.h: the request side of a connection without a socket, for the tests and
 * the fuzzer. Not part of the contract: the program never calls these; only the module itself, its
 * tests, fuzzers and benchmarks include this header. */
#ifndef CMH_HTTP_SERVER_INT_H
#define CMH_HTTP_SERVER_INT_H

#include "cmh/http/http_server.h"

/* Test and fuzz seam, no socket: runs the request side of one fresh connection of s (byte bound,
 * llhttp, the handler) over reads[0..nreads) as if they arrived in that order, exactly as a
 * connection's reads do, and stops at the answer. s needs only handler, handler_arg and
 * opt.max_request (start is not called); requests and rejected count as for a connection.
 * Returns 1 with the answer's bytes in *out (the caller frees it with cmh_buf_free) and in *used
 * the reads consumed, the last one producing it (later bytes are ignored, as the connection closes
 * after answering); 0 with *out empty when the connection would still wait (its idle timer or the
 * peer's EOF then closes it unanswered); -ENOMEM when the answer could not be built (the
 * connection closes unanswered). */
int cmh_http_server_feed(struct cmh_http_server *s, const uv_buf_t *reads, size_t nreads,
                         size_t *used, struct cmh_buf *out);

#endif
