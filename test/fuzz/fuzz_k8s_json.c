/* Fuzzes the Kubernetes JSON handling of discovery. The first byte picks the mode: even = the rest
 * is a PodList page, odd = the rest is a watch stream whose lines are events applied in order.
 *
 * A page goes through the streaming parser in chunks cut anywhere (seeded by the first byte) and
 * is compared with a reading made here by jansson on the whole page, the way a PodList is read
 * (the oracle): the same verdict and, when accepted, the same pods, resourceVersion, continue
 * token and count of pods beyond the bound. The two may differ in one direction only, where the
 * streaming parser refuses by design what jansson reads: a repeated key (a repeated "items") and
 * nesting deeper than 2045 levels. With bit 6 of the first byte set, items are bounded at 64 bytes
 * (larger ones skipped): then only the invariants are checked. With bit 7, at most 3 pods are kept.
 *
 * After either mode, the store's tree must hold every pod once in name order, balanced, and the
 * target set must be exactly the Running pods with an address, in name order. */
#include "cmh/k8s/discovery.h"
#include "cmh/k8s/discovery_int.h"
#include "fuzz_splits.h"

#include <jansson.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const struct cmh_discovery_pods *pods)
{
    size_t want = 0;
    if (cmh_discovery_pods_check(pods) != 0)
        abort();
    for (size_t i = 0; i < pods->n; i++) {
        const struct cmh_discovery_pod *p = &pods->v[i];
        if (p->name == NULL || p->node == NULL || p->name[0] == '\0' || strlen(p->name) > 253 ||
            strlen(p->node) > 253 || memchr(p->ip, '\0', sizeof p->ip) == NULL)
            abort();
        want += p->running && p->ip[0] != '\0';
    }
    if (pods->max != 0 && pods->n > pods->max)
        abort();
    struct cmh_discovery_set *set = cmh_discovery_set_build(pods, 1);
    if (set == NULL)
        return;
    if (set->n != want)
        abort();
    for (size_t i = 0; i < set->n; i++)
        if (set->v[i].ip[0] == '\0' || (i > 0 && strcmp(set->v[i - 1].pod, set->v[i].pod) >= 0))
            abort();
    cmh_discovery_set_release(set);
}

/* ---- the oracle: the page read whole by jansson, pods kept in a plain array ---- */

struct ref_pod {
    const char *name, *node, *ip; /* point into the jansson tree */
    bool running;
};

struct ref {
    json_t *root;
    struct ref_pod *v;
    size_t n, max;
    uint64_t refused;
    char rv[64], cont[256];
};

static const char *jstr(json_t *obj, const char *key)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int copy(char *dst, size_t len, const char *src)
{
    src = src != NULL ? src : "";
    if (strlen(src) >= len)
        return -E2BIG;
    memcpy(dst, src, strlen(src) + 1);
    return 0;
}

static void ref_put(struct ref *r, json_t *item)
{
    const char *name = jstr(json_object_get(item, "metadata"), "name");
    const char *node = jstr(json_object_get(item, "spec"), "nodeName");
    const char *ip = jstr(json_object_get(item, "status"), "hostIP");
    const char *phase = jstr(json_object_get(item, "status"), "phase");
    if (!json_is_object(item) || name == NULL || name[0] == '\0' || strlen(name) > 253)
        return;
    struct ref_pod p = {.name = name,
                        .node = node != NULL && strlen(node) <= 253 ? node : "",
                        .ip = ip != NULL && strlen(ip) < 48 ? ip : "",
                        .running = phase != NULL && strcmp(phase, "Running") == 0};
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->v[i].name, name) == 0) {
            r->v[i] = p;
            return;
        }
    if (r->max != 0 && r->n >= r->max) {
        r->refused++;
        return;
    }
    r->v[r->n++] = p;
}

static int ref_read(struct ref *r, const char *buf, size_t len)
{
    json_error_t jerr;
    r->root = json_loadb(buf, len, 0, &jerr);
    json_t *meta = json_object_get(r->root, "metadata");
    json_t *items = json_object_get(r->root, "items");
    if (!json_is_object(r->root) || !json_is_object(meta) ||
        !(json_is_array(items) || json_is_null(items)))
        return -EBADMSG;
    if (copy(r->rv, sizeof r->rv, jstr(meta, "resourceVersion")) != 0 ||
        copy(r->cont, sizeof r->cont, jstr(meta, "continue")) != 0)
        return -E2BIG;
    r->v = calloc(json_array_size(items) + 1, sizeof *r->v);
    if (r->v == NULL)
        abort();
    size_t i;
    json_t *item;
    json_array_foreach(items, i, item) ref_put(r, item);
    return 0;
}

