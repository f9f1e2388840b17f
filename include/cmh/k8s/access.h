/* How `report` reaches the Kubernetes API from outside a pod: an API URL without credentials
 * (`kubectl proxy`), or the current context of a kubeconfig (KUBECONFIG, else ~/.kube/config)
 * with its bearer token, token file or exec credential plugin (run as kubectl runs it, once). The
 * token and the CA end up in files of a private temporary directory, so every request path that
 * reads K8S_TOKEN_FILE and K8S_CA_FILE works unchanged. Thread: the caller's; blocks while the
 * plugin runs (bounded). */
#ifndef CMH_K8S_ACCESS_H
#define CMH_K8S_ACCESS_H

#include <stddef.h>

struct cmh_k8s_access {
    /* read-only: filled by cmh_k8s_access_kubeconfig */
    char *server;     /* base URL, without a trailing '/' */
    char *token_file; /* the bearer token to send, or NULL for none */
    char *ca_file;    /* the anchors for the server, or NULL for the system store */
    char *dir;        /* private temporary directory holding what was written, or NULL */
    char *kubeconfig; /* the file read, or NULL */
};

/* Checks an API URL given as is (K8S_API_URL): https, or http to a loopback literal only (what
 * `kubectl proxy` serves). Returns 0, or -EINVAL with a sentence in why. */
int cmh_k8s_access_check_url(const char *url, char *why, size_t whylen);

/* Reads the kubeconfig named by kubeconfig_env (KUBECONFIG: its first existing file), else
 * home/.kube/config, and fills a. Returns 0; -ENOENT when there is no kubeconfig; -EINVAL or
 * another negative code with a sentence in why. exec_timeout_ms bounds the plugin. */
int cmh_k8s_access_kubeconfig(struct cmh_k8s_access *a, const char *kubeconfig_env,
                              const char *home, unsigned exec_timeout_ms, char *why, size_t whylen);

/* Removes the temporary files and frees a's strings. */
void cmh_k8s_access_free(struct cmh_k8s_access *a);

#endif
