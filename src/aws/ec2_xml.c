/* The streaming expat parser of EC2 Query answers (include/cmh/aws/ec2_xml.h): element paths are
 * tracked on a small stack, text is collected only for the fields kept, everything else is
 * skipped whole. No DTDs are accepted, so no entity is ever expanded. */
#include "cmh/aws/ec2_xml.h"
#include "cmh/aws/ec2_xml_int.h"

#include "cmh/core/alloc.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <expat.h>
#include <stdio.h>
#include <string.h>

int cmh_ec2_cidrs_push(struct cmh_ec2_cidrs *l, const struct cmh_cidr *c)
{
    if (l->n >= CMH_EC2_MAX_USED)
        return -E2BIG;
    struct cmh_cidr *v = cmh_grow(l->v, &l->cap, l->n + 1, sizeof *v, 64);
    if (v == NULL)
        return -ENOMEM;
    l->v = v;
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
