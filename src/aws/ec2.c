/* EC2 DescribeSubnets: the streaming expat parser of the answer, the client that signs, paginates
 * and retries, and the watch that keeps the daemon's subnet view (with the ENIConfig list, read
 * with jansson). Requests go through curl_uv; credentials come from aws_creds. */
#include "cmh/aws/ec2.h"

#include "cmh/core/container_of.h"
#include "cmh/core/alloc.h"
#include "cmh/core/buf.h"
#include "cmh/aws/aws_creds.h"
#include "cmh/aws/endpoint.h"
#include "cmh/round/blocks28.h"
#include "cmh/core/config.h"
#include "cmh/http/curl_uv.h"
#include "cmh/round/forecast.h"
#include "cmh/k8s/token.h"
#include "cmh/core/log.h"
#include "cmh/core/rng.h"
#include "cmh/aws/sigv4.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <expat.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---------------------------------------------------------------------------------------------
 * The parser */

int cmh_ec2_cidrs_push(struct cmh_ec2_cidrs *l, const struct cmh_cidr *c)
{
    if (l->n >= CMH_EC2_MAX_USED)
        return -E2BIG;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        struct cmh_cidr *v = cmh_reallocarray(l->v, cap, sizeof *v);
        if (v == NULL)
            return -ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = *c;
    return 0;
}

