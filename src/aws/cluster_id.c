/* The CLUSTER_ID dimension learnt without AWS_CLUSTER_ID (see include/cmh/aws/cluster_id.h): EC2
 * DescribeTags as the original helper did, the node's spec.providerID, the aws-node pods'
 * CLUSTER_NAME, the default said aloud. */
#include "cmh/aws/cluster_id.h"

#include "cmh/core/container_of.h"
#include "cmh/core/alloc.h"
#include "cmh/aws/endpoint.h"
#include "cmh/core/config.h"
#include "cmh/core/buf.h"
#include "cmh/http/curl_uv.h"
#include "cmh/k8s/api.h"
#include "cmh/core/log.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The original helper's clusterIDTags (pkg/publisher/publisher.go), in its order. */
const char *const cmh_cluster_tag_keys[3] = {"eks:cluster-name", "CLUSTER_ID", "Name"};

const char *cmh_cluster_pick_tag(const struct cmh_ec2_tag *tags, size_t n, const char **key)
{
    for (size_t k = 0; k < sizeof cmh_cluster_tag_keys / sizeof cmh_cluster_tag_keys[0]; k++)
        for (size_t i = 0; i < n; i++)
            if (strcmp(tags[i].key, cmh_cluster_tag_keys[k]) == 0 && tags[i].value[0] != '\0') {
                if (key != NULL)
                    *key = cmh_cluster_tag_keys[k];
                return tags[i].value;
            }
    return NULL;
}

int cmh_cluster_parse_provider_id(const char *pid, char *region, size_t rlen, char *instance,
                                  size_t ilen)
{
    static const char prefix[] = "aws:///";
    if (strncmp(pid, prefix, sizeof prefix - 1) != 0)
        return -EPROTO;
    const char *az = pid + sizeof prefix - 1;
    const char *slash = strchr(az, '/');
    if (slash == NULL || slash == az)
        return -EPROTO;
    const char *id = slash + 1;
    size_t idn = strlen(id);
    /* An EC2 instance id: i- and 8 or 17 hex digits. Fargate's is another shape. */
    if (idn < 10 || idn > 19 || strncmp(id, "i-", 2) != 0)
        return -EPROTO;
    for (size_t i = 2; i < idn; i++)
        if (!isxdigit((unsigned char)id[i]) || isupper((unsigned char)id[i]))
            return -EPROTO;
    /* The zone's region: the zone up to its first word that starts with a digit, that word's
     * digits included (us-west-2a, us-west-2-lax-1a, us-gov-west-1b, us-east-1-wl1-bos-wlz-1). */
    size_t azn = (size_t)(slash - az), words = 0, end = 0;
    for (size_t i = 0; i < azn; i++)
        if (!(islower((unsigned char)az[i]) || isdigit((unsigned char)az[i]) || az[i] == '-'))
            return -EPROTO;
    for (size_t i = 0; i < azn; i++) {
        unsigned char c = (unsigned char)az[i];
        if ((i == 0 || az[i - 1] == '-') && c != '-') {
            words++;
            if (isdigit(c)) {
                end = i;
                while (end < azn && isdigit((unsigned char)az[end]))
                    end++;
                break;
            }
        }
    }
    if (end == 0 || words < 3 || end >= rlen || idn >= ilen)
        return -EPROTO;
    memcpy(region, az, end);
    region[end] = '\0';
    memcpy(instance, id, idn + 1);
    return 0;
}

static int dup_string(json_t *v, char **out)
{
    const char *s = json_string_value(v);
    if (s == NULL || s[0] == '\0')
        return -EPROTO;
    *out = cmh_strdup(s);
    return *out != NULL ? 0 : -ENOMEM;
}

int cmh_cluster_node_provider_id(const char *json, size_t len, char **out)
{
    *out = NULL;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, NULL);
    if (root == NULL)
        return -EPROTO;
    int rc = -EPROTO;
    if (json_is_object(root) && json_is_string(json_object_get(root, "kind")) &&
        strcmp(json_string_value(json_object_get(root, "kind")), "Node") == 0)
        rc = dup_string(json_object_get(json_object_get(root, "spec"), "providerID"), out);
    json_decref(root);
    return rc;
}

