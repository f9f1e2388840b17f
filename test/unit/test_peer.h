/* A test peer process (a Python stand-in under test/sim/): its stdin and stdout are ours; it exits
 * when its stdin closes. Shared by the unit tests that talk to loopback peers. */
#ifndef CMH_TEST_PEER_H
#define CMH_TEST_PEER_H

#include <stddef.h>
#include <sys/types.h>

struct test_peer {
    pid_t pid;
    int to;            /* the peer's standard input */
    int from;          /* the peer's standard output */
    char buf[1 << 20]; /* lines up to 1 MiB (large JSON answers) */
    size_t len;
};

/* Starts argv[0] with argv (NULL-terminated). Returns 0, or -1 with nothing left running. */
int test_peer_start(struct test_peer *p, char *const argv[]);

/* Copies the next line of the peer's standard output (without its '\n') into out, waiting at
 * most timeout_s seconds. Returns 0, or -1 (timeout, end of output, or a line longer than len). */
int test_peer_read_line(struct test_peer *p, char *out, size_t len, int timeout_s);

/* Writes one line (the '\n' is added) to the peer's standard input. Returns 0 or -1. */
int test_peer_write_line(struct test_peer *p, const char *line);

/* Closes the peer's standard input and waits for it at most 5 s, then kills it. */
void test_peer_stop(struct test_peer *p);

#endif
