#include "cmh/k8s/kubeconfig.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <yaml.h>

#include "cmh/core/alloc.h"

/* The value of key in mapping node n, or NULL (also when n is not a mapping). */
static yaml_node_t *map_get(yaml_document_t *d, yaml_node_t *n, const char *key)
{
    if (n == NULL || n->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(d, p->key);
        if (k != NULL && k->type == YAML_SCALAR_NODE && strlen(key) == k->data.scalar.length &&
            memcmp(k->data.scalar.value, key, k->data.scalar.length) == 0)
            return yaml_document_get_node(d, p->value);
    }
    return NULL;
}

/* The text of a scalar node (NUL-terminated by libyaml), or NULL. Empty counts as absent. */
static const char *scalar(yaml_node_t *n)
{
    if (n == NULL || n->type != YAML_SCALAR_NODE || n->data.scalar.length == 0 ||
        strlen((const char *)n->data.scalar.value) != n->data.scalar.length)
        return NULL;
    return (const char *)n->data.scalar.value;
}

/* In the sequence seq of {name: ..., field: {...}}, the field of the entry called name. */
static yaml_node_t *named(yaml_document_t *d, yaml_node_t *seq, const char *name, const char *field)
{
    if (seq == NULL || seq->type != YAML_SEQUENCE_NODE)
        return NULL;
    for (yaml_node_item_t *i = seq->data.sequence.items.start; i < seq->data.sequence.items.top;
         i++) {
        yaml_node_t *e = yaml_document_get_node(d, *i);
        const char *n = scalar(map_get(d, e, "name"));
        if (n != NULL && strcmp(n, name) == 0)
            return map_get(d, e, field);
    }
    return NULL;
}

static int dup_field(yaml_document_t *d, yaml_node_t *n, const char *key, char **out)
{
    const char *s = scalar(map_get(d, n, key));
    if (s == NULL)
        return 0;
    *out = cmh_strdup(s);
    return *out == NULL ? -ENOMEM : 0;
}

static int truthy(yaml_document_t *d, yaml_node_t *n, const char *key)
{
    const char *s = scalar(map_get(d, n, key));
    return s != NULL && (strcmp(s, "true") == 0 || strcmp(s, "True") == 0 || strcmp(s, "yes") == 0);
}

static int read_exec(yaml_document_t *d, yaml_node_t *ex, struct cmh_kubeconfig *kc, char *why,
                     size_t whylen)
{
    int rc = dup_field(d, ex, "command", &kc->exec_command);
    if (rc != 0)
        return rc;
    if (kc->exec_command == NULL) {
        snprintf(why, whylen, "the user's exec entry has no command");
        return -EINVAL;
    }
    yaml_node_t *args = map_get(d, ex, "args");
    if (args != NULL && args->type == YAML_SEQUENCE_NODE) {
        for (yaml_node_item_t *i = args->data.sequence.items.start;
             i < args->data.sequence.items.top; i++) {
            yaml_node_t *a = yaml_document_get_node(d, *i);
            if (a == NULL || a->type != YAML_SCALAR_NODE ||
                strlen((const char *)a->data.scalar.value) != a->data.scalar.length ||
                kc->exec_nargs == CMH_KUBECONFIG_EXEC_MAX) {
                snprintf(why, whylen, "the user's exec args are not a list of at most %d strings",
                         CMH_KUBECONFIG_EXEC_MAX);
                return -EINVAL;
            }
            kc->exec_args[kc->exec_nargs] = cmh_strdup((const char *)a->data.scalar.value);
            if (kc->exec_args[kc->exec_nargs++] == NULL)
                return -ENOMEM;
        }
    }
    yaml_node_t *env = map_get(d, ex, "env");
    if (env != NULL && env->type == YAML_SEQUENCE_NODE) {
        for (yaml_node_item_t *i = env->data.sequence.items.start; i < env->data.sequence.items.top;
             i++) {
            yaml_node_t *e = yaml_document_get_node(d, *i);
            const char *n = scalar(map_get(d, e, "name"));
            const char *v = scalar(map_get(d, e, "value"));
            if (n == NULL || strchr(n, '=') != NULL || kc->exec_nenv == CMH_KUBECONFIG_EXEC_MAX) {
                snprintf(why, whylen,
                         "the user's exec env is not a list of at most %d {name, value}",
                         CMH_KUBECONFIG_EXEC_MAX);
                return -EINVAL;
            }
            size_t len = strlen(n) + (v ? strlen(v) : 0) + 2;
            char *s = cmh_malloc(len);
            if (s == NULL)
                return -ENOMEM;
            snprintf(s, len, "%s=%s", n, v ? v : "");
            kc->exec_env[kc->exec_nenv++] = s;
        }
    }
    return 0;
}

