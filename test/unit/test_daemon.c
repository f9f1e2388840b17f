/* The daemon skeleton: rounds on the timer, graceful stop, the shutdown deadline, second signal. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/core/container_of.h"
#include "cmh/daemon.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum scenario { PLAIN_STOP, WAIT_FOR_WORK, DEADLINE };

struct fixture {
    struct cmh_daemon d;
    enum scenario scenario;
    uv_timer_t helper; /* ends the held work, in WAIT_FOR_WORK */
    uv_timer_t guard;  /* fails the test if the loop is still running after 5 s */
    int rounds;
    int stopping_seen_while_held;
    int64_t round_start_ms;
};

static void on_close_test_handle(uv_handle_t *h)
{
    (void)h;
}

static void on_guard(uv_timer_t *t)
{
    fail_msg("daemon did not stop within 5 s");
}

static void on_helper(uv_timer_t *t)
{
    struct fixture *f = container_of(t, struct fixture, helper);
    /* The stop is pending: the loop is still here because our work is in flight. */
    f->stopping_seen_while_held = f->d.stopping;
    cmh_daemon_work_end(&f->d);
    uv_close((uv_handle_t *)t, on_close_test_handle);
}

static void on_round(struct cmh_daemon *d, uint64_t round, int64_t start_ms)
{
    struct fixture *f = container_of(d, struct fixture, d);
    f->rounds++;
    f->round_start_ms = start_ms;
    if (f->scenario != PLAIN_STOP)
        cmh_daemon_work_begin(d);
    if (f->scenario == WAIT_FOR_WORK)
        uv_timer_start(&f->helper, on_helper, 100, 0);
    uv_kill(getpid(), SIGTERM);
}

static int run_scenario(struct fixture *f, enum scenario s, const char *shutdown_timeout)
{
    char timeout_env[64];
    snprintf(timeout_env, sizeof timeout_env, "SHUTDOWN_TIMEOUT=%s", shutdown_timeout);
    char *env[] = {"SCRAPE_TARGETS=127.0.0.1:1", "METRIC_UPDATE_INTERVAL=1", timeout_env,
                   "AWS_VPC_K8S_CNI_LOGLEVEL=error", NULL};
    struct cmh_config cfg;
    char err[CMH_CONFIG_ERR_MAX];
    assert_int_equal(cmh_config_load(&cfg, env, err), 0);
    memset(f, 0, sizeof *f);
    f->scenario = s;
    assert_int_equal(cmh_daemon_init(&f->d, &cfg, STDERR_FILENO), 0);
    f->d.on_round = on_round;
    assert_int_equal(uv_timer_init(&f->d.loop, &f->helper), 0);
    assert_int_equal(uv_timer_init(&f->d.loop, &f->guard), 0);
    assert_int_equal(uv_timer_start(&f->guard, on_guard, 5000, 0), 0);
    uv_unref((uv_handle_t *)&f->guard); /* the guard alone does not keep the loop alive */
    if (s != WAIT_FOR_WORK)
        uv_close((uv_handle_t *)&f->helper, on_close_test_handle);
    int status = cmh_daemon_run(&f->d);
    uv_close((uv_handle_t *)&f->guard, on_close_test_handle);
    assert_int_equal(cmh_daemon_close(&f->d), 0); /* uv_loop_close: nothing left open */
    return status;
}

static void first_round_runs_at_once_and_sigterm_stops_with_status_0(void **state)
{
    struct fixture f;
    int64_t before = (int64_t)time(NULL) * 1000;
    assert_int_equal(run_scenario(&f, PLAIN_STOP, "10"), 0);
    assert_int_equal(f.rounds, 1);
    assert_true(f.round_start_ms >= before - 1000);
    assert_int_equal(f.d.round, 1);
}

static void graceful_stop_waits_for_in_flight_work(void **state)
{
    struct fixture f;
    assert_int_equal(run_scenario(&f, WAIT_FOR_WORK, "10"), 0);
    assert_int_equal(f.rounds, 1);
    assert_true(f.stopping_seen_while_held);
    assert_int_equal(f.d.inflight, 0);
}

static void shutdown_deadline_abandons_work_and_exits_1(void **state)
{
    struct fixture f;
    uint64_t t0 = uv_hrtime();
    assert_int_equal(run_scenario(&f, DEADLINE, "200ms"), 1);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_true(ms >= 190);
    assert_true(ms < 4000);
}

static void loop_closes_with_no_handle_left(void **state)
{
    /* Each scenario above ends in cmh_daemon_close, which runs uv_loop_close; check it directly. */
    struct cmh_config cfg;
    char err[CMH_CONFIG_ERR_MAX];
    char *env[] = {"SCRAPE_TARGETS=127.0.0.1:1", NULL};
    assert_int_equal(cmh_config_load(&cfg, env, err), 0);
    struct cmh_daemon d;
    assert_int_equal(cmh_daemon_init(&d, &cfg, STDERR_FILENO), 0);
    cmh_daemon_stop(&d);
    assert_int_equal(uv_run(&d.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(d.open_handles, 0);
    assert_int_equal(uv_loop_close(&d.loop), 0);
    cmh_config_free(&d.cfg);
}

/* In a child: a daemon whose work never ends; the parent signals twice. */
static void second_signal_exits_at_once_with_128_plus_signal(void **state)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        char *env[] = {"SCRAPE_TARGETS=127.0.0.1:1", "SHUTDOWN_TIMEOUT=60", NULL};
        struct cmh_config cfg;
        char err[CMH_CONFIG_ERR_MAX];
        if (cmh_config_load(&cfg, env, err) != 0)
            _exit(90);
        struct cmh_daemon d;
        if (cmh_daemon_init(&d, &cfg, fds[1]) != 0)
            _exit(91);
        cmh_daemon_work_begin(&d);
        alarm(20); /* bounded even if the parent dies */
        _exit(cmh_daemon_run(&d));
    }
    close(fds[1]);
    char buf[8192];
    size_t off = 0;
    int sent = 0;
    /* Bounded: at most 200 reads of the child's log. */
    for (int i = 0; i < 200 && off < sizeof buf - 1; i++) {
        ssize_t n = read(fds[0], buf + off, sizeof buf - 1 - off);
        if (n <= 0)
            break;
        off += (size_t)n;
        buf[off] = '\0';
        if (sent == 0 && strstr(buf, "msg=started")) {
            kill(pid, SIGTERM);
            sent = 1;
        } else if (sent == 1 && strstr(buf, "msg=stopping")) {
            kill(pid, SIGTERM);
            sent = 2;
        }
    }
    close(fds[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_int_equal(sent, 2);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 128 + SIGTERM);
    assert_non_null(strstr(buf, "second signal; exiting now"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(first_round_runs_at_once_and_sigterm_stops_with_status_0),
        cmocka_unit_test(graceful_stop_waits_for_in_flight_work),
        cmocka_unit_test(shutdown_deadline_abandons_work_and_exits_1),
        cmocka_unit_test(loop_closes_with_no_handle_left),
        cmocka_unit_test(second_signal_exits_at_once_with_128_plus_signal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