void cmh_ec2_cidrs_free(struct cmh_ec2_cidrs *l)
{
    cmh_free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

enum xel {
    X_SKIP,
    X_RESPONSE,  /* DescribeSubnetsResponse */
    X_ERRROOT,   /* Response (EC2 errors) or ErrorResponse */
    X_ERRORS,    /* Response/Errors */
    X_ERROR,     /* .../Error */
    X_SUBNETSET, /* subnetSet */
    X_SUBNET,    /* subnetSet/item */
    X_V6SET,     /* item/ipv6CidrBlockAssociationSet */
    X_V6ITEM,    /* ipv6CidrBlockAssociationSet/item */
    X_ENISET,    /* networkInterfaceSet (DescribeNetworkInterfaces) */
    X_ENI,       /* networkInterfaceSet/item */
    X_PIPSET,    /* item/privateIpAddressesSet */
    X_PIPITEM,   /* privateIpAddressesSet/item */
    X_PFXSET,    /* item/ipv4PrefixSet */
    X_PFXITEM,   /* ipv4PrefixSet/item */
    X_RESSET,    /* subnetIpv4CidrReservationSet (GetSubnetCidrReservations) */
    X_RESITEM,   /* subnetIpv4CidrReservationSet/item */
    X_TRESPONSE, /* DescribeTagsResponse */
    X_TAGSET,    /* tagSet */
    X_TAG,       /* tagSet/item */
    X_FIELD,
};

enum xfield {
    F_NONE = -1,
    F_REQUEST_ID,
    F_NEXT_TOKEN,
    F_SUBNET_ID,
    F_CIDR,
    F_AZ,
    F_AVAILABLE,
    F_V6CIDR,
    F_CODE,
    F_MESSAGE,
    F_PRIVATE_IP,
    F_PREFIX,
    F_RES_CIDR,
    F_TAG_KEY,
    F_TAG_VALUE,
    F_COUNT
};

#define MAX_DEPTH 16

struct cmh_ec2_xml {
    XML_Parser xp;
    struct cmh_ec2_page *page;
    int depth;
    enum xel path[MAX_DEPTH];
    int skip_depth; /* > 0: inside an element we ignore, which started at depth skip_depth - 1 */
    enum xfield field;
    char buf[CMH_EC2_TOKEN_MAX];
    size_t blen;
    enum xel root;
    int error;
    int done; /* the final piece was fed */
    /* The subnet being read. */
    struct cmh_subnet cur;
    struct cmh_ec2_tag tag; /* the tag being read */
    unsigned seen;          /* bit per field within the current subnet, tag or error */
    unsigned seen_top;
};

static void x_fail(struct cmh_ec2_xml *x, int err)
{
    if (x->error == 0)
        x->error = err;
    XML_StopParser(x->xp, XML_FALSE);
}

static const char *local_name(const char *n)
{
    const char *c = strrchr(n, ':');
    return c != NULL ? c + 1 : n;
}

static enum xfield field_of(enum xel parent, const char *n)
{
    switch (parent) {
    case X_RESPONSE:
    case X_TRESPONSE:
        return strcmp(n, "requestId") == 0   ? F_REQUEST_ID
               : strcmp(n, "nextToken") == 0 ? F_NEXT_TOKEN
                                             : F_NONE;
    case X_ERRROOT:
        return strcmp(n, "RequestID") == 0 || strcmp(n, "RequestId") == 0 ? F_REQUEST_ID : F_NONE;
    case X_SUBNET:
        return strcmp(n, "subnetId") == 0                  ? F_SUBNET_ID
               : strcmp(n, "cidrBlock") == 0               ? F_CIDR
               : strcmp(n, "availabilityZone") == 0        ? F_AZ
               : strcmp(n, "availableIpAddressCount") == 0 ? F_AVAILABLE
                                                           : F_NONE;
    case X_V6ITEM:
        return strcmp(n, "ipv6CidrBlock") == 0 ? F_V6CIDR : F_NONE;
    case X_TAG:
        return strcmp(n, "key") == 0 ? F_TAG_KEY : strcmp(n, "value") == 0 ? F_TAG_VALUE : F_NONE;
    case X_ERROR:
        return strcmp(n, "Code") == 0 ? F_CODE : strcmp(n, "Message") == 0 ? F_MESSAGE : F_NONE;
    case X_PIPITEM:
        return strcmp(n, "privateIpAddress") == 0 ? F_PRIVATE_IP : F_NONE;
    case X_PFXITEM:
        return strcmp(n, "ipv4Prefix") == 0 ? F_PREFIX : F_NONE;
    case X_RESITEM:
        return strcmp(n, "cidr") == 0 ? F_RES_CIDR : F_NONE;
    default:
        return F_NONE;
    }
}

static enum xel container_of_name(enum xel parent, const char *n)
{
    switch (parent) {
    case X_RESPONSE:
        return strcmp(n, "subnetSet") == 0                      ? X_SUBNETSET
               : strcmp(n, "networkInterfaceSet") == 0          ? X_ENISET
               : strcmp(n, "subnetIpv4CidrReservationSet") == 0 ? X_RESSET
                                                                : X_SKIP;
    case X_ENISET:
        return strcmp(n, "item") == 0 ? X_ENI : X_SKIP;
    case X_ENI:
        return strcmp(n, "privateIpAddressesSet") == 0 ? X_PIPSET
               : strcmp(n, "ipv4PrefixSet") == 0       ? X_PFXSET
                                                       : X_SKIP;
    case X_PIPSET:
        return strcmp(n, "item") == 0 ? X_PIPITEM : X_SKIP;
    case X_PFXSET:
        return strcmp(n, "item") == 0 ? X_PFXITEM : X_SKIP;
    case X_RESSET:
        return strcmp(n, "item") == 0 ? X_RESITEM : X_SKIP;
    case X_SUBNETSET:
        return strcmp(n, "item") == 0 ? X_SUBNET : X_SKIP;
    case X_SUBNET:
        return strcmp(n, "ipv6CidrBlockAssociationSet") == 0 ? X_V6SET : X_SKIP;
    case X_V6SET:
        return strcmp(n, "item") == 0 ? X_V6ITEM : X_SKIP;
    case X_TRESPONSE:
        return strcmp(n, "tagSet") == 0 ? X_TAGSET : X_SKIP;
    case X_TAGSET:
        return strcmp(n, "item") == 0 ? X_TAG : X_SKIP;
    case X_ERRROOT:
        return strcmp(n, "Errors") == 0 ? X_ERRORS : strcmp(n, "Error") == 0 ? X_ERROR : X_SKIP;
    case X_ERRORS:
        return strcmp(n, "Error") == 0 ? X_ERROR : X_SKIP;
    default:
        return X_SKIP;
    }
}

static void XMLCALL x_start(void *ud, const XML_Char *name, const XML_Char **attrs)
{
    struct cmh_ec2_xml *x = ud;
    const char *n = local_name(name);
    (void)attrs;
    if (x->field != F_NONE) {
        x_fail(x, -EPROTO); /* markup inside a text field */
        return;
    }
    int d = x->depth++;
    if (x->skip_depth > 0)
        return;
    if (d >= MAX_DEPTH) {
        x->skip_depth = d + 1;
        return;
    }
    if (d == 0) {
        const char *action = x->page->action != NULL ? x->page->action : "DescribeSubnets";
        size_t al = strlen(action);
        if (strcmp(n, "DescribeTagsResponse") == 0)
            x->root = X_TRESPONSE;
        else if (strncmp(n, action, al) == 0 && strcmp(n + al, "Response") == 0)
            x->root = X_RESPONSE;
        else if (strcmp(n, "Response") == 0 || strcmp(n, "ErrorResponse") == 0)
            x->root = X_ERRROOT;
        else {
            x_fail(x, -EPROTO);
            return;
        }
        x->path[0] = x->root;
        return;
    }
    enum xel parent = x->path[d - 1];
    enum xfield f = field_of(parent, n);
    if (f != F_NONE) {
        unsigned *seen = parent == X_RESPONSE || parent == X_TRESPONSE || parent == X_ERRROOT
                             ? &x->seen_top
                             : &x->seen;
        /* Items reset what they saw; IPv6 blocks repeat, one per item; everything else appears
         * once. */
        if (parent == X_PIPITEM || parent == X_PFXITEM || parent == X_RESITEM)
            *seen &= ~(1u << f);
        if (f != F_V6CIDR && (*seen & (1u << f))) {
            x_fail(x, -EPROTO);
            return;
        }
        *seen |= 1u << f;
        x->field = f;
        x->blen = 0;
        x->path[d] = X_FIELD;
        return;
    }
    enum xel me = container_of_name(parent, n);
    if (me == X_SKIP) {
        x->skip_depth = d + 1;
        return;
    }
    if (me == X_SUBNET) {
        memset(&x->cur, 0, sizeof x->cur);
        x->seen = 0;
    } else if (me == X_TAG) {
        memset(&x->tag, 0, sizeof x->tag);
        x->seen = 0;
    } else if (me == X_ERROR) {
        if (x->seen_top & (1u << F_CODE)) {
            x->skip_depth = d + 1; /* only the first error is reported */
            return;
        }
        x->seen = 0;
    }
    x->path[d] = me;
}

static int copy_text(char *dst, size_t len, const char *src, size_t n)
{
    /* Trim the whitespace pretty-printing adds. */
    while (n > 0 && isspace((unsigned char)*src)) {
        src++;
        n--;
    }
    while (n > 0 && isspace((unsigned char)src[n - 1]))
        n--;
    if (n >= len)
        return -E2BIG;
    memcpy(dst, src, n);
    dst[n] = '\0';
    return 0;
}

static int field_end(struct cmh_ec2_xml *x, enum xfield f)
{
    struct cmh_ec2_page *p = x->page;
    char tmp[CMH_SUBNET_CIDR_MAX]; /* a CIDR or a count */
    int rc;
    switch (f) {
    case F_REQUEST_ID:
        return copy_text(p->request_id, sizeof p->request_id, x->buf, x->blen) == 0 ? 0 : -EPROTO;
    case F_NEXT_TOKEN:
        return copy_text(p->next_token, sizeof p->next_token, x->buf, x->blen);
    case F_SUBNET_ID:
        rc = copy_text(x->cur.id, sizeof x->cur.id, x->buf, x->blen);
        return rc != 0 || x->cur.id[0] == '\0' ? -EPROTO : 0;
    case F_AZ:
        rc = copy_text(x->cur.az, sizeof x->cur.az, x->buf, x->blen);
        return rc != 0 || x->cur.az[0] == '\0' ? -EPROTO : 0;
    case F_CIDR:
    case F_V6CIDR:
        if (copy_text(tmp, sizeof tmp, x->buf, x->blen) != 0)
            return -EPROTO;
        if (tmp[0] == '\0')
            return 0;
        if (x->cur.ncidrs == CMH_SUBNET_MAX_CIDRS)
            return 0; /* more IPv6 blocks than we keep: the first ones are enough to map nodes */
        if (cmh_cidr_parse(tmp, strlen(tmp), &x->cur.cidrs[x->cur.ncidrs]) != 0)
            return -EPROTO;
        if ((f == F_CIDR) != (x->cur.cidrs[x->cur.ncidrs].family == 4))
            return -EPROTO;
        if (f == F_CIDR)
            snprintf(x->cur.cidr, sizeof x->cur.cidr, "%s", tmp);
        x->cur.ncidrs++;
        return 0;
    case F_AVAILABLE: {
        if (copy_text(tmp, sizeof tmp, x->buf, x->blen) != 0 || !isdigit((unsigned char)tmp[0]))
            return -EPROTO;
        errno = 0;
        char *end;
        long long v = strtoll(tmp, &end, 10);
        if (errno != 0 || *end != '\0' || v < 0 || v > (1LL << 40))
            return -EPROTO;
        x->cur.available = v;
        return 0;
    }
    case F_PRIVATE_IP:
    case F_PREFIX:
    case F_RES_CIDR: {
        struct cmh_cidr c;
        if (copy_text(tmp, sizeof tmp, x->buf, x->blen) != 0 || p->used == NULL)
            return -EPROTO;
        if (f == F_PRIVATE_IP) {
            memset(&c, 0, sizeof c);
            if (inet_pton(AF_INET, tmp, c.addr) != 1)
                return -EPROTO;
            c.family = 4;
            c.prefix = 32;
        } else if (cmh_cidr_parse(tmp, strlen(tmp), &c) != 0 || c.family != 4) {
            return -EPROTO;
        }
        return cmh_ec2_cidrs_push(p->used, &c);
    }
    case F_TAG_KEY:
        rc = copy_text(x->tag.key, sizeof x->tag.key, x->buf, x->blen);
        return rc != 0 || x->tag.key[0] == '\0' ? -EPROTO : 0;
    case F_TAG_VALUE:
        /* A value is kept as EC2 stored it (an empty one is a value too). */
        if (x->blen >= sizeof x->tag.value)
            return -EPROTO;
        memcpy(x->tag.value, x->buf, x->blen);
        x->tag.value[x->blen] = '\0';
        return memchr(x->tag.value, '\0', x->blen) != NULL ? -EPROTO : 0;
    case F_CODE:
        rc = copy_text(p->error_code, sizeof p->error_code, x->buf, x->blen);
        if (rc != 0 || p->error_code[0] == '\0')
            return -EPROTO;
        for (const char *c = p->error_code; *c; c++)
            if (!(isalnum((unsigned char)*c) || *c == '.' || *c == '_' || *c == '-' || *c == ':'))
                return -EPROTO;
        x->seen_top |= 1u << F_CODE;
        return 0;
    case F_MESSAGE:
        /* A long message is cut, not refused: it is only shown to a person. */
        if (copy_text(p->error_message, sizeof p->error_message, x->buf,
                      x->blen < sizeof p->error_message ? x->blen : sizeof p->error_message - 1) !=
            0)
            return -EPROTO;
        return 0;
    default:
        return 0;
    }
}

static void XMLCALL x_end(void *ud, const XML_Char *name)
{
    struct cmh_ec2_xml *x = ud;
    (void)name;
    int d = --x->depth;
    if (x->skip_depth > 0) {
        if (d + 1 == x->skip_depth)
            x->skip_depth = 0;
        return;
    }
    if (d >= MAX_DEPTH)
        return;
    enum xel me = x->path[d];
    if (me == X_FIELD) {
        enum xfield f = x->field;
        x->field = F_NONE;
        int rc = field_end(x, f);
        if (rc != 0)
            x_fail(x, rc);
        return;
    }
    if (me == X_SUBNET) {
        const unsigned need = (1u << F_SUBNET_ID) | (1u << F_AZ) | (1u << F_AVAILABLE);
        if ((x->seen & need) != need) {
            x_fail(x, -EPROTO);
            return;
        }
        if (x->page->subnets->n >= CMH_EC2_MAX_SUBNETS) {
            x_fail(x, -E2BIG);
            return;
        }
        if (cmh_subnet_list_push(x->page->subnets, &x->cur) != 0)
            x_fail(x, -ENOMEM);
    } else if (me == X_TAG) {
        if (!(x->seen & (1u << F_TAG_KEY))) {
            x_fail(x, -EPROTO);
            return;
        }
        if (x->page->ntags >= CMH_EC2_MAX_TAGS) {
            x_fail(x, -E2BIG);
            return;
        }
        x->page->tags[x->page->ntags++] = x->tag;
    } else if (me == X_ERROR && !(x->seen_top & (1u << F_CODE))) {
        x_fail(x, -EPROTO); /* an Error without a Code */
    }
}

static void XMLCALL x_text(void *ud, const XML_Char *s, int len)
{
    struct cmh_ec2_xml *x = ud;
    if (x->field == F_NONE || x->skip_depth > 0 || len <= 0)
        return;
    if ((size_t)len > sizeof x->buf - x->blen) {
        if (x->field != F_MESSAGE) {
            x_fail(x, -E2BIG);
            return;
        }
        len = (int)(sizeof x->buf - x->blen); /* keep what fits of a message */
    }
    memcpy(x->buf + x->blen, s, (size_t)len);
    x->blen += (size_t)len;
}

static void XMLCALL x_doctype(void *ud, const XML_Char *name, const XML_Char *sysid,
                              const XML_Char *pubid, int has_internal_subset)
{
    (void)name;
    (void)sysid;
    (void)pubid;
    (void)has_internal_subset;
    x_fail(ud, -EPROTO); /* no DTDs, so no entity expansion of any kind */
}

int cmh_ec2_xml_new(struct cmh_ec2_xml **out, struct cmh_ec2_page *page)
{
    static const XML_Memory_Handling_Suite mem = {cmh_malloc, cmh_realloc, cmh_free};
    *out = NULL;
    page->next_token[0] = '\0';
    page->error_code[0] = '\0';
    page->error_message[0] = '\0';
    page->request_id[0] = '\0';
    page->ntags = 0;
    page->tags_answer = 0;
    struct cmh_ec2_xml *x = cmh_calloc(1, sizeof *x);
    if (x == NULL)
        return -ENOMEM;
    x->page = page;
    x->field = F_NONE;
    x->root = X_SKIP;
    x->xp = XML_ParserCreate_MM(NULL, &mem, NULL);
    if (x->xp == NULL) {
        cmh_free(x);
        return -ENOMEM;
    }
    XML_SetUserData(x->xp, x);
    XML_SetElementHandler(x->xp, x_start, x_end);
    XML_SetCharacterDataHandler(x->xp, x_text);
    XML_SetStartDoctypeDeclHandler(x->xp, x_doctype);
    *out = x;
    return 0;
}

int cmh_ec2_xml_feed(struct cmh_ec2_xml *x, const char *data, size_t len, int final)
{
    if (x->error != 0)
        return x->error;
    if (x->done)
        return -EPROTO;
    while (len > 0 || final) {
        /* expat takes an int length. */
        size_t piece = len > (1u << 30) ? (1u << 30) : len;
        int last = final && piece == len;
        if (XML_Parse(x->xp, data, (int)piece, last) != XML_STATUS_OK) {
            if (x->error == 0)
                x->error = XML_GetErrorCode(x->xp) == XML_ERROR_NO_MEMORY ? -ENOMEM : -EPROTO;
            return x->error;
        }
        data += piece;
        len -= piece;
        if (last) {
            x->done = 1;
            if (x->root == X_SKIP || (x->root == X_ERRROOT && x->page->error_code[0] == '\0'))
                x->error = -EPROTO;
            x->page->tags_answer = x->root == X_TRESPONSE;
            return x->error;
        }
    }
    return 0;
}

void cmh_ec2_xml_free(struct cmh_ec2_xml *x)
{
    if (x == NULL)
        return;
    XML_ParserFree(x->xp);
    cmh_free(x);
}

int cmh_ec2_parse(const char *buf, size_t len, struct cmh_ec2_page *page)
{
    struct cmh_ec2_xml *x;
    int rc = cmh_ec2_xml_new(&x, page);
    if (rc != 0)
        return rc;
    rc = cmh_ec2_xml_feed(x, buf, len, 1);
    cmh_ec2_xml_free(x);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * The client */

#define MAX_PAGES   1000
#define MAX_HEADERS 10

struct cmh_ec2 {
    uv_loop_t *loop;
    struct cmh_curl_uv *curl;
    struct cmh_log *log;
    struct cmh_aws_provider *aws;
    struct cmh_ec2_opts o;
    char *region;
    char *override;
    char *endpoint, *host, *path;
    int allow_http;
    uint64_t rng;
    uv_timer_t timer;
    int freeing;
    int busy;
    int resolving;
    /* The call in progress: DescribeSubnets, or DescribeTags when tags_cb is set. */
    cmh_ec2_tags_cb tags_cb;
    char *tag_resource; /* DescribeTags: the resource-id filter */
    char **tag_keys;    /* and the key filter's values */
    size_t ntag_keys;
    char **ids; /* still to describe: an id EC2 does not know moves to missing */
    size_t nids;
    char **missing; /* room for every id of the call */
    size_t nmissing;
    int single;      /* one id per request: EC2 said an id is unknown but not which */
    size_t single_i; /* the id of ids being described in that mode */
    unsigned attempt;
    unsigned pages;
    size_t kept;   /* subnets of the pages answered so far: a failed attempt's are dropped */
    int refreshed; /* credentials were refreshed after ExpiredToken in this call */
    int64_t retry_after_ms;
    char token[CMH_EC2_TOKEN_MAX];
    struct cmh_subnet_list list;
    struct cmh_ec2_page page;
    struct cmh_ec2_xml *xml;
    int xml_rc;
    char *form;
    char *hdr[MAX_HEADERS];
    size_t nhdr;
    struct cmh_curl_uv_req req;
    int in_flight;
    cmh_ec2_done_cb cb;
    void *arg;
    /* A usage call: DescribeNetworkInterfaces of one subnet, then its GetSubnetCidrReservations. */
    const char *action; /* the current request's */
    char usage_id[CMH_SUBNET_ID_MAX];
    struct cmh_ec2_cidrs used;
    size_t used_kept;
    cmh_ec2_usage_cb ucb;
    uint64_t requests;
    char why[768];
};

static int64_t wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec;
}

int cmh_ec2_endpoint(const char *region, const char *override, char *buf, size_t len)
{
    return cmh_aws_endpoint_url("ec2", region, override, buf, len);
}

static void free_request(struct cmh_ec2 *e)
{
    for (size_t i = 0; i < e->nhdr; i++)
        cmh_free_secret(e->hdr[i]); /* Authorization, X-Amz-Security-Token */
    e->nhdr = 0;
    cmh_free(e->form);
    e->form = NULL;
    cmh_ec2_xml_free(e->xml);
    e->xml = NULL;
}

/* The actions this client calls, spelled so the manifest tests can read them (IAM policy). */
#define EC2_ACTION(name) name

static void free_call(struct cmh_ec2 *e)
{
    free_request(e);
    cmh_free(e->tag_resource);
    e->tag_resource = NULL;
    for (size_t i = 0; i < e->ntag_keys; i++)
        cmh_free(e->tag_keys[i]);
    cmh_free(e->tag_keys);
    e->tag_keys = NULL;
    e->ntag_keys = 0;
    for (size_t i = 0; i < e->nids; i++)
        cmh_free(e->ids[i]);
    cmh_free(e->ids);
    e->ids = NULL;
    e->nids = 0;
    for (size_t i = 0; i < e->nmissing; i++)
        cmh_free(e->missing[i]);
    cmh_free(e->missing);
    e->missing = NULL;
    e->nmissing = 0;
    e->single = 0;
    e->single_i = 0;
    cmh_subnet_list_free(&e->list);
    cmh_ec2_cidrs_free(&e->used);
    e->used_kept = 0;
    e->ucb = NULL;
}

__attribute__((format(printf, 3, 4))) static void finish(struct cmh_ec2 *e, int rc, const char *fmt,
                                                         ...)
{
    e->why[0] = '\0';
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->why, sizeof e->why, fmt, ap);
        va_end(ap);
    }
    e->busy = 0;
    free_request(e);
    if (e->ucb != NULL) {
        /* The call is over before the callback runs, so it may start the next one. */
        cmh_ec2_usage_cb ucb = e->ucb;
        void *arg = e->arg;
        struct cmh_ec2_cidrs used = e->used;
        memset(&e->used, 0, sizeof e->used);
        free_call(e);
        ucb(e, rc, &used, rc == 0 ? NULL : e->why, arg);
        cmh_ec2_cidrs_free(&used);
        return;
    }
    if (e->tags_cb != NULL) {
        cmh_ec2_tags_cb tcb = e->tags_cb;
        free_call(e);
        e->tags_cb = NULL;
        tcb(e, rc, e->page.tags, rc == 0 ? e->page.ntags : 0, rc == 0 ? NULL : e->why, e->arg);
        return;
    }
    if (rc == 0)
        cmh_subnet_list_sort(&e->list);
    cmh_ec2_done_cb cb = e->cb;
    e->cb = NULL;
    cb(e, rc, &e->list, rc == 0 ? NULL : e->why, e->arg);
    free_call(e);
}

