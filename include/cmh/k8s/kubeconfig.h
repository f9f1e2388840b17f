/* A kubeconfig file (what kubectl reads: KUBECONFIG, else ~/.kube/config), reduced to how
 * `report` reaches the API server of its current context: the server URL, the CA that signs it,
 * and the user's bearer token, token file or exec credential plugin. Pure (no I/O): parses the
 * YAML text given; thread: any. */
#ifndef CMH_KUBECONFIG_H
#define CMH_KUBECONFIG_H

#include <stddef.h>

/* Largest kubeconfig accepted. */
#define CMH_KUBECONFIG_MAX (1u << 20)
/* Most exec arguments and environment entries kept. */
#define CMH_KUBECONFIG_EXEC_MAX 64

/* Every string is owned (cmh_malloc) and released by cmh_kubeconfig_clear; NULL when absent. */
struct cmh_kubeconfig {
    char *context;      /* the context used */
    char *server;       /* clusters[].cluster.server */
    char *ca_file;      /* cluster.certificate-authority */
    char *ca_data;      /* cluster.certificate-authority-data, base64 as written */
    char *token;        /* users[].user.token */
    char *token_file;   /* user.tokenFile */
    char *exec_command; /* user.exec.command */
    char *exec_args[CMH_KUBECONFIG_EXEC_MAX]; /* user.exec.args */
    size_t exec_nargs;
    char *exec_env[CMH_KUBECONFIG_EXEC_MAX]; /* user.exec.env as "name=value" */
    size_t exec_nenv;
};

/* Parses buf (len bytes, YAML) and picks context (NULL: current-context). Returns 0; -EINVAL
 * with a sentence in why for a malformed file, a missing context, cluster or server, and for what
 * report refuses: insecure-skip-tls-verify, client certificates, auth-provider, a user with no
 * credentials but none needed is fine (the caller decides); -ENOMEM. */
int cmh_kubeconfig_parse(const char *buf, size_t len, const char *context,
                         struct cmh_kubeconfig *kc, char *why, size_t whylen);

void cmh_kubeconfig_clear(struct cmh_kubeconfig *kc);

/* The token in an ExecCredential JSON (status.token), owned by the caller. Returns 0, -EINVAL
 * with a sentence in why (not JSON, wrong kind, no token, a client certificate only), -ENOMEM. */
int cmh_kubeconfig_exec_token(const char *buf, size_t len, char **token, char *why, size_t whylen);

#endif
