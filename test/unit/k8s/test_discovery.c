/* Kubernetes discovery against the fake API (test/sim/fake_k8s_api.py: TLS with a CA made at test
 * time, bearer tokens, paginated list, chunked watch with bookmarks and 410s, scripted faults).
 * The oracle is the test's own record of the pods it told the fake about. Every test starts its
 * own fake and ends with uv_loop_close() == 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_peer.h"

#include "cmh/core/container_of.h"
#include "cmh/http/curl_uv.h"
#include "cmh/k8s/discovery.h"
#include "cmh/k8s/discovery_int.h"
#include "cmh/core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct fx {
    struct test_peer fake_api;
    int port;
    char ca[512], token_file[512], dir[256];
    char reply[8192];
    uv_loop_t loop;
    struct cmh_log log;
    struct cmh_curl_uv curl;
    struct cmh_discovery d;
    uv_timer_t tick;
    int changes;
    size_t min_targets_seen; /* smallest set published after the first non-empty one */
    bool seen_nonempty;
    int closed;
};

static int read_line(struct fx *f, char *buf, size_t len, int timeout_s)
{
    return test_peer_read_line(&f->fake_api, buf, len, timeout_s);
}

/* Sends one control command and returns the answer ("OK {...}"). */
static const char *fake(struct fx *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static const char *fake(struct fx *f, const char *fmt, ...)
{
    char cmd[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(cmd, sizeof cmd - 1, fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof cmd - 1);
    cmd[n++] = '\n';
    assert_int_equal(write(f->fake_api.to, cmd, (size_t)n), n);
    assert_int_equal(read_line(f, f->reply, sizeof f->reply, 20), 0);
    if (strncmp(f->reply, "OK", 2) != 0)
        fail_msg("fake refused '%.*s': %s", n - 1, cmd, f->reply);
    return f->reply;
}

/* One counter from the fake's stats answer. */
static long fake_stat(struct fx *f, const char *name)
{
    const char *r = fake(f, "stats");
    char key[64];
    snprintf(key, sizeof key, "\"%s\": ", name);
    const char *p = strstr(r, key);
    assert_non_null(p);
    return strtol(p + strlen(key), NULL, 10);
}

static void on_change(struct cmh_discovery *d, void *arg)
{
    struct fx *f = arg;
    size_t n;
    cmh_discovery_targets(d, &n, NULL);
    f->changes++;
    if (f->seen_nonempty && n < f->min_targets_seen)
        f->min_targets_seen = n;
    if (n > 0 && !f->seen_nonempty) {
        f->seen_nonempty = true;
        f->min_targets_seen = n;
    }
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/cmh-k8s-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    snprintf(f->token_file, sizeof f->token_file, "%s/token", f->dir);
    char script[1024];
    snprintf(script, sizeof script, "%s/test/sim/fake_k8s_api.py", CMH_SOURCE_DIR);
    char *argv[] = {CMH_TEST_PYTHON,       script,       "--token-file",
                    f->token_file,         "--lifetime", "110",
                    "--bookmark-interval", "0.5",        NULL};
    if (test_peer_start(&f->fake_api, argv) != 0)
        return -1;
    char line[1024];
    if (read_line(f, line, sizeof line, 30) != 0 ||
        sscanf(line, "READY port=%d ca=%511s", &f->port, f->ca) != 2) {
        fprintf(stderr, "fake API did not start: '%s'\n", line);
        return -1;
    }
    assert_int_equal(uv_loop_init(&f->loop), 0);
    cmh_log_init(&f->log, CMH_LOG_INFO, CMH_LOG_TEXT, 2);
    assert_int_equal(cmh_curl_uv_init(&f->curl, &f->loop, NULL, &f->log), 0);
    assert_int_equal(uv_timer_init(&f->loop, &f->tick), 0);
    *state = f;
    return 0;
}

static void start(struct fx *f, size_t page_limit)
{
    char server[128];
    struct cmh_discovery_opts o = {0};
    snprintf(server, sizeof server, "https://127.0.0.1:%d", f->port);
    o.server = server;
    o.token_file = f->token_file;
    o.ca_file = f->ca;
    o.watch_timeout_ms = 3000;
    o.backoff_base_ms = 50;
    o.backoff_cap_ms = 400;
    o.page_limit = page_limit;
    o.seed = 42;
    assert_int_equal(cmh_discovery_start(&f->d, &f->loop, &f->curl, &o, &f->log, on_change, f), 0);
}

static void closed_d(struct cmh_discovery *d)
{
    (void)d;
}

static void closed_c(struct cmh_curl_uv *c)
{
    struct fx *f = container_of(c, struct fx, curl);
    f->closed = 1;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    cmh_discovery_close(&f->d, closed_d);
    cmh_curl_uv_close(&f->curl, closed_c);
    uv_close((uv_handle_t *)&f->tick, NULL);
    for (int i = 0; i < 1000 && uv_run(&f->loop, UV_RUN_NOWAIT) != 0; i++)
        usleep(1000);
    assert_int_equal(f->closed, 1);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    test_peer_stop(&f->fake_api);
    unlink(f->token_file);
    char ca[600];
    snprintf(ca, sizeof ca, "%s.ca.crt", f->token_file);
    unlink(ca);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* The published targets as "pod=ip@node" sorted by pod, comma-separated. */
static void targets_text(struct fx *f, char *buf, size_t len)
{
    size_t n, off = 0;
    const struct cmh_discovery_target *t = cmh_discovery_targets(&f->d, &n, NULL);
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        int w = snprintf(buf + off, len - off, "%s%s=%s@%s", i ? "," : "", t[i].pod, t[i].ip,
                         t[i].node);
        assert_true(w > 0 && (size_t)w < len - off);
        off += (size_t)w;
    }
}

/* Runs the loop until the targets read want, for at most ms. */
static void expect_targets(struct fx *f, const char *want, unsigned ms)
{
    char have[4096] = "";
    uint64_t end = uv_now(&f->loop) + ms;
    uv_timer_start(&f->tick, on_tick, 20, 20);
    while (uv_now(&f->loop) < end) {
        targets_text(f, have, sizeof have);
        if (strcmp(have, want) == 0)
            break;
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&f->tick);
    assert_string_equal(have, want);
}

/* Runs the loop for ms whatever happens. */
static void run_for(struct fx *f, unsigned ms)
{
    uint64_t end = uv_now(&f->loop) + ms;
    uv_timer_start(&f->tick, on_tick, 20, 20);
    while (uv_now(&f->loop) < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_timer_stop(&f->tick);
}

static void wait_watching(struct fx *f, unsigned ms)
{
    struct cmh_discovery_status st;
    uint64_t end = uv_now(&f->loop) + ms;
    uv_timer_start(&f->tick, on_tick, 20, 20);
    do {
        uv_run(&f->loop, UV_RUN_ONCE);
        cmh_discovery_status(&f->d, &st);
    } while (!st.watching && uv_now(&f->loop) < end);
    uv_timer_stop(&f->tick);
    assert_true(st.watching);
}

#define A "aws-node-a=10.0.0.1@node-a"
#define B "aws-node-b=10.0.0.2@node-b"
#define C "aws-node-c=10.0.0.3@node-c"

static void seed_three(struct fx *f)
{
    fake(f, "add aws-node-a node-a 10.0.0.1");
    fake(f, "add aws-node-b node-b 10.0.0.2");
    fake(f, "add aws-node-c node-c 10.0.0.3");
    /* Never targets: not Running, no hostIP yet, another label, another namespace. */
    fake(f, "add aws-node-p node-p 10.0.0.4 phase=Pending");
    fake(f, "add aws-node-q node-q");
    fake(f, "add kube-proxy-a node-a 10.0.0.1 labels=k8s-app=kube-proxy");
    fake(f, "add aws-node-z node-z 10.0.0.9 ns=default");
}

/* Pods added, re-IPed, moved between phases and deleted reach the target set; the list is read
 * in pages of 2 and watch events arrive in 7-byte fragments. */
static void discovery_follows_pods_added_deleted_and_reiped(void **state)
{
    struct fx *f = *state;
    seed_three(f);
    start(f, 2);
    expect_targets(f, A "," B "," C, 10000);
    assert_true(fake_stat(f, "lists") >= 3); /* 5 matching pods in pages of 2 */
    wait_watching(f, 5000);
    fake(f, "fragment on");
    fake(f, "add aws-node-d node-d 10.0.0.5");
    expect_targets(f, A "," B "," C ",aws-node-d=10.0.0.5@node-d", 5000);
    fake(f, "set aws-node-b ip=10.0.1.2");
    expect_targets(f, A ",aws-node-b=10.0.1.2@node-b," C ",aws-node-d=10.0.0.5@node-d", 5000);
    fake(f, "del aws-node-a");
    expect_targets(f, "aws-node-b=10.0.1.2@node-b," C ",aws-node-d=10.0.0.5@node-d", 5000);
    fake(f, "fragment off");
    fake(f, "set aws-node-p phase=Running");
    fake(f, "set aws-node-c phase=Failed");
    expect_targets(f,
                   "aws-node-b=10.0.1.2@node-b,aws-node-d=10.0.0.5@node-d,"
                   "aws-node-p=10.0.0.4@node-p",
                   5000);
    fake(f, "set aws-node-q ip=10.0.0.7");
    expect_targets(f,
                   "aws-node-b=10.0.1.2@node-b,aws-node-d=10.0.0.5@node-d,"
                   "aws-node-p=10.0.0.4@node-p,aws-node-q=10.0.0.7@node-q",
                   5000);
    /* A set held across changes stays readable. */
    struct cmh_discovery_set *held = cmh_discovery_acquire(&f->d);
    fake(f, "del aws-node-d");
    expect_targets(f,
                   "aws-node-b=10.0.1.2@node-b,aws-node-p=10.0.0.4@node-p,"
                   "aws-node-q=10.0.0.7@node-q",
                   5000);
    assert_int_equal(held->n, 4);
    assert_string_equal(held->v[1].pod, "aws-node-d");
    cmh_discovery_set_release(held);
    struct cmh_discovery_status st;
    cmh_discovery_status(&f->d, &st);
    assert_true(st.synced);
    assert_false(st.no_pods);
    assert_int_equal(st.targets, 3);
    assert_int_equal(st.pods, 4); /* b, c (Failed), p, q */
    assert_int_equal(st.lists, 1);
    assert_true(st.generation >= 7);
    assert_true(f->changes >= 7);
    assert_true(fake_stat(f, "bookmarks") >= 1);
}

/* An ERROR 410 in the middle of a watch, and a resume from a compacted resourceVersion, both lead
 * to a fresh list; the targets never disappear meanwhile and changes made in between arrive. */
static void discovery_410_mid_watch_relists_without_losing_targets(void **state)
{
    struct fx *f = *state;
    seed_three(f);
    start(f, 0);
    expect_targets(f, A "," B "," C, 10000);
    wait_watching(f, 5000);
    long lists = fake_stat(f, "lists");
    fake(f, "gone");
    fake(f, "set aws-node-a ip=10.0.2.1");
    expect_targets(f, "aws-node-a=10.0.2.1@node-a," B "," C, 5000);
    assert_true(fake_stat(f, "gone_sent") >= 1);
    assert_true(fake_stat(f, "lists") >= lists + 1);
    /* Compaction then a cut: the resumed watch gets a 410 and the next list sees the change. */
    wait_watching(f, 5000);
    fake(f, "compact");
    fake(f, "disconnect");
    fake(f, "del aws-node-c");
    fake(f, "compact");
    expect_targets(f, "aws-node-a=10.0.2.1@node-a," B, 5000);
    struct cmh_discovery_status st;
    cmh_discovery_status(&f->d, &st);
    assert_true(st.relists_gone >= 1);
    assert_true(st.lists >= 2);
    assert_int_equal(f->min_targets_seen, 2); /* never fewer than the pods that exist */
}

/* The token rotates: the old one is refused, discovery re-reads the file and carries on. */
static void discovery_follows_token_rotation(void **state)
{
    struct fx *f = *state;
    seed_three(f);
    start(f, 0);
    expect_targets(f, A "," B "," C, 10000);
    wait_watching(f, 5000);
    fake(f, "token token-1");
    fake(f, "disconnect");
    fake(f, "del aws-node-b");
    expect_targets(f, A "," C, 8000);
    assert_true(fake_stat(f, "unauthorized") >= 1);
    assert_non_null(strstr(fake(f, "stats"), "\"token-1\""));
    struct cmh_discovery_status st;
    cmh_discovery_status(&f->d, &st);
    assert_true(st.token_reads >= 2);
    /* And again, while the watch ends by itself (no cut): the next watch request is refused. */
    fake(f, "token token-2");
    run_for(f, 3500);
    fake(f, "add aws-node-e node-e 10.0.0.6");
    expect_targets(f, A "," C ",aws-node-e=10.0.0.6@node-e", 10000);
    assert_true(fake_stat(f, "unauthorized") >= 2);
}

/* 500s, cuts, a stalled watch and the API down for a while: the last known targets stay
 * published throughout and discovery recovers by itself. */
static void discovery_keeps_targets_through_api_faults(void **state)
{
    struct fx *f = *state;
    seed_three(f);
    start(f, 0);
    expect_targets(f, A "," B "," C, 10000);
    wait_watching(f, 5000);
    uint64_t gen0;
    cmh_discovery_targets(&f->d, &(size_t){0}, &gen0);

    fake(f, "fail 4 500");
    fake(f, "disconnect");
    run_for(f, 1000);
    expect_targets(f, A "," B "," C, 10);
    fake(f, "add aws-node-e node-e 10.0.0.6");
    expect_targets(f, A "," B "," C ",aws-node-e=10.0.0.6@node-e", 8000);
    assert_true(fake_stat(f, "injected") >= 4);

    /* Slow watch: nothing for 7 s; our guard (3 s watch + 2 s grace) restarts it. */
    long watches = fake_stat(f, "watches");
    fake(f, "stall 7");
    fake(f, "set aws-node-e ip=10.0.1.6");
    run_for(f, 2000);
    expect_targets(f, A "," B "," C ",aws-node-e=10.0.0.6@node-e", 10);
    expect_targets(f, A "," B "," C ",aws-node-e=10.0.1.6@node-e", 12000);
    assert_true(fake_stat(f, "watches") >= watches + 1);

    /* Down: every connection is closed at once for 3 s. */
    fake(f, "down 3");
    run_for(f, 1500);
    expect_targets(f, A "," B "," C ",aws-node-e=10.0.1.6@node-e", 10);
    struct cmh_discovery_status st;
    cmh_discovery_status(&f->d, &st);
    assert_true(st.errors >= 3);
    assert_true(st.last_error[0] != '\0');
    assert_true(fake_stat(f, "refused") >= 1);
    fake(f, "del aws-node-e");
    expect_targets(f, A "," B "," C, 10000);
    wait_watching(f, 5000);
    assert_int_equal(f->min_targets_seen, 3);
}

/* No aws-node pod at all (EKS Auto Mode): synced, zero targets, said plainly in the status; the
 * first pod that appears ends that state. */
static void discovery_reports_no_aws_node_pods(void **state)
{
    struct fx *f = *state;
    fake(f, "add kube-proxy-a node-a 10.0.0.1 labels=k8s-app=kube-proxy");
    start(f, 0);
    struct cmh_discovery_status st;
    uv_timer_start(&f->tick, on_tick, 20, 20);
    uint64_t end = uv_now(&f->loop) + 10000;
    do {
        uv_run(&f->loop, UV_RUN_ONCE);
        cmh_discovery_status(&f->d, &st);
    } while (!st.synced && uv_now(&f->loop) < end);
    uv_timer_stop(&f->tick);
    run_for(f, 100);
    cmh_discovery_status(&f->d, &st);
    assert_true(st.synced);
    assert_true(st.no_pods);
    assert_int_equal(st.targets, 0);
    fake(f, "add aws-node-a node-a 10.0.0.1");
    expect_targets(f, A, 5000);
    cmh_discovery_status(&f->d, &st);
    assert_false(st.no_pods);
}

/* The kept pod named name (the store is in no order; the target set is by name). */
static const struct cmh_discovery_pod *pod_named(const struct cmh_discovery_pods *pods,
                                                 const char *name)
{
    assert_int_equal(cmh_discovery_pods_check(pods), 0);
    for (size_t i = 0; i < pods->n; i++)
        if (strcmp(pods->v[i].name, name) == 0)
            return &pods->v[i];
    fail_msg("no pod %s", name);
    return NULL;
}

/* Lines of the log file that contain what. */
static int count_lines(const char *path, const char *what)
{
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    char line[8192];
    int n = 0;
    while (fgets(line, sizeof line, fp) != NULL)
        n += strstr(line, what) != NULL;
    fclose(fp);
    return n;
}

/* Runs the loop until discovery has applied every event the fake recorded. */
static void wait_caught_up(struct fx *f, unsigned ms)
{
    long rv = fake_stat(f, "rv");
    char want[32];
    snprintf(want, sizeof want, "%ld", rv);
    uint64_t end = uv_now(&f->loop) + ms;
    uv_timer_start(&f->tick, on_tick, 20, 20);
    while (strcmp(f->d.rv, want) != 0 && uv_now(&f->loop) < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_timer_stop(&f->tick);
    assert_string_equal(f->d.rv, want);
}

/* A watch that sends MODIFIED events without end: each costs a lookup, not a new target set,
 * and the log says so once in a while, not once an event. 4,000 events flip one pod between
 * Pending and Running (every one changes the targets), then 4,000 change only an annotation
 * (nothing discovery keeps). */
static void discovery_modified_storm_bounded_rebuilds_and_log_lines(void **state)
{
    struct fx *f = *state;
    char path[300];
    snprintf(path, sizeof path, "%s/log", f->dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    cmh_log_init(&f->log, CMH_LOG_INFO, CMH_LOG_TEXT, fd);
    seed_three(f);
    start(f, 0);
    expect_targets(f, A "," B "," C, 10000);
    wait_watching(f, 5000);
    run_for(f, 1200); /* the first publications are behind us */
    struct cmh_discovery_status st;
    cmh_discovery_status(&f->d, &st);
    uint64_t builds0 = st.set_builds;
    int lines0 = count_lines(path, "scrape targets changed");
    uint64_t t0 = uv_now(&f->loop);
    fake(f, "storm aws-node-b 4000");
    wait_caught_up(f, 60000);
    run_for(f, 1100); /* the last publication is due within a second */
    char have[1024];
    targets_text(f, have, sizeof have);
    if (strcmp(have, A "," B "," C) != 0) {
        const struct cmh_discovery_pod *b = pod_named(&f->d.pods, "aws-node-b");
        fail_msg("targets %s; b running=%d ip=%s; version %llu built %llu dirty %d notify %d", have,
                 b->running, b->ip, (unsigned long long)f->d.pods.version,
                 (unsigned long long)f->d.built_version, f->d.dirty,
                 uv_is_active((uv_handle_t *)&f->d.notify));
    }
    double secs = (double)(uv_now(&f->loop) - t0) / 1000.0;
    cmh_discovery_status(&f->d, &st);
    uint64_t builds = st.set_builds - builds0;
    int lines = count_lines(path, "scrape targets changed") - lines0;
    print_message("storm of 4000 over %.1f s: %llu sets built, %d lines logged\n", secs,
                  (unsigned long long)builds, lines);
    /* One set a second at most (plus the one that catches up), one line per 10 s window. */
    assert_true(builds <= (uint64_t)secs + 2);
    assert_true(lines <= (int)(secs / 10) + 2);
    /* Nothing kept changes: no set is built, no line logged (once the last publication is due). */
    run_for(f, 1100);
    cmh_discovery_status(&f->d, &st);
    builds0 = st.set_builds;
    lines0 = count_lines(path, "scrape targets changed");
    fake(f, "storm aws-node-c 4000 same");
    wait_caught_up(f, 60000);
    run_for(f, 1100);
    cmh_discovery_status(&f->d, &st);
    assert_int_equal(st.set_builds, builds0);
    assert_int_equal(count_lines(path, "scrape targets changed"), lines0);
    close(fd);
    cmh_log_init(&f->log, CMH_LOG_INFO, CMH_LOG_TEXT, 2);
}

/* Appends to a growing buffer. */
struct text {
    char *p;
    size_t len, cap;
};

static void text_add(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void text_add(struct text *t, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        assert_true(n >= 0);
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        t->cap = t->cap * 2 + (size_t)n + 1;
        t->p = realloc(t->p, t->cap);
        assert_non_null(t->p);
    }
}

static uint64_t log2_ceil(uint64_t n)
{
    uint64_t b = 0;
    while ((1ull << b) < n)
        b++;
    return b;
}

#define MANY 100000

/* 100,000 pods listed in reverse name order (the worst case of a sorted array: every insertion
 * at the front), then as many ADDED events in reverse order and DELETED events in order: the
 * work, counted in name comparisons, rotations and pods moved, stays within 3 n log2 n. An
 * insertion-sorted array moves n^2/2 = 5e9 pods for the same list. */
static void discovery_100k_reverse_order_pods_within_n_log_n_steps(void **state)
{
    (void)state;
    uint64_t bound = 3ull * MANY * log2_ceil(MANY);
    struct text t = {0};
    text_add(&t, "{\"kind\":\"PodList\",\"metadata\":{\"resourceVersion\":\"9\"},\"items\":[");
    for (int i = MANY - 1; i >= 0; i--)
        text_add(&t,
                 "%s{\"metadata\":{\"name\":\"aws-node-%06d\"},\"spec\":{\"nodeName\":\"n%d\"},"
                 "\"status\":{\"phase\":\"Running\",\"hostIP\":\"10.%d.%d.%d\"}}",
                 i == MANY - 1 ? "" : ",", i, i, i >> 16, (i >> 8) & 255, i & 255);
    text_add(&t, "]}");
    struct cmh_discovery_pods pods = {.max = MANY};
    struct cmh_discovery_list_parser p;
    cmh_discovery_list_begin(&p, &pods, 0);
    for (size_t off = 0; off < t.len; off += 65536)
        assert_int_equal(
            cmh_discovery_list_feed(&p, t.p + off, t.len - off < 65536 ? t.len - off : 65536), 0);
    char rv[64], cont[64];
    assert_int_equal(cmh_discovery_list_end(&p, rv, sizeof rv, cont, sizeof cont), 0);
    assert_int_equal(pods.n, MANY);
    assert_int_equal(cmh_discovery_pods_check(&pods), 0);
    print_message("list of %d in reverse order: %llu steps (bound %llu)\n", MANY,
                  (unsigned long long)pods.steps, (unsigned long long)bound);
    assert_true(pods.steps <= bound);
    struct cmh_discovery_set *set = cmh_discovery_set_build(&pods, 1);
    assert_non_null(set);
    assert_int_equal(set->n, MANY);
    assert_string_equal(set->v[0].pod, "aws-node-000000");
    assert_string_equal(set->v[MANY - 1].pod, "aws-node-099999");
    assert_string_equal(set->v[MANY - 1].ip, "10.1.134.159");
    cmh_discovery_set_release(set);
    cmh_discovery_pods_free(&pods);

    /* The watch path: ADDED in reverse order, then DELETED in order. */
    struct cmh_discovery_pods w = {.max = MANY};
    struct cmh_discovery_event ev;
    char line[512];
    for (int pass = 0; pass < 2; pass++)
        for (int k = 0; k < MANY; k++) {
            int i = pass == 0 ? MANY - 1 - k : k;
            int n =
                snprintf(line, sizeof line,
                         "{\"type\":\"%s\",\"object\":{\"metadata\":{\"name\":\"aws-node-%06d\","
                         "\"resourceVersion\":\"%d\"},\"status\":{\"phase\":\"Running\","
                         "\"hostIP\":\"10.0.0.1\"}}}",
                         pass == 0 ? "ADDED" : "DELETED", i, k);
            assert_int_equal(cmh_discovery_parse_event(&w, line, (size_t)n, &ev), 0);
            assert_true(ev.changed);
            if (k % 20000 == 0)
                assert_int_equal(cmh_discovery_pods_check(&w), 0);
        }
    assert_int_equal(w.n, 0);
    assert_int_equal(w.targets, 0);
    print_message("watch of %d ADDED and %d DELETED: %llu steps (bound %llu)\n", MANY, MANY,
                  (unsigned long long)w.steps, (unsigned long long)(2 * bound));
    assert_true(w.steps <= 2 * bound);
    cmh_discovery_pods_free(&w);
    free(t.p);
}

/* The page parser in chunks cut everywhere reads what it reads whole, and refuses what is no
 * PodList: the same pods for every chunk size from 1 byte, a repeated "items" refused, an item
 * over the bound skipped and counted while the others are kept. */
static void discovery_list_page_streamed_in_any_chunks(void **state)
{
    (void)state;
    const char *page =
        " {\"kind\":\"PodList\",\"items\":[{\"metadata\":{\"name\":\"b\",\"x\":[1,{\"y\":\"]}"
        "\\\"\"}]},"
        "\"spec\":{\"nodeName\":\"nb\"},\"status\":{\"phase\":\"Running\",\"hostIP\":\"10.0.0.2\"}}"
        ","
        "null, 7 ,{\"metadata\":{\"name\":\"a\"},\"status\":{\"phase\":\"Run\\u006eing\","
        "\"hostIP\":\"::1\"}}],\"metadata\":{\"resourceVersion\":\"7\",\"continue\":\"c1\"},"
        "\"apiVersion\":\"v1\"}\n";
    size_t len = strlen(page);
    for (size_t chunk = 1; chunk <= len; chunk++) {
        struct cmh_discovery_pods pods = {0};
        struct cmh_discovery_list_parser p;
        cmh_discovery_list_begin(&p, &pods, 0);
        for (size_t off = 0; off < len; off += chunk)
            assert_int_equal(
                cmh_discovery_list_feed(&p, page + off, len - off < chunk ? len - off : chunk), 0);
        char rv[64], cont[64];
        assert_int_equal(cmh_discovery_list_end(&p, rv, sizeof rv, cont, sizeof cont), 0);
        assert_string_equal(rv, "7");
        assert_string_equal(cont, "c1");
        assert_int_equal(pods.n, 2);
        assert_int_equal(pods.targets, 2);
        assert_string_equal(pod_named(&pods, "b")->node, "nb");
        assert_true(pod_named(&pods, "a")->running);
        cmh_discovery_pods_free(&pods);
    }
    const char *bad[] = {
        "{\"metadata\":{},\"items\":[],\"items\":[]}", /* which items? */
        "{\"metadata\":{},\"items\":[]} x",            /* trailing garbage */
        "{\"metadata\":{},\"items\":[{]}",             /* a broken item */
        "{\"metadata\":{},\"items\":[{},]}",           /* trailing comma */
        "{\"metadata\":{},\"items\":{}}",              /* items not an array */
        "{\"metadata\":{},\"items\":nul}",             /* nor null */
        "{\"metadata\":{},\"items\":[\"\\ud800\"]}",   /* a lone surrogate (jansson refuses) */
        "{\"metadata\":[],\"items\":[]}",              /* metadata not an object */
        "{\"metadata\":{},\"items\":[]",               /* truncated */
        "{\"items\":[]}",                              /* no metadata */
        "{\"metadata\":{},\"items\":[],\"kind\":01}",  /* a bad number elsewhere */
        "[]",
        "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct cmh_discovery_pods pods = {0};
        char rv[64], cont[64];
        assert_int_equal(cmh_discovery_parse_list(&pods, bad[i], strlen(bad[i]), rv, sizeof rv,
                                                  cont, sizeof cont),
                         -EBADMSG);
        cmh_discovery_pods_free(&pods);
    }
    /* An item over the bound: skipped and counted, the others kept. */
    const char *big =
        "{\"metadata\":{},\"items\":[{\"metadata\":{\"name\":\"big\"},\"pad\":\""
        "0123456789012345678901234567890123456789\"},{\"metadata\":{\"name\":\"s\"}}]}";
    struct cmh_discovery_pods pods = {0};
    struct cmh_discovery_list_parser p;
    cmh_discovery_list_begin(&p, &pods, 48);
    assert_int_equal(cmh_discovery_list_feed(&p, big, strlen(big)), 0);
    char rv[64], cont[64];
    assert_int_equal(cmh_discovery_list_end(&p, rv, sizeof rv, cont, sizeof cont), 0);
    assert_int_equal(p.items_too_large, 1);
    assert_int_equal(pods.n, 1);
    pod_named(&pods, "s");
    /* An item of more values than the bound (small bytes, a large tree): skipped too; a watch
     * event of as many values is refused and changes nothing. */
    struct text many = {0};
    text_add(&many, "{\"metadata\":{},\"items\":[{\"metadata\":{\"name\":\"m\"},\"x\":[");
    for (int i = 0; i < CMH_DISCOVERY_ITEM_VALUES; i++)
        text_add(&many, "%s{}", i ? "," : "");
    text_add(&many, "]},{\"metadata\":{\"name\":\"t\"}}]}");
    cmh_discovery_list_begin(&p, &pods, 0);
    assert_int_equal(cmh_discovery_list_feed(&p, many.p, many.len), 0);
    assert_int_equal(cmh_discovery_list_end(&p, rv, sizeof rv, cont, sizeof cont), 0);
    assert_int_equal(p.items_too_large, 1);
    assert_int_equal(pods.n, 2);
    pod_named(&pods, "t");
    many.len = 0;
    text_add(&many, "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"m\"},\"x\":[");
    for (int i = 0; i < CMH_DISCOVERY_ITEM_VALUES; i++)
        text_add(&many, "%s0", i ? "," : "");
    text_add(&many, "]}}");
    struct cmh_discovery_event ev;
    assert_int_equal(cmh_discovery_parse_event(&pods, many.p, many.len, &ev), -E2BIG);
    assert_int_equal(pods.n, 2);
    free(many.p);
    cmh_discovery_pods_free(&pods);
}

/* Settings: URL from the service variables, namespace and selector checks. */
static void discovery_options_checked(void **state)
{
    (void)state;
    char url[64], err[256];
    assert_int_equal(cmh_k8s_api_server_url(url, sizeof url, "10.100.0.1", "443"), 0);
    assert_string_equal(url, "https://10.100.0.1:443");
    assert_int_equal(cmh_k8s_api_server_url(url, sizeof url, "fd00::1", "6443"), 0);
    assert_string_equal(url, "https://[fd00::1]:6443");
    assert_int_equal(cmh_k8s_api_server_url(url, sizeof url, "", "443"), -EINVAL);
    assert_int_equal(cmh_k8s_api_server_url(url, sizeof url, "h", "0"), -EINVAL);
    assert_int_equal(cmh_k8s_api_server_url(url, sizeof url, "h", "65536"), -EINVAL);
    assert_int_equal(cmh_k8s_api_server_url(url, sizeof url, "h", "44x"), -EINVAL);
    assert_int_equal(cmh_k8s_api_server_url(url, sizeof url, "a/b", "443"), -EINVAL);
    assert_int_equal(cmh_k8s_api_server_url(url, 10, "10.100.0.1", "443"), -ENOSPC);
    struct cmh_discovery_opts o = {.server = "https://127.0.0.1:1"};
    assert_int_equal(cmh_discovery_check_opts(&o, err, sizeof err), 0);
    o.label_selector = "k8s-app=aws-node,tier!=x";
    assert_int_equal(cmh_discovery_check_opts(&o, err, sizeof err), 0);
    o.label_selector = "k8s-app";
    assert_int_equal(cmh_discovery_check_opts(&o, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "K8S_LABEL_SELECTOR=k8s-app"));
    o.label_selector = "a=b,";
    assert_int_equal(cmh_discovery_check_opts(&o, err, sizeof err), -EINVAL);
    o.label_selector = NULL;
    o.namespace_name = "Kube_System";
    assert_int_equal(cmh_discovery_check_opts(&o, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "K8S_NAMESPACE"));
    o.namespace_name = NULL;
    o.server = NULL;
    assert_int_equal(cmh_discovery_check_opts(&o, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "KUBERNETES_SERVICE_HOST"));
}

/* The pod store keeps at most max pods; each pod beyond is counted once (at the list or its
 * ADDED) and uncounted when it leaves or takes a freed place; a kept pod leaving while some are
 * beyond asks for a list. */
static void put_event(struct cmh_discovery_pods *pods, const char *type, const char *name,
                      struct cmh_discovery_event *ev)
{
    char line[256];
    snprintf(line, sizeof line,
             "{\"type\":\"%s\",\"object\":{\"metadata\":{\"name\":\"%s\",\"resourceVersion\":"
             "\"5\"},\"status\":{\"phase\":\"Running\",\"hostIP\":\"10.0.1.1\"}}}",
             type, name);
    assert_int_equal(cmh_discovery_parse_event(pods, line, strlen(line), ev), 0);
}

static void discovery_pods_bounded_by_max(void **state)
{
    (void)state;
    struct cmh_discovery_pods pods = {.max = 2};
    char rv[64], cont[64];
    struct cmh_discovery_event ev;
    const char *list = "{\"metadata\":{\"resourceVersion\":\"1\"},\"items\":["
                       "{\"metadata\":{\"name\":\"c\"},\"status\":{\"phase\":\"Running\","
                       "\"hostIP\":\"10.0.0.3\"}},"
                       "{\"metadata\":{\"name\":\"a\"},\"status\":{\"phase\":\"Running\","
                       "\"hostIP\":\"10.0.0.1\"}},"
                       "{\"metadata\":{\"name\":\"b\"},\"status\":{\"phase\":\"Running\","
                       "\"hostIP\":\"10.0.0.2\"}}]}";
    assert_int_equal(
        cmh_discovery_parse_list(&pods, list, strlen(list), rv, sizeof rv, cont, sizeof cont), 0);
    assert_int_equal(pods.n, 2);
    assert_int_equal(pods.refused, 1);
    pod_named(&pods, "a");
    pod_named(&pods, "c");
    put_event(&pods, "MODIFIED", "c", &ev); /* a kept pod changes */
    assert_true(ev.changed);
    assert_string_equal(pod_named(&pods, "c")->ip, "10.0.1.1");
    put_event(&pods, "MODIFIED", "b", &ev); /* the one beyond: not counted again */
    assert_false(ev.changed);
    assert_int_equal(pods.refused, 1);
    put_event(&pods, "ADDED", "d", &ev); /* a new one beyond */
    assert_false(ev.changed);
    assert_int_equal(pods.n, 2);
    assert_int_equal(pods.refused, 2);
    put_event(&pods, "DELETED", "a", &ev); /* a place frees: list again */
    assert_true(ev.changed);
    assert_true(ev.relist);
    assert_int_equal(pods.n, 1);
    put_event(&pods, "MODIFIED", "d", &ev); /* one beyond takes it before the list */
    assert_true(ev.changed);
    assert_false(ev.relist);
    assert_int_equal(pods.n, 2);
    assert_int_equal(pods.refused, 1);
    put_event(&pods, "DELETED", "b", &ev); /* the last one beyond leaves */
    assert_false(ev.changed);
    assert_false(ev.relist);
    assert_int_equal(pods.refused, 0);
    put_event(&pods, "DELETED", "c", &ev); /* none beyond: no list needed */
    assert_true(ev.changed);
    assert_false(ev.relist);
    cmh_discovery_pods_free(&pods);
    assert_int_equal(pods.refused, 0);
    assert_int_equal(pods.max, 2);
}

/* The pure parsers on hand-written lines: odd items are skipped, bad lines rejected. */
static void discovery_parsers_on_hand_written_json(void **state)
{
    (void)state;
    struct cmh_discovery_pods pods = {0};
    char rv[64], cont[64];
    const char *list =
        "{\"kind\":\"PodList\",\"metadata\":{\"resourceVersion\":\"7\",\"continue\":\"c1\"},"
        "\"items\":[{\"metadata\":{\"name\":\"b\"},\"spec\":{\"nodeName\":\"nb\"},"
        "\"status\":{\"phase\":\"Running\",\"hostIP\":\"10.0.0.2\"}},{\"metadata\":{}},7,"
        "{\"metadata\":{\"name\":\"a\"},\"status\":{\"phase\":\"Running\",\"hostIP\":\"::1\"}}]}";
    assert_int_equal(
        cmh_discovery_parse_list(&pods, list, strlen(list), rv, sizeof rv, cont, sizeof cont), 0);
    assert_string_equal(rv, "7");
    assert_string_equal(cont, "c1");
    assert_int_equal(pods.n, 2);
    assert_string_equal(pod_named(&pods, "a")->node, "");
    assert_int_equal(cmh_discovery_parse_list(&pods, "[]", 2, rv, sizeof rv, cont, sizeof cont),
                     -EBADMSG);
    const char *longrv = "{\"metadata\":{\"resourceVersion\":\"123456789\"},\"items\":[]}";
    assert_int_equal(
        cmh_discovery_parse_list(&pods, longrv, strlen(longrv), rv, 8, cont, sizeof cont), -E2BIG);
    struct cmh_discovery_event ev;
    const char *del = "{\"type\":\"DELETED\",\"object\":{\"metadata\":{\"name\":\"b\","
                      "\"resourceVersion\":\"9\"}}}";
    assert_int_equal(cmh_discovery_parse_event(&pods, del, strlen(del), &ev), 0);
    assert_int_equal(ev.type, CMH_K8S_EV_DELETED);
    assert_true(ev.changed);
    assert_string_equal(ev.rv, "9");
    assert_int_equal(pods.n, 1);
    assert_int_equal(cmh_discovery_parse_event(&pods, del, strlen(del), &ev), 0);
    assert_false(ev.changed);
    const char *err = "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"code\":410}}";
    assert_int_equal(cmh_discovery_parse_event(&pods, err, strlen(err), &ev), 0);
    assert_int_equal(ev.type, CMH_K8S_EV_ERROR);
    assert_int_equal(ev.code, 410);
    const char *bad[] = {"", "{", "{\"type\":\"ADDED\"}", "{\"type\":\"NOPE\",\"object\":{}}",
                         "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"\"}}}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(cmh_discovery_parse_event(&pods, bad[i], strlen(bad[i]), &ev), -EBADMSG);
    struct cmh_discovery_set *set = cmh_discovery_set_build(&pods, 3);
    assert_non_null(set);
    assert_int_equal(set->n, 1);
    assert_string_equal(set->v[0].ip, "::1");
    cmh_discovery_set_release(set);
    cmh_discovery_pods_free(&pods);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(discovery_options_checked),
        cmocka_unit_test(discovery_parsers_on_hand_written_json),
        cmocka_unit_test(discovery_pods_bounded_by_max),
        cmocka_unit_test(discovery_list_page_streamed_in_any_chunks),
        cmocka_unit_test(discovery_100k_reverse_order_pods_within_n_log_n_steps),
        cmocka_unit_test_setup_teardown(discovery_follows_pods_added_deleted_and_reiped, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(discovery_410_mid_watch_relists_without_losing_targets,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(discovery_follows_token_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(discovery_keeps_targets_through_api_faults, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(discovery_reports_no_aws_node_pods, setup, teardown),
        cmocka_unit_test_setup_teardown(discovery_modified_storm_bounded_rebuilds_and_log_lines,
                                        setup, teardown),
    };
    /* CMH_TEST_FILTER=pattern runs only the tests whose names match (cmocka's wildcards). */
    if (getenv("CMH_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("CMH_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