static void on_timer(uv_timer_t *t);

static void later(struct cmh_ec2 *e, uint64_t ms)
{
    uv_timer_start(&e->timer, on_timer, ms, 0);
}

/* A failed attempt of the current page: again after a full-jitter wait, or the end of the call. */
static void retry(struct cmh_ec2 *e, const char *what)
{
    e->attempt++;
    if (e->attempt >= e->o.max_attempts) {
        finish(e, -EAGAIN, "EC2 %s failed %u times, last: %s", e->action, e->attempt, what);
        return;
    }
    uint64_t delay =
        cmh_backoff_full_jitter(&e->rng, e->attempt - 1, e->o.backoff_base_ms, e->o.backoff_cap_ms);
    if (e->retry_after_ms > 0 && (uint64_t)e->retry_after_ms > delay)
        delay = (uint64_t)e->retry_after_ms > e->o.backoff_cap_ms ? e->o.backoff_cap_ms
                                                                  : (uint64_t)e->retry_after_ms;
    CMH_LOG(e->log, CMH_LOG_DEBUG, "ec2 retry", CMH_STR("reason", what),
            CMH_UINT("attempt", e->attempt), CMH_UINT("delay_ms", delay));
    later(e, delay);
}

static int add_header(struct cmh_ec2 *e, const char *name, const char *value)
{
    return cmh_aws_header_add(e->hdr, &e->nhdr, MAX_HEADERS, name, value);
}

/* Appends "&name=value" (value encoded) to a growing form. */
static int form_add(char **form, size_t *len, size_t *cap, const char *name, const char *value)
{
    size_t need = 2 + strlen(name) + 3 * strlen(value) + 1;
    if (*len + need > *cap) {
        size_t ncap = (*cap ? *cap * 2 : 256) + need;
        char *f = cmh_realloc(*form, ncap);
        if (f == NULL)
            return -ENOMEM;
        *form = f;
        *cap = ncap;
    }
    char *p = *form + *len;
    size_t room = *cap - *len;
    int n = snprintf(p, room, "%s%s=", *len ? "&" : "", name);
    *len += (size_t)n;
    *len += cmh_pct_encode(*form + *len, *cap - *len, value, strlen(value), 0);
    return 0;
}