static int walk(yaml_document_t *d, const char *context, struct cmh_kubeconfig *kc, char *why,
                size_t whylen)
{
    yaml_node_t *root = yaml_document_get_root_node(d);
    if (root == NULL || root->type != YAML_MAPPING_NODE) {
        snprintf(why, whylen, "not a kubeconfig (no top-level mapping)");
        return -EINVAL;
    }
    const char *ctx = context ? context : scalar(map_get(d, root, "current-context"));
    if (ctx == NULL) {
        snprintf(why, whylen, "no current-context (kubectl config use-context NAME)");
        return -EINVAL;
    }
    kc->context = cmh_strdup(ctx);
    if (kc->context == NULL)
        return -ENOMEM;
    yaml_node_t *c = named(d, map_get(d, root, "contexts"), ctx, "context");
    if (c == NULL) {
        snprintf(why, whylen, "context '%.100s' is not in the file", ctx);
        return -EINVAL;
    }
    const char *cluster = scalar(map_get(d, c, "cluster"));
    const char *user = scalar(map_get(d, c, "user"));
    yaml_node_t *cl = cluster ? named(d, map_get(d, root, "clusters"), cluster, "cluster") : NULL;
    if (cl == NULL) {
        snprintf(why, whylen, "context '%.100s' names no cluster in the file", ctx);
        return -EINVAL;
    }
    if (truthy(d, cl, "insecure-skip-tls-verify")) {
        snprintf(why, whylen,
                 "cluster '%.100s' sets insecure-skip-tls-verify: refused (report verifies the "
                 "API server; give certificate-authority or certificate-authority-data)",
                 cluster);
        return -EINVAL;
    }
    int rc = dup_field(d, cl, "server", &kc->server);
    if (rc == 0)
        rc = dup_field(d, cl, "certificate-authority", &kc->ca_file);
    if (rc == 0)
        rc = dup_field(d, cl, "certificate-authority-data", &kc->ca_data);
    if (rc != 0)
        return rc;
    if (kc->server == NULL) {
        snprintf(why, whylen, "cluster '%.100s' has no server", cluster);
        return -EINVAL;
    }
    yaml_node_t *u = user ? named(d, map_get(d, root, "users"), user, "user") : NULL;
    if (u == NULL)
        return 0; /* no credentials: the caller sends none */
    static const char *const refused[] = {"client-certificate", "client-certificate-data",
                                          "auth-provider", "username"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        if (map_get(d, u, refused[i]) != NULL) {
            snprintf(why, whylen,
                     "user '%.100s' authenticates with %s: not supported by report (use a "
                     "token, tokenFile or exec plugin, or kubectl proxy and K8S_API_URL)",
                     user, refused[i]);
            return -EINVAL;
        }
    rc = dup_field(d, u, "token", &kc->token);
    if (rc == 0)
        rc = dup_field(d, u, "tokenFile", &kc->token_file);
    if (rc != 0)
        return rc;
    yaml_node_t *ex = map_get(d, u, "exec");
    return ex != NULL ? read_exec(d, ex, kc, why, whylen) : 0;
}

int cmh_kubeconfig_parse(const char *buf, size_t len, const char *context,
                         struct cmh_kubeconfig *kc, char *why, size_t whylen)
{
    memset(kc, 0, sizeof *kc);
    if (len > CMH_KUBECONFIG_MAX) {
        snprintf(why, whylen, "larger than %u bytes", CMH_KUBECONFIG_MAX);
        return -EINVAL;
    }
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser))
        return -ENOMEM;
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
    int rc;
    if (!yaml_parser_load(&parser, &doc)) {
        snprintf(why, whylen, "not YAML: %s at line %zu", parser.problem ? parser.problem : "error",
                 parser.problem_mark.line + 1);
        rc = parser.error == YAML_MEMORY_ERROR ? -ENOMEM : -EINVAL;
        yaml_parser_delete(&parser);
        return rc;
    }
    rc = walk(&doc, context, kc, why, whylen);
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (rc != 0)
        cmh_kubeconfig_clear(kc);
    return rc;
}

void cmh_kubeconfig_clear(struct cmh_kubeconfig *kc)
{
    cmh_free(kc->context);
    cmh_free(kc->server);
    cmh_free(kc->ca_file);
    cmh_free(kc->ca_data);
    cmh_free_secret(kc->token);
    cmh_free(kc->token_file);
    cmh_free(kc->exec_command);
    for (size_t i = 0; i < kc->exec_nargs; i++)
        cmh_free(kc->exec_args[i]);
    for (size_t i = 0; i < kc->exec_nenv; i++)
        cmh_free_secret(kc->exec_env[i]);
    memset(kc, 0, sizeof *kc);
}

int cmh_kubeconfig_exec_token(const char *buf, size_t len, char **token, char *why, size_t whylen)
{
    *token = NULL;
    json_error_t err;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &err);
    if (root == NULL) {
        snprintf(why, whylen, "the exec plugin's output is not JSON: %.100s", err.text);
        return -EINVAL;
    }
    int rc = -EINVAL;
    const char *kind = json_string_value(json_object_get(root, "kind"));
    json_t *status = json_object_get(root, "status");
    const char *tok = json_string_value(json_object_get(status, "token"));
    if (kind == NULL || strcmp(kind, "ExecCredential") != 0)
        snprintf(why, whylen, "the exec plugin's output is not an ExecCredential");
    else if (tok == NULL || tok[0] == '\0' || strpbrk(tok, "\r\n") != NULL)
        snprintf(why, whylen,
                 json_object_get(status, "clientCertificateData") != NULL
                     ? "the exec plugin gives a client certificate: not supported by report"
                     : "the exec plugin's ExecCredential has no status.token");
    else
        rc = (*token = cmh_strdup(tok)) == NULL ? -ENOMEM : 0;
    json_decref(root);
    return rc;
}
