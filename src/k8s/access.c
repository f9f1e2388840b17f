#include "cmh/k8s/access.h"

#include <errno.h>
#include <fcntl.h>
#include <mbedtls/base64.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cmh/core/alloc.h"
#include "cmh/http/url.h"
#include "cmh/k8s/kubeconfig.h"

extern char **environ;

/* Most bytes read from an exec plugin. */
#define EXEC_OUT_MAX (256u * 1024)

int cmh_k8s_access_check_url(const char *url, char *why, size_t whylen)
{
    char *host = NULL, *path = NULL;
    int http = 0;
    int rc = cmh_url_split(url, &host, &path, &http);
    cmh_free(host);
    cmh_free(path);
    if (rc == -EPROTONOSUPPORT)
        snprintf(why, whylen,
                 "%.200s: plain http only to a loopback address (kubectl proxy); use https", url);
    else if (rc != 0)
        snprintf(why, whylen, "%.200s: not an http(s)://host[:port][/path] URL", url);
    return rc == -ENOMEM ? rc : rc != 0 ? -EINVAL : 0;
}

/* path as given when absolute, else relative to dir (as kubectl resolves kubeconfig paths). */
static char *resolve(const char *dir, const char *path)
{
    if (path[0] == '/')
        return cmh_strdup(path);
    size_t n = strlen(dir) + strlen(path) + 2;
    char *s = cmh_malloc(n);
    if (s != NULL)
        snprintf(s, n, "%s/%s", dir, path);
    return s;
}

/* Writes data to a new private file dir/name; *path gets its name. */
static int write_private(const char *dir, const char *name, const void *data, size_t len,
                         char **path)
{
    *path = resolve(dir, name);
    if (*path == NULL)
        return -ENOMEM;
    int fd = open(*path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    const char *p = data;
    int rc = 0;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            rc = -EIO;
            break;
        }
        p += w;
        len -= (size_t)w;
    }
    if (close(fd) != 0 && rc == 0)
        rc = -EIO;
    return rc;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Runs the exec plugin as kubectl does: argv as written (no shell), the environment plus the
 * entry's env and KUBERNETES_EXEC_INFO, standard input closed, standard error passed through;
 * reads at most EXEC_OUT_MAX bytes for at most timeout_ms. */