static int build_form(struct cmh_ec2 *e, size_t *out_len)
{
    size_t len = 0, cap = 0;
    char *form = NULL;
    int rc = form_add(&form, &len, &cap, "Action", e->action);
    if (rc == 0)
        rc = form_add(&form, &len, &cap, "Version", "2016-11-15");
    if (e->tags_cb != NULL) {
        /* The tags of one resource with these keys: at most one tag per key, one page. */
        if (rc == 0)
            rc = form_add(&form, &len, &cap, "Filter.1.Name", "resource-id");
        if (rc == 0)
            rc = form_add(&form, &len, &cap, "Filter.1.Value.1", e->tag_resource);
        if (rc == 0 && e->ntag_keys > 0)
            rc = form_add(&form, &len, &cap, "Filter.2.Name", "key");
        for (size_t i = 0; rc == 0 && i < e->ntag_keys; i++) {
            char name[48];
            snprintf(name, sizeof name, "Filter.2.Value.%zu", i + 1);
            rc = form_add(&form, &len, &cap, name, e->tag_keys[i]);
        }
    } else if (e->ucb != NULL) {
        /* The largest page both actions allow: fewest calls against the shared throttle. */
        int enis = strcmp(e->action, "DescribeNetworkInterfaces") == 0;
        if (rc == 0 && enis)
            rc = form_add(&form, &len, &cap, "Filter.1.Name", "subnet-id");
        if (rc == 0)
            rc = form_add(&form, &len, &cap, enis ? "Filter.1.Value.1" : "SubnetId", e->usage_id);
        if (rc == 0)
            rc = form_add(&form, &len, &cap, "MaxResults", "1000");
    } else if (e->single && e->single_i < e->nids) {
        rc = form_add(&form, &len, &cap, "SubnetId.1", e->ids[e->single_i]);
    } else {
        for (size_t i = 0; rc == 0 && i < e->nids; i++) {
            char name[32];
            snprintf(name, sizeof name, "SubnetId.%zu", i + 1);
            rc = form_add(&form, &len, &cap, name, e->ids[i]);
        }
    }
    /* MaxResults only when listing everything (EC2 refuses it together with ids). */
    if (rc == 0 && e->nids == 0 && e->ucb == NULL && e->tags_cb == NULL)
        rc = form_add(&form, &len, &cap, "MaxResults", "1000");
    if (rc == 0 && e->token[0] != '\0')
        rc = form_add(&form, &len, &cap, "NextToken", e->token);
    if (rc != 0) {
        cmh_free(form);
        return rc;
    }
    e->form = form;
    *out_len = len;
    return 0;
}

static int on_data(struct cmh_curl_uv_req *req, long status, const char *data, size_t len)
{
    struct cmh_ec2 *e = container_of(req, struct cmh_ec2, req);
    (void)status;
    /* The body streams into the parser; success and error documents alike. */
    if (e->xml_rc == 0)
        e->xml_rc = cmh_ec2_xml_feed(e->xml, data, len, 0);
    return 0;
}

static void on_done(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res);

static void send_page(struct cmh_ec2 *e, const struct cmh_sigv4_credentials *creds)
{
    struct cmh_sigv4_result sig;
    memset(&sig, 0, sizeof sig);
    free_request(e);
    e->list.n = e->kept;
    e->used.n = e->used_kept;
    e->page.action = e->action;
    e->page.used = &e->used;
    size_t form_len = 0;
    int rc = build_form(e, &form_len);
    if (rc == 0)
        rc = cmh_ec2_xml_new(&e->xml, &e->page);
    e->xml_rc = 0;
    const struct cmh_sigv4_kv headers[] = {
        {"Host", e->host},
        {"Content-Type", "application/x-www-form-urlencoded; charset=utf-8"},
    };
    if (rc == 0) {
        struct cmh_sigv4_request sreq = {
            .method = "POST",
            .path = e->path,
            .headers = headers,
            .nheaders = sizeof headers / sizeof headers[0],
            .payload = e->form,
            .payload_len = form_len,
            .region = e->region,
            .service = "ec2",
            .time_s = wall_s(),
            .creds = creds,
        };
        rc = cmh_sigv4_sign(&sreq, &sig);
    }
    for (size_t i = 0; rc == 0 && i < sizeof headers / sizeof headers[0]; i++)
        rc = add_header(e, headers[i].name, headers[i].value);
    for (size_t i = 0; rc == 0 && i < sig.nadd; i++)
        rc = add_header(e, sig.add[i].name, sig.add[i].value);
    cmh_sigv4_result_free(&sig);
    if (rc == 0) {
        memset(&e->req, 0, sizeof e->req);
        e->req.method = "POST";
        e->req.url = e->endpoint;
        e->req.headers = (const char *const *)e->hdr;
        e->req.nheaders = e->nhdr;
        e->req.body = e->form;
        e->req.body_len = form_len;
        e->req.allow_http = e->allow_http;
        e->req.on_data = on_data;
        e->req.timeout_ms = e->o.timeout_ms;
        rc = cmh_curl_uv_start(e->curl, &e->req, on_done);
    }
    if (rc != 0) {
        finish(e, rc, "EC2 request could not be built or started (error %d)", rc);
        return;
    }
    e->in_flight = 1;
    e->requests++;
}

static void on_creds(struct cmh_aws_provider *p, int rc, const struct cmh_aws_credentials *creds,
                     const char *why, void *arg)
{
    struct cmh_ec2 *e = arg;
    (void)p;
    if (e->freeing || !e->busy)
        return;
    if (rc != 0) {
        char what[512];
        snprintf(what, sizeof what, "no AWS credentials: %s", why ? why : "unknown");
        retry(e, what);
        return;
    }
    struct cmh_sigv4_credentials c = {creds->access_key_id, creds->secret_access_key,
                                      creds->session_token};
    send_page(e, &c);
}

static void get_creds(struct cmh_ec2 *e)
{
    int rc = cmh_aws_creds_get(e->aws, on_creds, e);
    if (rc != 0)
        finish(e, rc, "the credential chain refused the call (error %d)", rc);
}

static void on_resolved(struct cmh_aws_provider *p, int rc, const char *region,
                        const char *cluster_id, const char *why, void *arg)
{
    struct cmh_ec2 *e = arg;
    (void)p;
    (void)cluster_id;
    e->resolving = 0;
    if (e->freeing || !e->busy)
        return;
    if (rc != 0) {
        finish(e, rc, "no AWS region for EC2: %s; set AWS_REGION", why ? why : "unknown");
        return;
    }
    char url[512];
    int n = cmh_ec2_endpoint(region, e->override, url, sizeof url);
    e->region = cmh_strdup(region);
    e->endpoint = n >= 0 ? cmh_strdup(url) : NULL;
    if (n < 0 || e->region == NULL || e->endpoint == NULL) {
        finish(e, n < 0 ? n : -ENOMEM, "bad region '%s' for the EC2 endpoint", region);
        return;
    }
    rc = cmh_aws_endpoint_split(e->endpoint, &e->host, &e->path, &e->allow_http);
    if (rc != 0) {
        char shown[512];
        cmh_url_redact(e->endpoint, shown, sizeof shown);
        finish(e, rc, "EC2 endpoint %s refused (https://, or http:// to a loopback address)",
               shown);
        return;
    }
    CMH_LOG(e->log, CMH_LOG_INFO, "ec2 endpoint", CMH_STR("region", region),
            CMH_URL("endpoint", e->endpoint));
    get_creds(e);
}

static void on_timer(uv_timer_t *t)
{
    struct cmh_ec2 *e = container_of(t, struct cmh_ec2, timer);
    if (e->freeing || !e->busy)
        return;
    if (e->region == NULL) {
        if (e->resolving)
            return;
        e->resolving = 1;
        int rc = cmh_aws_resolve(e->aws, on_resolved, e);
        if (rc != 0) {
            e->resolving = 0;
            finish(e, rc, "cannot resolve the AWS region (error %d)", rc);
        }
        return;
    }
    get_creds(e);
}

static int code_is(const char *code, const char *const *list)
{
    for (; *list != NULL; list++)
        if (strcmp(code, *list) == 0)
            return 1;
    return 0;
}

/* 1 when msg names id as a whole word ("The subnet ID 'subnet-0a1b2c3d' does not exist"): a
 * character that cannot be part of an id on both sides, so a message cut short in the middle of
 * a longer id does not name its prefix. */
static int names_id(const char *msg, const char *id)
{
    size_t n = strlen(id);
    for (const char *p = strstr(msg, id); p != NULL; p = strstr(p + 1, id)) {
        unsigned char before = p > msg ? (unsigned char)p[-1] : 0;
        unsigned char after = (unsigned char)p[n];
        if (before != 0 && after != 0 && !isalnum(before) && before != '-' && !isalnum(after) &&
            after != '-')
            return 1;
    }
    return 0;
}

/* Moves ids[i] to the missing ones (their room was made when the call started). */
static void drop_id(struct cmh_ec2 *e, size_t i)
{
    e->missing[e->nmissing++] = e->ids[i];
    memmove(&e->ids[i], &e->ids[i + 1], (e->nids - i - 1) * sizeof e->ids[0]);
    e->nids--;
}

/* InvalidSubnetID.NotFound for a call with ids: one deleted subnet must not hide the others. The
 * ids the message names are left out and the rest asked again; when it names none of ours (the
 * wording changed), the ids are described one request each, so that only the unknown ones are
 * left out. Every pass drops at least one id, so a call makes at most nids more requests. */
static void not_found(struct cmh_ec2 *e, const char *code, const char *msg)
{
    size_t before = e->nids;
    if (e->single) {
        drop_id(e, e->single_i); /* single_i now names the next id */
    } else {
        for (size_t i = 0; i < e->nids;) {
            if (names_id(msg, e->ids[i]))
                drop_id(e, i);
            else
                i++;
        }
        if (e->nids == before) {
            CMH_LOG(e->log, CMH_LOG_WARN,
                    "EC2 says a subnet of SUBNET_IDS does not exist but not which; asking for each "
                    "id on its own",
                    CMH_STR("code", code), CMH_STR("message", msg), CMH_UINT("ids", e->nids));
            e->single = 1;
            e->single_i = 0;
        }
        e->kept = 0; /* start over: the dropped ids' subnets were never answered */
    }
    if (e->nids == 0) {
        finish(e, -ENOENT,
               "EC2 knows none of the %zu subnets of SUBNET_IDS (%s: %s); fix SUBNET_IDS",
               e->nmissing, code, msg);
        return;
    }
    if (e->single && e->single_i >= e->nids) {
        finish(e, 0, NULL);
        return;
    }
    e->attempt = 0;
    e->token[0] = '\0';
    later(e, 0);
}