/* Where the streaming parser may refuse what jansson reads. */
static bool refused_by_design(const char *buf, size_t len)
{
    json_error_t jerr;
    json_t *strict = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    json_decref(strict);
    if (strict == NULL)
        return true;
    size_t depth = 0, most = 0;
    for (size_t i = 0; i < len; i++) {
        depth += buf[i] == '{' || buf[i] == '[';
        depth -= depth > 0 && (buf[i] == '}' || buf[i] == ']');
        most = depth > most ? depth : most;
    }
    return most > 2000;
}

static void same(const struct ref *r, const struct cmh_discovery_pods *pods, const char *rv,
                 const char *cont)
{
    if (r->n != pods->n || r->refused != pods->refused || strcmp(r->rv, rv) != 0 ||
        strcmp(r->cont, cont) != 0)
        abort();
    for (size_t i = 0; i < r->n; i++) {
        const struct cmh_discovery_pod *p = NULL;
        for (size_t j = 0; j < pods->n && p == NULL; j++)
            if (strcmp(pods->v[j].name, r->v[i].name) == 0)
                p = &pods->v[j];
        if (p == NULL || strcmp(p->node, r->v[i].node) != 0 || strcmp(p->ip, r->v[i].ip) != 0 ||
            p->running != r->v[i].running)
            abort();
    }
}

static void page(uint8_t mode, const char *buf, size_t len)
{
    size_t max = mode & 0x80 ? 3 : 0, item_max = mode & 0x40 ? 64 : 0;
    struct cmh_discovery_pods pods = {.max = max};
    char rv[64], cont[256];
    size_t n;
    size_t *sz = fuzz_splits(mode >> 1, len, 67, &n);
    if (sz == NULL)
        return;
    struct cmh_discovery_list_parser p;
    cmh_discovery_list_begin(&p, &pods, item_max);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        /* Each chunk its own exact-size allocation, so ASan sees a read past it. */
        char *chunk = malloc(sz[i]);
        if (chunk == NULL)
            abort();
        memcpy(chunk, buf + off, sz[i]);
        off += sz[i];
        int frc = cmh_discovery_list_feed(&p, chunk, sz[i]);
        free(chunk);
        if (frc != 0 && frc != -EBADMSG)
            abort();
    }
    free(sz);
    int rc = cmh_discovery_list_end(&p, rv, sizeof rv, cont, sizeof cont);
    if (rc == 0 && (strlen(rv) >= sizeof rv || strlen(cont) >= sizeof cont))
        abort();
    check(&pods);
    if (item_max == 0) {
        struct ref r = {.max = max};
        int want = ref_read(&r, buf, len);
        if (rc == 0 && want != 0)
            abort(); /* accepted what jansson refuses */
        if (rc != 0 && (want == 0 || rc != want) && !refused_by_design(buf, len))
            abort();
        if (rc == 0 && want == 0)
            same(&r, &pods, rv, cont);
        free(r.v);
        json_decref(r.root);
    }
    /* The one-chunk wrapper reads the page the same way. */
    struct cmh_discovery_pods whole = {.max = max};
    if (item_max == 0) {
        int wrc = cmh_discovery_parse_list(&whole, buf, len, rv, sizeof rv, cont, sizeof cont);
        if (wrc != rc || (rc == 0 && (whole.n != pods.n || whole.refused != pods.refused)))
            abort();
    }
    cmh_discovery_pods_free(&whole);
    cmh_discovery_pods_free(&pods);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *buf = (const char *)data + 1;
    size_t len = size - 1;
    if (data[0] % 2 == 0) {
        page(data[0], buf, len);
        return 0;
    }
    struct cmh_discovery_pods pods = {0};
    while (len > 0) {
        const char *nl = memchr(buf, '\n', len);
        size_t n = nl ? (size_t)(nl - buf) : len;
        struct cmh_discovery_event ev;
        size_t before = pods.n;
        int rc = cmh_discovery_parse_event(&pods, buf, n, &ev);
        if (rc == 0 && ev.type == CMH_K8S_EV_DELETED && ev.changed && pods.n != before - 1)
            abort();
        if (rc == 0 && ev.type == CMH_K8S_EV_ADDED && pods.n < before)
            abort();
        if (rc != 0 && pods.n != before)
            abort();
        buf += nl ? n + 1 : n;
        len -= nl ? n + 1 : n;
    }
    check(&pods);
    cmh_discovery_pods_free(&pods);
    return 0;
}
