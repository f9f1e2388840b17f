/* Control calls (reset, faults, recorded datums, stats) to a loopback Python stand-in, made
 * through curl_uv on the test's own loop. Owned by the calling test; thread: the loop thread. */
#ifndef CMH_TEST_STANDIN_CTL_H
#define CMH_TEST_STANDIN_CTL_H

#include <stddef.h>

#include <jansson.h>
#include <uv.h>

struct cmh_curl_uv;

/* Sends method path (with the JSON body json, or none when NULL) to http://127.0.0.1:port and
 * runs loop until the answer, at most 30 s; the answer may be up to max_body bytes. Fails the
 * test unless the stand-in answers 200 with JSON; returns that JSON (the caller decrefs it). */
json_t *test_standin_call(uv_loop_t *loop, struct cmh_curl_uv *curl, int port, const char *method,
                          const char *path, const char *json, size_t max_body);

#endif