static void on_done(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res)
{
    static const char *const throttled[] = {"RequestLimitExceeded",
                                            "Throttling",
                                            "ThrottlingException",
                                            "RequestThrottled",
                                            "SlowDown",
                                            "InternalError",
                                            "InternalFailure",
                                            "ServiceUnavailable",
                                            "Unavailable",
                                            NULL};
    static const char *const denied[] = {"UnauthorizedOperation", "AccessDenied",
                                         "AccessDeniedException", "Blocked",
                                         "OptInRequired",         NULL};
    static const char *const expired[] = {"ExpiredToken",          "RequestExpired",
                                          "AuthFailure",           "InvalidClientTokenId",
                                          "SignatureDoesNotMatch", NULL};
    struct cmh_ec2 *e = container_of(req, struct cmh_ec2, req);
    e->in_flight = 0;
    if (e->freeing || !e->busy)
        return;
    e->retry_after_ms = res->retry_after_ms;
    char what[768];
    if (res->error != CMH_CURL_OK) {
        snprintf(what, sizeof what, "%s: %s", cmh_curl_uv_error_name(res->error),
                 res->error_text ? res->error_text : "");
        retry(e, what);
        return;
    }
    if (e->xml_rc == 0)
        e->xml_rc = cmh_ec2_xml_feed(e->xml, NULL, 0, 1);
    const char *code = e->page.error_code, *msg = e->page.error_message;
    if (res->status >= 200 && res->status < 300) {
        if (e->xml_rc == 0 && code[0] == '\0' && e->page.tags_answer != (e->tags_cb != NULL))
            e->xml_rc = -EPROTO; /* the answer of another action */
        if (e->xml_rc != 0 || code[0] != '\0') {
            snprintf(what, sizeof what, "HTTP %ld with %s", res->status,
                     e->xml_rc == -E2BIG ? "more subnets than we keep" : "a malformed answer");
            if (e->xml_rc == -E2BIG)
                finish(e, -E2BIG, "EC2 answered %s (%d); set SUBNET_IDS", what,
                       CMH_EC2_MAX_SUBNETS);
            else
                retry(e, what);
            return;
        }
        e->attempt = 0;
        e->refreshed = 0;
        if (e->tags_cb != NULL) {
            finish(e, 0, NULL); /* filtered by resource and keys: everything is on one page */
            return;
        }
        e->kept = e->list.n;
        e->used_kept = e->used.n;
        if (e->page.next_token[0] == '\0' && e->ucb != NULL &&
            strcmp(e->action, "DescribeNetworkInterfaces") == 0) {
            e->action = EC2_ACTION("GetSubnetCidrReservations"); /* the interfaces are done */
            e->token[0] = '\0';
            e->pages = 0;
            later(e, 0);
            return;
        }
        if (e->page.next_token[0] == '\0') {
            if (e->single && ++e->single_i < e->nids) {
                e->token[0] = '\0';
                later(e, 0); /* the next id on its own */
                return;
            }
            finish(e, 0, NULL);
            return;
        }
        if (++e->pages >= MAX_PAGES) {
            finish(e, -E2BIG, "EC2 %s: more than %d pages", e->action, MAX_PAGES);
            return;
        }
        memcpy(e->token, e->page.next_token, sizeof e->token);
        later(e, 0);
        return;
    }
    if (code[0] == '\0') {
        snprintf(what, sizeof what, "HTTP %ld without an EC2 error document", res->status);
        if (res->status >= 500 || res->status == 429)
            retry(e, what);
        else
            finish(e, -EPROTO, "EC2 %s: %s", e->action, what);
        return;
    }
    snprintf(what, sizeof what, "HTTP %ld %s: %s", res->status, code, msg);
    if (code_is(code, throttled) || res->status >= 500) {
        retry(e, what);
    } else if (code_is(code, denied) && e->tags_cb != NULL) {
        finish(e, -EACCES,
               "EC2 DescribeTags denied (%s: %s): grant ec2:DescribeTags to this role, or set "
               "AWS_CLUSTER_ID",
               code, msg);
    } else if (code_is(code, denied)) {
        int usage = e->ucb != NULL;
        finish(e, -EACCES,
               "EC2 %s denied (%s: %s): grant ec2:%s to this role (manifests/iam/%s) or set "
               "%s=false",
               e->action, code, msg, e->action,
               usage ? "subnet-prefix-metrics-policy.json" : "subnet-metrics-policy.json",
               usage ? "SUBNET_PREFIX_METRICS" : "SUBNET_METRICS");
    } else if (code_is(code, expired) && !e->refreshed) {
        e->refreshed = 1;
        cmh_aws_creds_invalidate(e->aws);
        retry(e, what);
    } else if (strcmp(code, "InvalidSubnetID.NotFound") == 0 && e->nids > 0 && e->ucb == NULL) {
        not_found(e, code, msg);
    } else if (strncmp(code, "InvalidSubnetID", 15) == 0) {
        finish(e, -ENOENT, "EC2 refused a subnet id of SUBNET_IDS (%s: %s)", code, msg);
    } else {
        finish(e, -EPROTO, "EC2 %s refused: %s", e->action, what);
    }
}

