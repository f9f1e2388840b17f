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
#include "cmh/k8s/api.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#define ENICONFIG_PATH "/apis/crd.k8s.amazonaws.com/v1alpha1/eniconfigs"

struct cmh_eniconfig {
    struct cmh_curl_uv *curl;
    struct cmh_log *log;
    struct cmh_k8s_api api; /* the server, its CA and the token */
    struct cmh_k8s_api_req req;
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
    struct cmh_eniconfig *l = container_of(req, struct cmh_eniconfig, req.curl);
    char why[300];
    l->in_flight = 0;
    if (res->error == CMH_CURL_ERR_CANCELLED)
        return;
    int rc = cmh_k8s_api_result(&l->api, res, NULL, 0, why, sizeof why);
    if (rc == -ENOENT) {
        /* The CRD is not installed: no custom networking, no ENIConfig subnets. */
        free_strv(l->ids, l->n);
        l->ids = NULL;
        l->n = 0;
        rc = 0;
    } else if (rc == 0) {
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
    } else if (rc == -EPERM) {
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
        CMH_LOG(l->log, CMH_LOG_WARN, "ENIConfig list failed; previous one kept",
                CMH_STR("error", why), CMH_INT("status", res->status),
                CMH_UINT("eniconfig_subnets", l->n));
    }
    cmh_eniconfig_done_cb cb = l->cb;
    l->cb = NULL;
    cb(l, rc, l->arg);
}

int cmh_eniconfig_list(struct cmh_eniconfig *l, cmh_eniconfig_done_cb cb, void *arg)
{
    if (l->in_flight)
        return -EBUSY;
    int rc = cmh_k8s_api_get(&l->api, l->curl, &l->req, ENICONFIG_PATH, 8u << 20, on_list);
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
    struct cmh_k8s_api_opts o = {
        .server = server, .token_file = cfg->k8s_token_file, .ca_file = cfg->k8s_ca_file};
    int rc = cmh_k8s_api_init(&l->api, &o);
    if (rc != 0) {
        cmh_free(l);
        return rc;
    }
    l->curl = curl;
    l->log = log;
    *out = l;
    return 0;
}

void cmh_eniconfig_free(struct cmh_eniconfig *l)
{
    if (l == NULL)
        return;
    if (l->in_flight)
        cmh_curl_uv_cancel(l->curl, &l->req.curl);
    free_strv(l->ids, l->n);
    cmh_k8s_api_req_free(&l->req);
    cmh_k8s_api_free(&l->api);
    cmh_free(l);
}