int cmh_cluster_aws_node_cluster_name(const char *json, size_t len, char **out)
{
    *out = NULL;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, NULL);
    if (root == NULL)
        return -EPROTO;
    json_t *items = json_object_get(root, "items");
    int rc = json_is_array(items) ? -ENOENT : -EPROTO;
    size_t i, j, k;
    json_t *pod, *c, *e;
    json_array_foreach(items, i, pod)
    {
        json_array_foreach(json_object_get(json_object_get(pod, "spec"), "containers"), j, c)
        {
            const char *name = json_string_value(json_object_get(c, "name"));
            if (name == NULL || strcmp(name, "aws-node") != 0)
                continue;
            json_array_foreach(json_object_get(c, "env"), k, e)
            {
                const char *n = json_string_value(json_object_get(e, "name"));
                if (n != NULL && strcmp(n, "CLUSTER_NAME") == 0 &&
                    (rc = dup_string(json_object_get(e, "value"), out)) != -EPROTO)
                    goto out;
                rc = -ENOENT;
            }
        }
    }
out:
    json_decref(root);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * The finder */

enum step { S_IDLE, S_NODE, S_TAGS, S_PODS };

struct cmh_cluster_finder {
    uv_loop_t *loop;
    struct cmh_curl_uv *curl;
    const struct cmh_config *cfg;
    struct cmh_log *log;
    struct cmh_ec2 *ec2;
    struct cmh_ec2_opts ec2_opts;
    char *const *envp;
    char server[300];       /* "" outside a cluster */
    struct cmh_k8s_api api; /* set up when server is */
    int has_api;
    char *node_name;
    char region[64], instance[32];
    enum step step;
    int freeing;
    cmh_cluster_finder_close_cb close_cb; /* cmh_cluster_finder_close */
    void *close_arg;
    struct cmh_k8s_api_req req;
    int in_flight;
    uv_timer_t timer;
    cmh_cluster_node_cb node_cb;
    cmh_cluster_found_cb found_cb;
    void *arg;
    /* the answer */
    char *cluster_id;
    char source[64];
    char degraded[768];
    char tags_why[512]; /* why DescribeTags gave nothing */
};

int cmh_cluster_finder_new(struct cmh_cluster_finder **out, uv_loop_t *loop,
                           struct cmh_curl_uv *curl, const struct cmh_config *cfg,
                           char *const *envp, struct cmh_log *log)
{
    *out = NULL;
    struct cmh_cluster_finder *f = cmh_calloc(1, sizeof *f);
    if (f == NULL)
        return -ENOMEM;
    f->loop = loop;
    f->curl = curl;
    f->cfg = cfg;
    f->log = log;
    f->envp = envp;
    const char *node = cmh_aws_env_get(envp, "NODE_NAME");
    static const char *const no_env[] = {NULL};
    if (cmh_k8s_api_in_cluster_url(f->server, sizeof f->server,
                                   envp != NULL ? envp : (char *const *)no_env) != 0)
        f->server[0] = '\0';
    int rc = 0;
    if (f->server[0] != '\0') {
        struct cmh_k8s_api_opts ao = {
            .server = f->server, .token_file = cfg->k8s_token_file, .ca_file = cfg->k8s_ca_file};
        rc = cmh_k8s_api_init(&f->api, &ao);
        f->has_api = rc == 0;
    }
    if (rc == 0 && node != NULL && (f->node_name = cmh_strdup(node)) == NULL)
        rc = -ENOMEM;
    if (rc == 0)
        rc = uv_timer_init(loop, &f->timer);
    if (rc != 0) {
        if (f->has_api)
            cmh_k8s_api_free(&f->api);
        cmh_free(f->node_name);
        cmh_free(f);
        return rc;
    }
    *out = f;
    return 0;
}