int cmh_ec2_new(struct cmh_ec2 **out, uv_loop_t *loop, struct cmh_curl_uv *curl,
                const struct cmh_ec2_opts *opts, struct cmh_log *log)
{
    *out = NULL;
    struct cmh_ec2 *e = cmh_calloc(1, sizeof *e);
    if (e == NULL)
        return -ENOMEM;
    e->loop = loop;
    e->curl = curl;
    e->log = log;
    e->o = *opts;
    if (e->o.max_attempts == 0)
        e->o.max_attempts = 5;
    if (e->o.backoff_base_ms == 0)
        e->o.backoff_base_ms = 200;
    if (e->o.backoff_cap_ms == 0)
        e->o.backoff_cap_ms = 20000;
    if (e->o.timeout_ms == 0)
        e->o.timeout_ms = 10000;
    e->o.envp = NULL;
    e->o.region = NULL;
    e->rng = cmh_rng_seed(opts->seed);
    int rc = 0;
    const char *ov = cmh_aws_endpoint_override(opts->envp, "AWS_ENDPOINT_URL_EC2");
    if (ov != NULL) {
        e->override = cmh_strdup(ov);
        if (e->override == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        /* Check it now: a bad override is a configuration error. */
        char *host = NULL, *path = NULL;
        int http;
        rc = cmh_aws_endpoint_split(ov, &host, &path, &http);
        cmh_free(host);
        cmh_free(path);
        if (rc != 0) {
            CMH_LOG(log, CMH_LOG_ERROR,
                    "EC2 endpoint refused: https://, or http:// to a loopback address",
                    CMH_URL("endpoint", ov), CMH_STR("variable", "AWS_ENDPOINT_URL_EC2"));
            rc = -EINVAL;
            goto out;
        }
    }
    /* A cluster id is passed so that resolving learns only the region. */
    struct cmh_aws_creds_opts ao = {.envp = opts->envp,
                                    .region = opts->region,
                                    .cluster_id = "-",
                                    .imds_timeout_ms = opts->imds_timeout_ms};
    rc = cmh_aws_provider_new(&e->aws, loop, curl, &ao, log);
    if (rc != 0)
        goto out;
    rc = uv_timer_init(loop, &e->timer);
    if (rc != 0)
        goto out;
out:
    if (rc != 0) {
        if (e->aws != NULL)
            cmh_aws_provider_free(e->aws);
        cmh_free(e->override);
        cmh_free(e);
        return rc;
    }
    *out = e;
    return 0;
}

/* Starts a call whose callback and inputs are set: its first request comes from the loop, never
 * inside the call. */
static void begin(struct cmh_ec2 *e, const char *action, void *arg)
{
    e->page.subnets = &e->list;
    e->action = action;
    e->token[0] = '\0';
    e->attempt = 0;
    e->pages = 0;
    e->kept = 0;
    e->used_kept = 0;
    e->refreshed = 0;
    e->arg = arg;
    e->busy = 1;
    later(e, 0); /* never call back inside this call */
}

int cmh_ec2_describe_subnets(struct cmh_ec2 *e, const char *const *ids, size_t nids,
                             cmh_ec2_done_cb cb, void *arg)
{
    if (e->busy || e->freeing)
        return -EBUSY;
    free_call(e);
    if (nids > 0) {
        e->ids = cmh_calloc(nids, sizeof *e->ids);
        if (e->ids == NULL)
            return -ENOMEM;
        for (size_t i = 0; i < nids; i++) {
            e->ids[i] = cmh_strdup(ids[i]);
            if (e->ids[i] == NULL) {
                e->nids = i;
                free_call(e);
                return -ENOMEM;
            }
        }
        e->nids = nids;
        e->missing = cmh_calloc(nids, sizeof *e->missing);
        if (e->missing == NULL) {
            free_call(e);
            return -ENOMEM;
        }
    }
    e->cb = cb;
    e->tags_cb = NULL;
    begin(e, EC2_ACTION("DescribeSubnets"), arg);
    return 0;
}

int cmh_ec2_subnet_usage(struct cmh_ec2 *e, const char *subnet_id, cmh_ec2_usage_cb cb, void *arg)
{
    if (e->busy || e->freeing)
        return -EBUSY;
    if (strlen(subnet_id) >= sizeof e->usage_id)
        return -EINVAL;
    free_call(e);
    snprintf(e->usage_id, sizeof e->usage_id, "%s", subnet_id);
    e->ucb = cb;
    e->tags_cb = NULL;
    begin(e, EC2_ACTION("DescribeNetworkInterfaces"), arg);
    return 0;
}

int cmh_ec2_describe_tags(struct cmh_ec2 *e, const char *resource_id, const char *const *keys,
                          size_t nkeys, cmh_ec2_tags_cb cb, void *arg)
{
    if (e->busy || e->freeing)
        return -EBUSY;
    if (resource_id == NULL || resource_id[0] == '\0' || nkeys > CMH_EC2_MAX_TAGS)
        return -EINVAL;
    free_call(e);
    e->tag_resource = cmh_strdup(resource_id);
    e->tag_keys = nkeys > 0 ? cmh_calloc(nkeys, sizeof *e->tag_keys) : NULL;
    int rc = e->tag_resource == NULL || (nkeys > 0 && e->tag_keys == NULL) ? -ENOMEM : 0;
    for (size_t i = 0; rc == 0 && i < nkeys; i++) {
        e->tag_keys[i] = cmh_strdup(keys[i]);
        if (e->tag_keys[i] == NULL)
            rc = -ENOMEM;
        e->ntag_keys = i + 1;
    }
    if (rc != 0) {
        free_call(e);
        return rc;
    }
    e->tags_cb = cb;
    e->cb = NULL;
    begin(e, EC2_ACTION("DescribeTags"), arg);
    return 0;
}

void cmh_ec2_take(struct cmh_subnet_list *src, struct cmh_subnet_list *dst)
{
    cmh_subnet_list_free(dst);
    *dst = *src;
    memset(src, 0, sizeof *src);
}

uint64_t cmh_ec2_requests(const struct cmh_ec2 *e)
{
    return e->requests;
}

size_t cmh_ec2_missing(const struct cmh_ec2 *e, const char *const **ids)
{
    *ids = (const char *const *)e->missing;
    return e->nmissing;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct cmh_ec2 *e = container_of((uv_timer_t *)h, struct cmh_ec2, timer);
    cmh_free(e);
}

void cmh_ec2_free(struct cmh_ec2 *e)
{
    if (e == NULL)
        return;
    e->freeing = 1;
    if (e->in_flight)
        cmh_curl_uv_cancel(e->curl, &e->req);
    e->in_flight = 0;
    free_call(e);
    cmh_aws_provider_free(e->aws);
    cmh_free(e->override);
    cmh_free(e->region);
    cmh_free(e->endpoint);
    cmh_free(e->host);
    cmh_free(e->path);
    uv_close((uv_handle_t *)&e->timer, on_timer_closed);
}

/* ---------------------------------------------------------------------------------------------
 * The watch */

#define ENICONFIG_PATH "/apis/crd.k8s.amazonaws.com/v1alpha1/eniconfigs"

struct cmh_ec2_watch {
    uv_loop_t *loop;
    struct cmh_curl_uv *curl;
    struct cmh_log *log;
    const struct cmh_config *cfg;
    struct cmh_ec2 *ec2;
    uv_timer_t timer;
    char **ids; /* SUBNET_IDS */
    size_t nids;
    char *eni_url, *auth;
    const char *eni_headers[2];
    struct cmh_curl_uv_req eni_req;
    int eni_in_flight;
    char **eni_ids; /* subnets named by ENIConfigs, from the last good list */
    size_t neni;
    char **missing; /* ids of SUBNET_IDS EC2 did not know at the last good fetch */
    size_t nmissing;
    int fetching;
    struct cmh_subnet_list all;  /* the last good fetch */
    struct cmh_subnet_list view; /* what the last view call returned */
    uint64_t fetched_at;         /* uv_now of the last good fetch; 0 = none */
    struct forecast *fc;         /* one per subnet of all, same order */
    size_t nfc;
    /* SUBNET_PREFIX_METRICS: a walk over the view's subnets every SUBNET_PREFIX_INTERVAL, one
     * subnet at a time on a client of its own. */
    struct cmh_ec2 *pfx_ec2;
    struct prefixes *pfx;
    size_t npfx;
    char (*walk)[CMH_SUBNET_ID_MAX]; /* the walk's subnets */
    size_t nwalk, walk_i;
    int walking;
    uint64_t walk_started; /* uv_now; 0 = never */
    int pfx_on;            /* SUBNET_PREFIX_METRICS=true, or auto once a node reported prefixes */
    char pfx_denied[512];  /* auto: why a usage call was denied (the count is off); "" = not */
    unsigned long long pfx_ok, pfx_failed, pfx_refused;
    int stale_logged;
    cmh_ec2_fetch_cb on_fetch;
    void *arg;
};

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cmh_free(v[i]);
    cmh_free(v);
}

int cmh_ec2_parse_eniconfigs(const char *buf, size_t len, char ***ids, size_t *n)
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
        if (sub == NULL || sub[0] == '\0' || strlen(sub) >= CMH_SUBNET_ID_MAX)
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

/* The history of one subnet's free addresses, for its time to exhaustion. */
struct forecast {
    char id[CMH_SUBNET_ID_MAX];
    struct cmh_forecast_series fs;
};

static void free_forecasts(struct forecast *fc, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cmh_forecast_series_close(&fc[i].fs);
    cmh_free(fc);
}

/* A good fetch: each subnet's history (matched by id to the previous fetch, both sorted;
 * subnets gone are forgotten) gets the new count, and its forecast is set on the subnet. Out of
 * memory costs the forecasts (history starts again), not the fetch. */
static void forecast_update(struct cmh_ec2_watch *w, struct cmh_subnet_list *l)
{
    double now_s = (double)uv_now(w->loop) / 1000.0;
    double window_s = (double)w->cfg->forecast_window_ms / 1000.0;
    double interval_s = (double)w->cfg->subnet_interval_ms / 1000.0;
    struct forecast *fc = cmh_calloc(l->n ? l->n : 1, sizeof *fc);
    size_t j = 0;
    for (size_t i = 0; i < l->n; i++) {
        if (fc == NULL) {
            l->v[i].has_tte = 0;
            continue;
        }
        while (j < w->nfc && strcmp(w->fc[j].id, l->v[i].id) < 0)
            cmh_forecast_series_close(&w->fc[j++].fs);
        snprintf(fc[i].id, sizeof fc[i].id, "%s", l->v[i].id);
        if (j < w->nfc && strcmp(w->fc[j].id, l->v[i].id) == 0) {
            fc[i].fs = w->fc[j].fs;
            memset(&w->fc[j++].fs, 0, sizeof w->fc[0].fs);
        } else {
            cmh_forecast_series_init(&fc[i].fs, window_s, interval_s);
        }
        double tte = 0;
        l->v[i].has_tte =
            cmh_forecast_series_add(&fc[i].fs, now_s, (double)l->v[i].available) == 0 &&
            cmh_forecast_series_estimate(&fc[i].fs, &tte) == 0;
        l->v[i].tte_s = tte;
    }
    free_forecasts(w->fc, w->nfc);
    w->fc = fc;
    w->nfc = fc != NULL ? l->n : 0;
}

/* A subnet's free /28 blocks, from its last usage walk, and their forecast. */
struct prefixes {
    char id[CMH_SUBNET_ID_MAX];
    size_t free;
    uint64_t at; /* uv_now of the count */
    int has_tte;
    double tte_s;
    struct cmh_forecast_series fs;
};

static struct prefixes *prefixes_of(struct cmh_ec2_watch *w, const char *id, int add)
{
    for (size_t i = 0; i < w->npfx; i++)
        if (strcmp(w->pfx[i].id, id) == 0)
            return &w->pfx[i];
    if (!add)
        return NULL;
    struct prefixes *v = cmh_reallocarray(w->pfx, w->npfx + 1, sizeof *v);
    if (v == NULL)
        return NULL;
    w->pfx = v;
    struct prefixes *p = &v[w->npfx++];
    memset(p, 0, sizeof *p);
    snprintf(p->id, sizeof p->id, "%s", id);
    cmh_forecast_series_init(&p->fs, (double)w->cfg->forecast_window_ms / 1000.0,
                             (double)w->cfg->subnet_prefix_interval_ms / 1000.0);
    return p;
}

static void walk_next(struct cmh_ec2_watch *w);

