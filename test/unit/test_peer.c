#include "test_peer.h"

#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int test_peer_start(struct test_peer *p, char *const argv[])
{
    int in[2], out[2];
    memset(p, 0, sizeof *p);
    p->pid = -1;
    if (pipe(in) != 0)
        return -1;
    if (pipe(out) != 0) {
        close(in[0]);
        close(in[1]);
        return -1;
    }
    p->pid = fork();
    if (p->pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(out[1]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    if (p->pid < 0) {
        close(in[1]);
        close(out[0]);
        return -1;
    }
    p->to = in[1];
    p->from = out[0];
    return 0;
}

int test_peer_read_line(struct test_peer *p, char *out, size_t len, int timeout_s)
{
    time_t deadline = time(NULL) + timeout_s;
    for (;;) {
        char *nl = memchr(p->buf, '\n', p->len);
        if (nl != NULL) {
            size_t n = (size_t)(nl - p->buf);
            if (n >= len)
                return -1;
            memcpy(out, p->buf, n);
            out[n] = '\0';
            memmove(p->buf, nl + 1, p->len - n - 1);
            p->len -= n + 1;
            return 0;
        }
        if (time(NULL) > deadline || p->len == sizeof p->buf)
            return -1;
        struct pollfd pfd = {.fd = p->from, .events = POLLIN};
        if (poll(&pfd, 1, 1000) <= 0)
            continue;
        ssize_t r = read(p->from, p->buf + p->len, sizeof p->buf - p->len);
        if (r <= 0)
            return -1;
        p->len += (size_t)r;
    }
}

int test_peer_write_line(struct test_peer *p, const char *line)
{
    size_t n = strlen(line);
    return write(p->to, line, n) == (ssize_t)n && write(p->to, "\n", 1) == 1 ? 0 : -1;
}

void test_peer_stop(struct test_peer *p)
{
    if (p->pid <= 0)
        return;
    close(p->to);
    close(p->from);
    int status;
    for (int i = 0; i < 50; i++) {
        if (waitpid(p->pid, &status, WNOHANG) == p->pid) {
            p->pid = -1;
            return;
        }
        usleep(100000);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &status, 0);
    p->pid = -1;
}