/* GET path on the API server with the service-account token and CA of the configuration. */
static int k8s_get(struct cmh_cluster_finder *f, const char *path, cmh_curl_uv_done_cb done)
{
    if (!f->has_api)
        return -ENOTCONN;
    int rc = cmh_k8s_api_get(&f->api, f->curl, &f->req, path, 4u << 20, done);
    if (rc == 0)
        f->in_flight = 1;
    return rc;
}

static void describe_res(struct cmh_cluster_finder *f, const struct cmh_curl_uv_response *res,
                         char *buf, size_t len)
{
    if (cmh_k8s_api_result(&f->api, res, NULL, 0, buf, len) == 0)
        snprintf(buf, len, "HTTP %ld", res->status);
}

static void on_timer(uv_timer_t *t);

static void node_done(struct cmh_cluster_finder *f)
{
    f->step = S_IDLE;
    f->node_cb(f, f->arg);
}

static void on_node(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res)
{
    struct cmh_cluster_finder *f = container_of(req, struct cmh_cluster_finder, req.curl);
    f->in_flight = 0;
    if (f->freeing)
        return;
    char *pid = NULL, d[300];
    if (res->error == CMH_CURL_OK && res->status == 200 &&
        cmh_cluster_node_provider_id(res->body, res->body_len, &pid) == 0) {
        if (cmh_cluster_parse_provider_id(pid, f->region, sizeof f->region, f->instance,
                                          sizeof f->instance) == 0)
            CMH_LOG(f->log, CMH_LOG_INFO, "cluster id: the node names its instance and region",
                    CMH_STR("node", f->node_name), CMH_STR("provider_id", pid),
                    CMH_STR("region", f->region), CMH_STR("instance_id", f->instance));
        else
            CMH_LOG(f->log, CMH_LOG_WARN,
                    "cluster id: the node's providerID is not an EC2 instance",
                    CMH_STR("node", f->node_name), CMH_STR("provider_id", pid));
        cmh_free(pid);
    } else {
        describe_res(f, res, d, sizeof d);
        CMH_LOG(f->log, CMH_LOG_WARN, "cluster id: cannot read this pod's node",
                CMH_STR("node", f->node_name), CMH_STR("error", d),
                CMH_STR("fix", res->status == 403 ? "grant get on nodes (the shipped ClusterRole)"
                                                  : "check the API server is reachable"));
    }
    node_done(f);
}

int cmh_cluster_finder_node(struct cmh_cluster_finder *f, cmh_cluster_node_cb cb, void *arg)
{
    if (f->step != S_IDLE)
        return -EBUSY;
    f->node_cb = cb;
    f->arg = arg;
    f->step = S_NODE;
    uv_timer_start(&f->timer, on_timer, 0, 0); /* never call back inside this call */
    return 0;
}

const char *cmh_cluster_finder_region(const struct cmh_cluster_finder *f)
{
    return f->region[0] != '\0' ? f->region : NULL;
}

const char *cmh_cluster_finder_instance(const struct cmh_cluster_finder *f)
{
    return f->instance[0] != '\0' ? f->instance : NULL;
}

static void found(struct cmh_cluster_finder *f, const char *id, const char *source)
{
    f->step = S_IDLE;
    cmh_free(f->cluster_id);
    f->cluster_id = cmh_strdup(id);
    snprintf(f->source, sizeof f->source, "%s", source);
    if (strcmp(source, "default") == 0) {
        snprintf(f->degraded, sizeof f->degraded,
                 "CLUSTER_ID is the shared default %s (%s): every cluster without a name "
                 "publishes there; set AWS_CLUSTER_ID",
                 CMH_CLUSTER_DEFAULT, f->tags_why[0] ? f->tags_why : "no source named the cluster");
        CMH_LOG(f->log, CMH_LOG_WARN, "cluster id: none found, using the shared default",
                CMH_STR("cluster_id", CMH_CLUSTER_DEFAULT), CMH_STR("why", f->tags_why),
                CMH_STR("fix", "set AWS_CLUSTER_ID to the cluster's name"));
    } else {
        f->degraded[0] = '\0';
        CMH_LOG(f->log, CMH_LOG_INFO, "cluster id", CMH_STR("cluster_id", id),
                CMH_STR("source", source));
    }
    if (f->cluster_id == NULL) /* out of memory: the default, which is static */
        f->found_cb(f, CMH_CLUSTER_DEFAULT, "default", "out of memory", f->arg);
    else
        f->found_cb(f, f->cluster_id, f->source, f->degraded[0] ? f->degraded : NULL, f->arg);
}