static void on_usage(struct cmh_ec2 *e, int rc, const struct cmh_ec2_cidrs *used, const char *why,
                     void *arg)
{
    struct cmh_ec2_watch *w = arg;
    (void)e;
    const char *id = w->walk[w->walk_i];
    long s = cmh_subnet_list_find_id(&w->all, id);
    const struct cmh_cidr *c4 = NULL;
    for (unsigned k = 0; s >= 0 && k < w->all.v[s].ncidrs; k++)
        if (w->all.v[s].cidrs[k].family == 4)
            c4 = &w->all.v[s].cidrs[k];
    size_t nfree = 0;
    w->pfx_ok += rc == 0;
    w->pfx_failed += rc != 0 && rc != -EACCES;
    w->pfx_refused += rc == -EACCES;
    if (rc == -EACCES && w->cfg->subnet_prefix_metrics == CMH_PREFIX_METRICS_AUTO) {
        /* Prefix delegation was seen, the count was not asked for: said once, then left alone. */
        snprintf(w->pfx_denied, sizeof w->pfx_denied, "%s", why != NULL ? why : "denied");
        CMH_LOG(w->log, CMH_LOG_ERROR,
                "nodes use prefix delegation but counting free /28 blocks was denied: not counted "
                "until restart; the other subnet metrics go on",
                CMH_STR("subnet", id), CMH_STR("why", w->pfx_denied),
                CMH_STR("fix", "attach manifests/iam/subnet-prefix-metrics-policy.json "
                               "(ec2:DescribeNetworkInterfaces, ec2:GetSubnetCidrReservations) to "
                               "this role, or set SUBNET_PREFIX_METRICS=false"));
    } else if (rc != 0) {
        CMH_LOG(w->log, rc == -EACCES ? CMH_LOG_ERROR : CMH_LOG_WARN,
                "free /28 blocks not counted; the subnet's last count stays until it is stale",
                CMH_STR("subnet", id), CMH_STR("why", why));
    } else if (c4 != NULL && cmh_blocks28_free(c4, used->v, used->n, &nfree) == 0) {
        struct prefixes *p = prefixes_of(w, id, 1);
        if (p != NULL) {
            p->free = nfree;
            p->at = uv_now(w->loop);
            double tte = 0;
            p->has_tte =
                cmh_forecast_series_add(&p->fs, (double)p->at / 1000.0, (double)nfree) == 0 &&
                cmh_forecast_series_estimate(&p->fs, &tte) == 0;
            p->tte_s = tte;
        }
        CMH_LOG(w->log, CMH_LOG_DEBUG, "free /28 blocks counted", CMH_STR("subnet", id),
                CMH_UINT("free", nfree), CMH_UINT("used", used->n));
    }
    /* Denied for one subnet is denied for all: the walk ends here, and is logged once. */
    w->walk_i = rc == -EACCES ? w->nwalk : w->walk_i + 1;
    walk_next(w);
}

static void walk_next(struct cmh_ec2_watch *w)
{
    while (w->walk_i < w->nwalk) {
        if (cmh_ec2_subnet_usage(w->pfx_ec2, w->walk[w->walk_i], on_usage, w) == 0)
            return;
        w->walk_i++;
    }
    w->walking = 0;
}

/* Starts a walk over the subnets of the last view when SUBNET_PREFIX_INTERVAL has passed. */
static void maybe_walk(struct cmh_ec2_watch *w)
{
    uint64_t now = uv_now(w->loop);
    if (w->pfx_ec2 == NULL || !w->pfx_on || w->pfx_denied[0] != '\0' || w->walking ||
        w->view.n == 0 ||
        (w->walk_started != 0 && now - w->walk_started < w->cfg->subnet_prefix_interval_ms))
        return;
    char(*ids)[CMH_SUBNET_ID_MAX] = cmh_calloc(w->view.n, sizeof *ids);
    if (ids == NULL)
        return;
    for (size_t i = 0; i < w->view.n; i++)
        snprintf(ids[i], sizeof ids[i], "%s", w->view.v[i].id);
    cmh_free(w->walk);
    w->walk = ids;
    w->nwalk = w->view.n;
    w->walk_i = 0;
    w->walking = 1;
    w->walk_started = now ? now : 1;
    walk_next(w);
}

void cmh_ec2_watch_prefix_delegation(struct cmh_ec2_watch *w, bool seen)
{
    if (!w->pfx_on && seen && w->pfx_ec2 != NULL) {
        w->pfx_on = 1;
        CMH_LOG(w->log, CMH_LOG_INFO,
                "a node reports IPv4 prefixes (prefix delegation): counting free /28 blocks per "
                "subnet",
                CMH_UINT("interval_ms", w->cfg->subnet_prefix_interval_ms));
    }
    if (w->pfx_on && w->walk_started == 0)
        maybe_walk(w); /* the first walk as soon as the view holds subnets */
}

void cmh_ec2_watch_prefix_status(const struct cmh_ec2_watch *w, struct cmh_ec2_prefix_status *st)
{
    *st = (struct cmh_ec2_prefix_status){.on = w->pfx_on && w->pfx_denied[0] == '\0',
                                         .counts_ok = w->pfx_ok,
                                         .counts_failed = w->pfx_failed,
                                         .counts_denied = w->pfx_refused,
                                         .denied = w->pfx_denied[0] ? w->pfx_denied : NULL};
}

static void watch_fetch_done(struct cmh_ec2_watch *w, int rc, const char *why)
{
    w->fetching = 0;
    if (w->on_fetch != NULL)
        w->on_fetch(w->arg, rc, why);
}

static int named(char *const *v, size_t n, const char *id);

/* After a good fetch: the ids of SUBNET_IDS that EC2 did not know, each logged once when it
 * goes missing (and once when it is back), not at every fetch. */
static void note_missing(struct cmh_ec2_watch *w)
{
    const char *const *ids;
    size_t n = cmh_ec2_missing(w->ec2, &ids);
    char **keep = n > 0 ? cmh_calloc(n, sizeof *keep) : NULL;
    size_t k = 0;
    if (n > 0 && keep == NULL)
        return; /* out of memory: the previous list stays */
    for (size_t i = 0; i < n; i++) {
        if (!named(w->missing, w->nmissing, ids[i]))
            CMH_LOG(w->log, CMH_LOG_WARN,
                    "a subnet of SUBNET_IDS does not exist (InvalidSubnetID.NotFound); left out, "
                    "the others are fetched",
                    CMH_STR("subnet", ids[i]), CMH_STR("fix", "remove it from SUBNET_IDS"));
        if ((keep[k] = cmh_strdup(ids[i])) != NULL)
            k++;
    }
    for (size_t i = 0; i < w->nmissing; i++)
        if (!named(keep, k, w->missing[i]))
            CMH_LOG(w->log, CMH_LOG_INFO, "a subnet of SUBNET_IDS exists again",
                    CMH_STR("subnet", w->missing[i]));
    free_strv(w->missing, w->nmissing);
    w->missing = keep;
    w->nmissing = k;
}

size_t cmh_ec2_watch_missing(const struct cmh_ec2_watch *w)
{
    return w->nmissing;
}

static void on_subnets(struct cmh_ec2 *e, int rc, struct cmh_subnet_list *subnets, const char *why,
                       void *arg)
{
    struct cmh_ec2_watch *w = arg;
    (void)e;
    if (rc != 0) {
        CMH_LOG(w->log, rc == -EACCES ? CMH_LOG_ERROR : CMH_LOG_WARN,
                "subnets not fetched; the last good view stays until it is stale",
                CMH_STR("why", why), CMH_UINT("requests", cmh_ec2_requests(w->ec2)));
        watch_fetch_done(w, rc, why);
        return;
    }
    forecast_update(w, subnets);
    cmh_ec2_take(subnets, &w->all);
    w->fetched_at = uv_now(w->loop);
    if (w->fetched_at == 0)
        w->fetched_at = 1;
    w->stale_logged = 0;
    note_missing(w);
    CMH_LOG(w->log, CMH_LOG_INFO, "subnets fetched", CMH_UINT("subnets", w->all.n),
            CMH_UINT("eniconfig_subnets", w->neni), CMH_UINT("missing", w->nmissing),
            CMH_UINT("requests", cmh_ec2_requests(w->ec2)));
    watch_fetch_done(w, 0, NULL);
}

static void describe(struct cmh_ec2_watch *w)
{
    int rc = cmh_ec2_describe_subnets(w->ec2, (const char *const *)w->ids, w->nids, on_subnets, w);
    if (rc != 0) {
        CMH_LOG(w->log, CMH_LOG_WARN, "subnets fetch not started", CMH_INT("error", rc));
        watch_fetch_done(w, rc, "not started");
    }
}

static void on_eniconfigs(struct cmh_curl_uv_req *req, const struct cmh_curl_uv_response *res)
{
    struct cmh_ec2_watch *w = container_of(req, struct cmh_ec2_watch, eni_req);
    w->eni_in_flight = 0;
    if (res->error == CMH_CURL_ERR_CANCELLED)
        return;
    if (res->error == CMH_CURL_OK && res->status == 404) {
        /* The CRD is not installed: no custom networking, no ENIConfig subnets. */
        free_strv(w->eni_ids, w->neni);
        w->eni_ids = NULL;
        w->neni = 0;
    } else if (res->error == CMH_CURL_OK && res->status == 200) {
        char **ids = NULL;
        size_t n = 0;
        int rc = cmh_ec2_parse_eniconfigs(res->body, res->body_len, &ids, &n);
        if (rc == 0) {
            free_strv(w->eni_ids, w->neni);
            w->eni_ids = ids;
            w->neni = n;
        } else {
            free_strv(ids, n);
            CMH_LOG(w->log, CMH_LOG_WARN, "ENIConfig list not understood; previous one kept",
                    CMH_INT("error", rc));
        }
    } else if (res->error == CMH_CURL_OK && res->status == 403) {
        /* No RBAC to list ENIConfigs: custom-networking subnets would silently drop out. */
        CMH_LOG(w->log, CMH_LOG_WARN,
                "ENIConfig list forbidden (403): this service account may not list "
                "eniconfigs.crd.k8s.amazonaws.com; previous list kept",
                CMH_UINT("eniconfig_subnets", w->neni),
                CMH_STR("fix", "grant list on eniconfigs: the kustomize component "
                               "manifests/components/subnet-metrics, or Helm "
                               "subnetMetrics.enabled=true"));
    } else {
        CMH_LOG(w->log, CMH_LOG_WARN, "ENIConfig list failed; previous one kept",
                CMH_STR("error", cmh_curl_uv_error_name(res->error)),
                CMH_INT("status", res->status), CMH_UINT("eniconfig_subnets", w->neni));
    }
    describe(w);
}