static int run_exec(const struct cmh_kubeconfig *kc, const char *dir, unsigned timeout_ms,
                    char **token, char *why, size_t whylen)
{
    static const char info[] = "KUBERNETES_EXEC_INFO={\"apiVersion\":\"client.authentication.k8s."
                               "io/v1beta1\",\"kind\":\"ExecCredential\",\"spec\":{\"interactive\""
                               ":false}}";
    size_t nenv = 0;
    while (environ[nenv] != NULL)
        nenv++;
    char **env = cmh_calloc(nenv + kc->exec_nenv + 2, sizeof *env);
    char *argv[CMH_KUBECONFIG_EXEC_MAX + 2];
    char *cmd = strchr(kc->exec_command, '/') ? resolve(dir, kc->exec_command)
                                              : cmh_strdup(kc->exec_command);
    char *out = cmh_malloc(EXEC_OUT_MAX + 1);
    int pipefd[2] = {-1, -1}, rc = 0;
    pid_t pid = -1;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (env == NULL || cmd == NULL || out == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    size_t k = 0;
    for (size_t i = 0; i < nenv; i++) {
        /* An entry's own value wins over the inherited one. */
        int shadowed = strncmp(environ[i], "KUBERNETES_EXEC_INFO=", 21) == 0;
        for (size_t j = 0; j < kc->exec_nenv && !shadowed; j++) {
            size_t n = (size_t)(strchr(kc->exec_env[j], '=') - kc->exec_env[j]) + 1;
            shadowed = strncmp(environ[i], kc->exec_env[j], n) == 0;
        }
        if (!shadowed)
            env[k++] = environ[i];
    }
    for (size_t j = 0; j < kc->exec_nenv; j++)
        env[k++] = kc->exec_env[j];
    env[k++] = (char *)info;
    argv[0] = cmd;
    for (size_t i = 0; i < kc->exec_nargs; i++)
        argv[i + 1] = kc->exec_args[i];
    argv[kc->exec_nargs + 1] = NULL;
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        rc = -errno;
        goto out;
    }
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
    int err = posix_spawnp(&pid, cmd, &fa, NULL, argv, env);
    close(pipefd[1]);
    pipefd[1] = -1;
    if (err != 0) {
        snprintf(why, whylen, "cannot run the exec plugin %.120s: %s", cmd, strerror(err));
        rc = -EINVAL;
        goto out;
    }
    size_t len = 0;
    uint64_t end = now_ms() + timeout_ms;
    for (;;) {
        uint64_t now = now_ms();
        if (now >= end) {
            snprintf(why, whylen, "the exec plugin %.120s gave no answer within %u s", cmd,
                     timeout_ms / 1000);
            rc = -ETIMEDOUT;
            break;
        }
        struct pollfd p = {.fd = pipefd[0], .events = POLLIN};
        int n = poll(&p, 1, (int)(end - now));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            continue;
        ssize_t r = read(pipefd[0], out + len, EXEC_OUT_MAX + 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
        if (len > EXEC_OUT_MAX) {
            snprintf(why, whylen, "the exec plugin %.120s wrote more than %u bytes", cmd,
                     EXEC_OUT_MAX);
            rc = -EFBIG;
            break;
        }
    }
    if (rc != 0)
        kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (rc == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
        snprintf(why, whylen, "the exec plugin %.120s failed (exit status %d)", cmd,
                 WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
        rc = -EINVAL;
    }
    if (rc == 0)
        rc = cmh_kubeconfig_exec_token(out, len, token, why, whylen);
out:
    posix_spawn_file_actions_destroy(&fa);
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    if (out != NULL)
        cmh_free_secret(out);
    cmh_free(cmd);
    cmh_free(env);
    return rc;
}

/* The first existing file of KUBECONFIG (colon-separated), else home/.kube/config. */
static char *pick_file(const char *kubeconfig_env, const char *home)
{
    if (kubeconfig_env != NULL && kubeconfig_env[0] != '\0') {
        const char *s = kubeconfig_env;
        while (*s) {
            size_t n = strcspn(s, ":");
            char *f = cmh_strndup(s, n);
            if (f == NULL || (n > 0 && access(f, F_OK) == 0))
                return f;
            cmh_free(f);
            s += n + (s[n] == ':');
        }
        return NULL;
    }
    if (home == NULL || home[0] == '\0')
        return NULL;
    char *f = resolve(home, ".kube/config");
    if (f != NULL && access(f, F_OK) != 0) {
        cmh_free(f);
        f = NULL;
    }
    return f;
}

/* Fills a from the parsed kubeconfig kc (dir: the file's directory). */
static int take(struct cmh_k8s_access *a, struct cmh_kubeconfig *kc, const char *dir,
                unsigned exec_timeout_ms, char *why, size_t whylen)
{
    int rc = cmh_k8s_access_check_url(kc->server, why, whylen);
    if (rc != 0)
        return rc;
    a->server = cmh_strdup(kc->server);
    if (a->server == NULL)
        return -ENOMEM;
    size_t sl = strlen(a->server);
    while (sl > 0 && a->server[sl - 1] == '/')
        a->server[--sl] = '\0';
    const char *tmpdir = getenv("TMPDIR");
    size_t tn = (tmpdir && tmpdir[0] ? strlen(tmpdir) : 4) + sizeof "/cmh-report-XXXXXX";
    a->dir = cmh_malloc(tn);
    if (a->dir == NULL)
        return -ENOMEM;
    snprintf(a->dir, tn, "%s/cmh-report-XXXXXX", tmpdir && tmpdir[0] ? tmpdir : "/tmp");
    if (mkdtemp(a->dir) == NULL) {
        rc = -errno;
        snprintf(why, whylen, "cannot make a private temporary directory: %s", strerror(errno));
        cmh_free(a->dir);
        a->dir = NULL;
        return rc;
    }
    if (kc->ca_data != NULL) {
        size_t n = strlen(kc->ca_data), olen = 0;
        unsigned char *pem = cmh_malloc(n + 1);
        if (pem == NULL)
            return -ENOMEM;
        if (mbedtls_base64_decode(pem, n, &olen, (const unsigned char *)kc->ca_data, n) != 0) {
            cmh_free(pem);
            snprintf(why, whylen, "certificate-authority-data is not base64");
            return -EINVAL;
        }
        rc = write_private(a->dir, "ca.crt", pem, olen, &a->ca_file);
        cmh_free(pem);
    } else if (kc->ca_file != NULL) {
        a->ca_file = resolve(dir, kc->ca_file);
        rc = a->ca_file == NULL ? -ENOMEM : 0;
    }
    if (rc != 0)
        return rc;
    char *tok = NULL;
    if (kc->token != NULL) {
        tok = kc->token;
        kc->token = NULL;
    } else if (kc->token_file != NULL) {
        a->token_file = resolve(dir, kc->token_file);
        return a->token_file == NULL ? -ENOMEM : 0;
    } else if (kc->exec_command != NULL) {
        rc = run_exec(kc, dir, exec_timeout_ms, &tok, why, whylen);
        if (rc != 0)
            return rc;
    } else {
        return 0; /* no credentials in the kubeconfig: none sent */
    }
    if (tok == NULL)
        return -EINVAL; /* not reached: a plugin's success carries a token */
    rc = write_private(a->dir, "token", tok, strlen(tok), &a->token_file);
    cmh_free_secret(tok);
    return rc;
}

int cmh_k8s_access_kubeconfig(struct cmh_k8s_access *a, const char *kubeconfig_env,
                              const char *home, unsigned exec_timeout_ms, char *why, size_t whylen)
{
    memset(a, 0, sizeof *a);
    struct cmh_kubeconfig kc;
    memset(&kc, 0, sizeof kc);
    char *buf = NULL, *dir = NULL;
    size_t len = 0;
    int rc = 0;
    a->kubeconfig = pick_file(kubeconfig_env, home);
    if (a->kubeconfig == NULL) {
        snprintf(why, whylen, "no kubeconfig (KUBECONFIG, ~/.kube/config)");
        return -ENOENT;
    }
    rc = cmh_read_small_file(a->kubeconfig, CMH_KUBECONFIG_MAX, &buf, &len);
    if (rc != 0) {
        snprintf(why, whylen, "cannot read the kubeconfig %.200s: %s", a->kubeconfig,
                 strerror(-rc));
        rc = rc == -ENOMEM ? rc : -EINVAL;
        goto out;
    }
    char sub[400];
    rc = cmh_kubeconfig_parse(buf, len, NULL, &kc, sub, sizeof sub);
    if (rc == -EINVAL)
        snprintf(why, whylen, "kubeconfig %.200s: %s", a->kubeconfig, sub);
    if (rc != 0)
        goto out;
    const char *slash = strrchr(a->kubeconfig, '/');
    dir = slash ? cmh_strndup(a->kubeconfig, (size_t)(slash - a->kubeconfig)) : cmh_strdup(".");
    if (dir == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    if (dir[0] == '\0') {
        cmh_free(dir);
        dir = cmh_strdup("/");
        if (dir == NULL) {
            rc = -ENOMEM;
            goto out;
        }
    }
    rc = take(a, &kc, dir, exec_timeout_ms, sub, sizeof sub);
    if (rc != 0 && rc != -ENOMEM)
        snprintf(why, whylen, "kubeconfig %.200s, context %.100s: %s", a->kubeconfig, kc.context,
                 sub);
out:
    if (rc == -ENOMEM)
        snprintf(why, whylen, "out of memory reading the kubeconfig");
    cmh_free(dir);
    cmh_free_secret(buf);
    cmh_kubeconfig_clear(&kc);
    if (rc != 0)
        cmh_k8s_access_free(a);
    return rc == -ENOENT ? -EINVAL : rc; /* -ENOENT only when there is no file at all */
}

void cmh_k8s_access_free(struct cmh_k8s_access *a)
{
    if (a->dir != NULL) {
        /* Only what this module wrote there. */
        char *p[2] = {resolve(a->dir, "token"), resolve(a->dir, "ca.crt")};
        for (int i = 0; i < 2; i++) {
            if (p[i] != NULL)
                unlink(p[i]);
            cmh_free(p[i]);
        }
        rmdir(a->dir);
    }
    cmh_free(a->server);
    cmh_free(a->token_file);
    cmh_free(a->ca_file);
    cmh_free(a->dir);
    cmh_free(a->kubeconfig);
    memset(a, 0, sizeof *a);
}