static void on_pods(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res)
{
    struct cmh_cluster_finder *f = container_of(req, struct cmh_cluster_finder, req.curl);
    f->in_flight = 0;
    if (f->freeing)
        return;
    char *name = NULL, d[300];
    int rc = -EIO;
    if (res->error == CMH_CURL_OK && res->status == 200)
        rc = cmh_cluster_aws_node_cluster_name(res->body, res->body_len, &name);
    if (rc == 0) {
        if (f->tags_why[0] != '\0')
            CMH_LOG(f->log, CMH_LOG_WARN,
                    "cluster id from the aws-node pods' CLUSTER_NAME: the original helper, with "
                    "the same role and instance, published k8s-cluster; alarms on that name need "
                    "AWS_CLUSTER_ID=k8s-cluster",
                    CMH_STR("cluster_id", name), CMH_STR("describe_tags", f->tags_why));
        found(f, name, "aws-node-env");
        cmh_free(name);
        return;
    }
    describe_res(f, res, d, sizeof d);
    CMH_LOG(f->log, CMH_LOG_INFO, "cluster id: no CLUSTER_NAME on the aws-node pods",
            CMH_STR("result", rc == -ENOENT ? "none set" : d));
    found(f, CMH_CLUSTER_DEFAULT, "default");
}

static void pods_step(struct cmh_cluster_finder *f)
{
    f->step = S_PODS;
    if (f->server[0] == '\0') {
        found(f, CMH_CLUSTER_DEFAULT, "default");
        return;
    }
    const char *sel = f->cfg->k8s_label_selector != NULL ? f->cfg->k8s_label_selector : "";
    struct cmh_buf path;
    cmh_buf_init(&path, 4096);
    cmh_buf_printf(&path, "/api/v1/namespaces/%s/pods?labelSelector=", f->cfg->k8s_namespace);
    cmh_buf_add_pct(&path, sel, strlen(sel), CMH_PCT_KEEP_SLASH);
    cmh_buf_addstr(&path, "&limit=20");
    int rc = cmh_buf_err(&path) ? cmh_buf_err(&path) : k8s_get(f, cmh_buf_str(&path), on_pods);
    cmh_buf_free(&path);
    if (rc != 0)
        found(f, CMH_CLUSTER_DEFAULT, "default");
}

static void on_tags(struct cmh_ec2 *e, int rc, const struct cmh_ec2_tag *tags, size_t n,
                    const char *why, void *arg)
{
    struct cmh_cluster_finder *f = arg;
    (void)e;
    if (rc == 0) {
        const char *key = NULL;
        const char *v = cmh_cluster_pick_tag(tags, n, &key);
        if (v != NULL) {
            char source[64];
            snprintf(source, sizeof source, "ec2-describe-tags:%s", key);
            if (strcmp(key, "Name") == 0)
                CMH_LOG(f->log, CMH_LOG_WARN,
                        "cluster id from the instance's Name tag, as the original helper did: it "
                        "names an instance, and changes when the helper moves to another node",
                        CMH_STR("cluster_id", v), CMH_STR("fix", "set AWS_CLUSTER_ID"));
            found(f, v, source);
            return;
        }
        snprintf(f->tags_why, sizeof f->tags_why,
                 "instance %s has none of the tags eks:cluster-name, CLUSTER_ID, Name",
                 f->instance);
    } else {
        snprintf(f->tags_why, sizeof f->tags_why, "%s", why != NULL ? why : "DescribeTags failed");
    }
    CMH_LOG(f->log, CMH_LOG_WARN, "cluster id: not from EC2 DescribeTags",
            CMH_STR("why", f->tags_why));
    pods_step(f);
}