static void list_eniconfigs(struct cmh_ec2_watch *w)
{
    char *tok = NULL, why[300];
    cmh_free(w->auth);
    w->auth = NULL;
    size_t nh = 0;
    w->eni_headers[nh++] = "Accept: application/json";
    if (w->cfg->k8s_token_file != NULL &&
        cmh_k8s_token_read(w->cfg->k8s_token_file, &tok, why, sizeof why) == 0) {
        w->auth = cmh_k8s_bearer_header(tok);
        cmh_free(tok);
        if (w->auth != NULL)
            w->eni_headers[nh++] = w->auth;
    }
    memset(&w->eni_req, 0, sizeof w->eni_req);
    w->eni_req.method = "GET";
    w->eni_req.url = w->eni_url;
    w->eni_req.allow_http = strncmp(w->eni_url, "http://", 7) == 0; /* a checked loopback API */
    w->eni_req.headers = w->eni_headers;
    w->eni_req.nheaders = nh;
    w->eni_req.ca_file = w->cfg->k8s_ca_file;
    w->eni_req.max_body = 8u << 20;
    if (cmh_curl_uv_start(w->curl, &w->eni_req, on_eniconfigs) != 0) {
        describe(w);
        return;
    }
    w->eni_in_flight = 1;
}

static void on_watch_timer(uv_timer_t *t)
{
    struct cmh_ec2_watch *w = container_of(t, struct cmh_ec2_watch, timer);
    maybe_walk(w);
    if (w->fetching)
        return; /* the previous fetch is still retrying */
    w->fetching = 1;
    if (w->nids == 0 && w->eni_url != NULL)
        list_eniconfigs(w);
    else
        describe(w);
}

static int split_ids(const char *s, char ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    for (const char *p = s;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char **v = cmh_reallocarray(*out, *n + 1, sizeof *v);
        if (v == NULL)
            return -ENOMEM;
        *out = v;
        if ((v[*n] = cmh_strndup(p, len)) == NULL)
            return -ENOMEM;
        (*n)++;
        if (comma == NULL)
            return 0;
        p = comma + 1;
    }
}

int cmh_ec2_watch_new(struct cmh_ec2_watch **out, uv_loop_t *loop, struct cmh_curl_uv *curl,
                      const struct cmh_config *cfg, char *const *envp, const char *k8s_server,
                      struct cmh_log *log, cmh_ec2_fetch_cb on_fetch, void *arg)
{
    *out = NULL;
    char err[160];
    if (cfg->subnet_ids != NULL && cfg->subnet_ids[0] != '\0' &&
        cmh_config_check_subnet_ids(cfg->subnet_ids, err, sizeof err) < 0) {
        CMH_LOG(log, CMH_LOG_ERROR, "bad SUBNET_IDS", CMH_STR("error", err));
        return -EINVAL;
    }
    if (cfg->forecast_window_ms < 2 * cfg->subnet_interval_ms)
        CMH_LOG(log, CMH_LOG_WARN,
                "FORECAST_WINDOW is shorter than two SUBNET_METRICS_INTERVALs: no time to "
                "exhaustion will be published",
                CMH_UINT("forecast_window_ms", cfg->forecast_window_ms),
                CMH_UINT("subnet_interval_ms", cfg->subnet_interval_ms),
                CMH_STR("fix", "raise FORECAST_WINDOW or lower SUBNET_METRICS_INTERVAL"));
    struct cmh_ec2_watch *w = cmh_calloc(1, sizeof *w);
    if (w == NULL)
        return -ENOMEM;
    w->loop = loop;
    w->curl = curl;
    w->log = log;
    w->cfg = cfg;
    w->on_fetch = on_fetch;
    w->arg = arg;
    int rc = 0;
    if (cfg->subnet_ids != NULL && cfg->subnet_ids[0] != '\0')
        rc = split_ids(cfg->subnet_ids, &w->ids, &w->nids);
    if (rc == 0 && k8s_server != NULL && w->nids == 0) {
        size_t l = strlen(k8s_server) + sizeof ENICONFIG_PATH;
        w->eni_url = cmh_malloc(l);
        if (w->eni_url == NULL)
            rc = -ENOMEM;
        else
            snprintf(w->eni_url, l, "%s%s", k8s_server, ENICONFIG_PATH);
    }
    struct cmh_ec2_opts eo = {.envp = envp,
                              .region = cfg->aws_region,
                              .timeout_ms = cfg->http_timeout_ms,
                              .backoff_base_ms = cfg->cw_backoff_base_ms,
                              .backoff_cap_ms = cfg->cw_backoff_cap_ms};
    if (rc == 0)
        rc = cmh_ec2_new(&w->ec2, loop, curl, &eo, log);
    if (rc == 0 && cfg->subnet_prefix_metrics != CMH_PREFIX_METRICS_OFF)
        rc = cmh_ec2_new(&w->pfx_ec2, loop, curl, &eo, log);
    w->pfx_on = cfg->subnet_prefix_metrics == CMH_PREFIX_METRICS_ON;
    if (rc == 0)
        rc = uv_timer_init(loop, &w->timer);
    if (rc == 0)
        rc = uv_timer_start(&w->timer, on_watch_timer, 0, cfg->subnet_interval_ms);
    if (rc != 0) {
        if (w->ec2 != NULL)
            cmh_ec2_free(w->ec2);
        if (w->pfx_ec2 != NULL)
            cmh_ec2_free(w->pfx_ec2);
        free_strv(w->ids, w->nids);
        cmh_free(w->eni_url);
        cmh_free(w);
        return rc;
    }
    CMH_LOG(log, CMH_LOG_INFO, "subnet metrics on",
            CMH_UINT("interval_ms", cfg->subnet_interval_ms), CMH_UINT("subnet_ids", w->nids),
            CMH_BOOL("eniconfigs", w->eni_url != NULL));
    *out = w;
    return 0;
}

static int named(char *const *v, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], id) == 0)
            return 1;
    return 0;
}

const struct cmh_subnet_list *cmh_ec2_watch_view(struct cmh_ec2_watch *w,
                                                 const struct cmh_subnets_node *nodes, size_t n)
{
    if (w->fetched_at == 0)
        return NULL;
    uint64_t age = uv_now(w->loop) - w->fetched_at;
    if (age > 3 * w->cfg->subnet_interval_ms) {
        if (!w->stale_logged)
            CMH_LOG(w->log, CMH_LOG_WARN,
                    "subnet view stale (no good fetch for 3 intervals); subnet datums not "
                    "published",
                    CMH_UINT("age_ms", age));
        w->stale_logged = 1;
        return NULL;
    }
    w->view.n = 0;
    unsigned char *keep = cmh_calloc(w->all.n ? w->all.n : 1, 1);
    if (keep == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        long s = cmh_subnets_find_ip(&w->all, nodes[i].ip);
        if (s >= 0)
            keep[s] = 1;
    }
    for (size_t i = 0; i < w->all.n; i++) {
        if ((w->nids > 0 || keep[i] || named(w->eni_ids, w->neni, w->all.v[i].id)) &&
            cmh_subnet_list_push(&w->view, &w->all.v[i]) != 0) {
            cmh_free(keep);
            return NULL;
        }
    }
    cmh_free(keep);
    /* A forecast counts down from its fetch: the moment of exhaustion stays where it was seen.
     */
    for (size_t i = 0; i < w->view.n; i++) {
        struct cmh_subnet *s = &w->view.v[i];
        if (s->has_tte && s->tte_s < CMH_FORECAST_CAP_S)
            s->tte_s = s->tte_s > (double)age / 1000.0 ? s->tte_s - (double)age / 1000.0 : 0;
        const struct prefixes *p = prefixes_of(w, s->id, 0);
        uint64_t page = p != NULL ? uv_now(w->loop) - p->at : 0;
        s->has_free_prefixes = p != NULL && page <= 3 * w->cfg->subnet_prefix_interval_ms;
        s->free_prefixes = p != NULL ? (int64_t)p->free : 0;
        s->has_prefix_tte = s->has_free_prefixes && p->has_tte;
        s->prefix_tte_s = s->has_prefix_tte ? p->tte_s : 0;
        if (s->has_prefix_tte && s->prefix_tte_s < CMH_FORECAST_CAP_S)
            s->prefix_tte_s = s->prefix_tte_s > (double)page / 1000.0
                                  ? s->prefix_tte_s - (double)page / 1000.0
                                  : 0;
    }
    return &w->view;
}

static void on_watch_timer_closed(uv_handle_t *h)
{
    struct cmh_ec2_watch *w = container_of((uv_timer_t *)h, struct cmh_ec2_watch, timer);
    cmh_free(w);
}

void cmh_ec2_watch_free(struct cmh_ec2_watch *w)
{
    if (w == NULL)
        return;
    w->on_fetch = NULL;
    if (w->eni_in_flight)
        cmh_curl_uv_cancel(w->curl, &w->eni_req);
    cmh_ec2_free(w->ec2);
    free_strv(w->ids, w->nids);
    free_strv(w->eni_ids, w->neni);
    free_strv(w->missing, w->nmissing);
    cmh_free(w->eni_url);
    cmh_free(w->auth);
    cmh_subnet_list_free(&w->all);
    cmh_subnet_list_free(&w->view);
    free_forecasts(w->fc, w->nfc);
    if (w->pfx_ec2 != NULL)
        cmh_ec2_free(w->pfx_ec2);
    for (size_t i = 0; i < w->npfx; i++)
        cmh_forecast_series_close(&w->pfx[i].fs);
    cmh_free(w->pfx);
    cmh_free(w->walk);
    uv_close((uv_handle_t *)&w->timer, on_watch_timer_closed);
}
