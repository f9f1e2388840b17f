/* The ENIConfig list (include/cmh/k8s/eniconfig.h): one GET of the cluster-wide collection, its
 * answer read with jansson. A failed list keeps the previous subnets: custom-networking subnets
 * must not drop out of the view because the API server was busy or RBAC is missing. */
#include "cmh/k8s/eniconfig.h"
#include "cmh/k8s/eniconfig_int.h"

#include "cmh/core/alloc.h"
#include "cmh/core/config.h"
#include "cmh/core/container_of.h"
#include "cmh/core/log.h"
#include "cmh/http/curl_uv.h"
#include "cmh/k8s/token.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#define ENICONFIG_PATH "/apis/crd.k8s.amazonaws.com/v1alpha1/eniconfigs"

struct cmh_eniconfig {
    struct cmh_curl_uv *curl;
    const struct cmh_config *cfg;
    struct cmh_log *log;
    char *url, *auth;
    const char *headers[2];
    struct cmh_curl_uv_req req;
    int in_flight;
    char **ids; /* subnets named by ENIConfigs, from the last good list */
    size_t n;
    cmh_eniconfig_done_cb cb;
    void *arg;
};

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cmh_free(v[i]);
    cmh_free(v);
}

int cmh_eniconfig_parse(const char *buf, size_t len, char ***ids, size_t *n)
{
    json_error_t jerr;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    int rc = -EBADMSG;
    json_t *items = json_is_object(root) ? json_object_get(root, "items") : NULL;
    if (!json_is_array(items))
        goto out;
    rc = 0;
    size_t i;
    json_t *it;
    json_array_foreach(items, i, it)
    {
        json_t *spec = json_is_object(it) ? json_object_get(it, "spec") : NULL;
        const char *sub =
            json_string_value(json_is_object(spec) ? json_object_get(spec, "subnet") : NULL);
        if (sub == NULL || sub[0] == '\0' || strlen(sub) >= CMH_ENICONFIG_SUBNET_MAX)
            continue; /* an ENIConfig without a subnet names none */
        char **v = cmh_reallocarray(*ids, *n + 1, sizeof *v);
        if (v == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        *ids = v;
        if ((v[*n] = cmh_strdup(sub)) == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        (*n)++;
    }
out:
    json_decref(root);
    return rc;
}

static void on_list(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res)
{
    struct cmh_eniconfig *l = container_of(req, struct cmh_eniconfig, req);
    int rc = 0;
    l->in_flight = 0;
    if (res->error == CMH_CURL_ERR_CANCELLED)
        return;
    if (res->error == CMH_CURL_OK && res->status == 404) {
        /* The CRD is not installed: no custom networking, no ENIConfig subnets. */
        free_strv(l->ids, l->n);
        l->ids = NULL;
        l->n = 0;
    } else if (res->error == CMH_CURL_OK && res->status == 200) {
        char **ids = NULL;
        size_t n = 0;
        rc = cmh_eniconfig_parse(res->body, res->body_len, &ids, &n);
        if (rc == 0) {
            free_strv(l->ids, l->n);
            l->ids = ids;
            l->n = n;
        } else {
            free_strv(ids, n);
            CMH_LOG(l->log, CMH_LOG_WARN, "ENIConfig list not understood; previous one kept",
                    CMH_INT("error", rc));
        }
    } else if (res->error == CMH_CURL_OK && res->status == 403) {
        /* No RBAC to list ENIConfigs: custom-networking subnets would silently drop out. */
        rc = -EACCES;
        CMH_LOG(l->log, CMH_LOG_WARN,
                "ENIConfig list forbidden (403): this service account may not list "
                "eniconfigs.crd.k8s.amazonaws.com; previous list kept",
                CMH_UINT("eniconfig_subnets", l->n),
                CMH_STR("fix", "grant list on eniconfigs: the kustomize component "
                               "manifests/components/subnet-metrics, or Helm "
                               "subnetMetrics.enabled=true"));
    } else {
        rc = res->error != CMH_CURL_OK ? -EIO : -EPROTO;
        CMH_LOG(l->log, CMH_LOG_WARN, "ENIConfig list failed; previous one kept",
                CMH_STR("error", cmh_curl_uv_error_name(res->error)),
                CMH_INT("status", res->status), CMH_UINT("eniconfig_subnets", l->n));
    }
    cmh_eniconfig_done_cb cb = l->cb;
    l->cb = NULL;
    cb(l, rc, l->arg);
}

int cmh_eniconfig_list(struct cmh_eniconfig *l, cmh_eniconfig_done_cb cb, void *arg)
{
    if (l->in_flight)
        return -EBUSY;
    char *tok = NULL, why[300];
    cmh_free(l->auth);
    l->auth = NULL;
    size_t nh = 0;
    l->headers[nh++] = "Accept: application/json";
    if (l->cfg->k8s_token_file != NULL &&
        cmh_k8s_token_read(l->cfg->k8s_token_file, &tok, why, sizeof why) == 0) {
        l->auth = cmh_k8s_bearer_header(tok);
        cmh_free(tok);
        if (l->auth != NULL)
            l->headers[nh++] = l->auth;
    }
    memset(&l->req, 0, sizeof l->req);
    l->req.method = "GET";
    l->req.url = l->url;
    l->req.allow_http = strncmp(l->url, "http://", 7) == 0; /* a checked loopback API */
    l->req.headers = l->headers;
    l->req.nheaders = nh;
    l->req.ca_file = l->cfg->k8s_ca_file;
    l->req.max_body = 8u << 20;
    l->req.no_proxy = 1; /* the Kubernetes API, never through a proxy (docs/security.md) */
    int rc = cmh_curl_uv_start(l->curl, &l->req, on_list);
    if (rc != 0)
        return rc;
    l->cb = cb;
    l->arg = arg;
    l->in_flight = 1;
    return 0;
}

size_t cmh_eniconfig_subnets(const struct cmh_eniconfig *l, const char *const **ids)
{
    *ids = (const char *const *)l->ids;
    return l->n;
}

int cmh_eniconfig_new(struct cmh_eniconfig **out, struct cmh_curl_uv *curl, const char *server,
                      const struct cmh_config *cfg, struct cmh_log *log)
{
    *out = NULL;
    struct cmh_eniconfig *l = cmh_calloc(1, sizeof *l);
    if (l == NULL)
        return -ENOMEM;
    size_t len = strlen(server) + sizeof ENICONFIG_PATH;
    l->url = cmh_malloc(len);
    if (l->url == NULL) {
        cmh_free(l);
        return -ENOMEM;
    }
    snprintf(l->url, len, "%s%s", server, ENICONFIG_PATH);
    l->curl = curl;
    l->cfg = cfg;
    l->log = log;
    *out = l;
    return 0;
}

void cmh_eniconfig_free(struct cmh_eniconfig *l)
{
    if (l == NULL)
        return;
    if (l->in_flight)
        cmh_curl_uv_cancel(l->curl, &l->req);
    free_strv(l->ids, l->n);
    cmh_free(l->url);
    cmh_free(l->auth);
    cmh_free(l);
}