int cmh_cluster_finder_find(struct cmh_cluster_finder *f, const char *region,
                            const char *instance_id, cmh_cluster_found_cb cb, void *arg)
{
    if (f->step != S_IDLE)
        return -EBUSY;
    f->found_cb = cb;
    f->arg = arg;
    f->tags_why[0] = '\0';
    if (region != NULL && instance_id != NULL && region != f->region)
        snprintf(f->region, sizeof f->region, "%s", region);
    if (instance_id != NULL && instance_id != f->instance)
        snprintf(f->instance, sizeof f->instance, "%s", instance_id);
    f->step = S_TAGS;
    uv_timer_start(&f->timer, on_timer, 0, 0);
    return 0;
}

static void on_timer(uv_timer_t *t)
{
    struct cmh_cluster_finder *f = container_of(t, struct cmh_cluster_finder, timer);
    if (f->step == S_NODE) {
        char path[400];
        if (f->node_name == NULL || f->server[0] == '\0') {
            CMH_LOG(
                f->log, CMH_LOG_INFO, "cluster id: this pod's node is not known",
                CMH_STR("why", f->node_name == NULL ? "NODE_NAME is not set" : "not in a cluster"));
            node_done(f);
            return;
        }
        snprintf(path, sizeof path, "/api/v1/nodes/%s", f->node_name);
        if (strpbrk(f->node_name, "/?#%") != NULL || k8s_get(f, path, on_node) != 0)
            node_done(f);
        return;
    }
    if (f->step != S_TAGS)
        return;
    if (f->instance[0] == '\0' || f->region[0] == '\0') {
        snprintf(f->tags_why, sizeof f->tags_why,
                 "the instance this runs on is unknown (IMDS out of reach and no NODE_NAME)");
        pods_step(f);
        return;
    }
    int rc = 0;
    if (f->ec2 == NULL) {
        f->ec2_opts = (struct cmh_ec2_opts){.envp = f->envp, .region = f->region};
        rc = cmh_ec2_new(&f->ec2, f->loop, f->curl, &f->ec2_opts, f->log);
    }
    if (rc == 0)
        rc = cmh_ec2_describe_tags(f->ec2, f->instance, cmh_cluster_tag_keys,
                                   sizeof cmh_cluster_tag_keys / sizeof cmh_cluster_tag_keys[0],
                                   on_tags, f);
    if (rc != 0) {
        snprintf(f->tags_why, sizeof f->tags_why, "EC2 client not set up (error %d)", rc);
        pods_step(f);
    }
}

static void on_closed(uv_handle_t *h)
{
    struct cmh_cluster_finder *f = container_of((uv_timer_t *)h, struct cmh_cluster_finder, timer);
    if (f->close_cb != NULL)
        f->close_cb(f, f->close_arg);
    cmh_free(f);
}

void cmh_cluster_finder_close(struct cmh_cluster_finder *f, cmh_cluster_finder_close_cb close_cb,
                              void *arg)
{
    if (f == NULL || f->freeing)
        return;
    f->freeing = 1;
    f->close_cb = close_cb;
    f->close_arg = arg;
    uv_timer_stop(&f->timer);
    if (f->in_flight)
        cmh_curl_uv_cancel(f->curl, &f->req.curl);
    f->in_flight = 0;
    if (f->ec2 != NULL)
        cmh_ec2_close(f->ec2, NULL, NULL);
    cmh_k8s_api_req_free(&f->req);
    if (f->has_api)
        cmh_k8s_api_free(&f->api);
    cmh_free(f->node_name);
    cmh_free(f->cluster_id);
    uv_close((uv_handle_t *)&f->timer, on_closed);
}
