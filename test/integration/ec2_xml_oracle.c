/* Reads DescribeSubnets answers from stdin, one per record (a 4-byte big-endian length, then the
 * bytes), parses each with cmh_ec2_parse and prints one JSON line per record: {"rc":..,
 * "subnets":[{id, az, cidr, v6, available}], "next_token", "error_code", "error_message"}. The
 * other half of ec2_xml_botocore_diff.py. */
#include "cmh/aws/ec2_xml_int.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>

int main(void)
{
    unsigned char hdr[4];
    while (fread(hdr, 1, 4, stdin) == 4) {
        size_t len = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
        char *buf = malloc(len ? len : 1);
        if (buf == NULL || fread(buf, 1, len, stdin) != len)
            return 1;
        struct cmh_subnet_list l = {0};
        struct cmh_ec2_page p = {.subnets = &l};
        int rc = cmh_ec2_parse(buf, len, &p);
        json_t *o = json_object(), *subs = json_array();
        json_object_set_new(o, "rc", json_integer(rc));
        for (size_t i = 0; i < l.n; i++) {
            json_t *s = json_object(), *v6 = json_array();
            json_object_set_new(s, "id", json_string(l.v[i].id));
            json_object_set_new(s, "az", json_string(l.v[i].az));
            json_object_set_new(s, "cidr", json_string(l.v[i].cidr));
            json_object_set_new(s, "available", json_integer(l.v[i].available));
            for (unsigned k = 0; k < l.v[i].ncidrs; k++) {
                const struct cmh_cidr *c = &l.v[i].cidrs[k];
                if (c->family != 6)
                    continue;
                char a[INET6_ADDRSTRLEN], t[64];
                inet_ntop(AF_INET6, c->addr, a, sizeof a);
                snprintf(t, sizeof t, "%s/%u", a, c->prefix);
                json_array_append_new(v6, json_string(t));
            }
            json_object_set_new(s, "v6", v6);
            json_array_append_new(subs, s);
        }
        json_object_set_new(o, "subnets", subs);
        json_object_set_new(o, "next_token", json_string(p.next_token));
        json_object_set_new(o, "error_code", json_string(p.error_code));
        json_object_set_new(o, "error_message", json_string(p.error_message));
        char *text = json_dumps(o, JSON_COMPACT);
        if (text == NULL)
            return 1;
        printf("%s\n", text);
        free(text);
        json_decref(o);
        cmh_subnet_list_free(&l);
        free(buf);
    }
    return 0;
}
