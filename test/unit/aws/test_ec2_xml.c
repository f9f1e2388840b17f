/* The DescribeSubnets parser on answers shaped as EC2 sends them (field names from botocore's EC2
 * model, service-2.json): every field kept, pieces split anywhere, error documents, refusals; and
 * the DescribeNetworkInterfaces and GetSubnetCidrReservations answers of the free /28 count. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cmh/core/alloc.h"
#include "cmh/aws/ec2_int.h"
#include "cmh/aws/ec2_xml_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Pretty-printed as EC2 does, with fields we ignore (tags hold nested <item>s too). */
static const char page1[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<DescribeSubnetsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\n"
    "    <requestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</requestId>\n"
    "    <subnetSet>\n"
    "        <item>\n"
    "            <subnetId>subnet-0a1b2c3d4e5f60718</subnetId>\n"
    "            <subnetArn>arn:aws:ec2:us-east-1:111122223333:subnet/subnet-0a1b2c3d4e5f60718"
    "</subnetArn>\n"
    "            <state>available</state>\n"
    "            <ownerId>111122223333</ownerId>\n"
    "            <vpcId>vpc-0123456789abcdef0</vpcId>\n"
    "            <cidrBlock>10.0.0.0/19</cidrBlock>\n"
    "            <ipv6CidrBlockAssociationSet>\n"
    "                <item>\n"
    "                    <ipv6CidrBlock>2600:1f18:abcd:ef00::/64</ipv6CidrBlock>\n"
    "                    <associationId>subnet-cidr-assoc-0123</associationId>\n"
    "                    <ipv6CidrBlockState><state>associated</state></ipv6CidrBlockState>\n"
    "                </item>\n"
    "            </ipv6CidrBlockAssociationSet>\n"
    "            <availableIpAddressCount>8123</availableIpAddressCount>\n"
    "            <availabilityZone>us-east-1a</availabilityZone>\n"
    "            <availabilityZoneId>use1-az1</availabilityZoneId>\n"
    "            <defaultForAz>false</defaultForAz>\n"
    "            <mapPublicIpOnLaunch>false</mapPublicIpOnLaunch>\n"
    "            <assignIpv6AddressOnCreation>false</assignIpv6AddressOnCreation>\n"
    "            <tagSet>\n"
    "                <item><key>Name</key><value>eks-private-a &amp; more</value></item>\n"
    "                <item><key>subnetId</key><value>not-this-one</value></item>\n"
    "            </tagSet>\n"
    "        </item>\n"
    "        <item>\n"
    "            <subnetId>subnet-11112222</subnetId>\n"
    "            <cidrBlock>10.0.32.0/19</cidrBlock>\n"
    "            <availableIpAddressCount>0</availableIpAddressCount>\n"
    "            <availabilityZone>us-east-1b</availabilityZone>\n"
    "        </item>\n"
    "    </subnetSet>\n"
    "    <nextToken>eyJ2IjoiMiIsImMiOiJ4In0=</nextToken>\n"
    "</DescribeSubnetsResponse>\n";

static const char error_doc[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized "
    "to perform this operation. User: arn:aws:sts::1:assumed-role/x is not authorized to perform: "
    "ec2:DescribeSubnets</Message></Error></Errors><RequestID>b2f0c3a1-0000</RequestID></Response>";

static void check_page1(const struct cmh_ec2_page *p, const struct cmh_subnet_list *l)
{
    assert_int_equal(l->n, 2);
    assert_string_equal(l->v[0].id, "subnet-0a1b2c3d4e5f60718");
    assert_string_equal(l->v[0].az, "us-east-1a");
    assert_string_equal(l->v[0].cidr, "10.0.0.0/19");
    assert_int_equal(l->v[0].available, 8123);
    assert_int_equal(l->v[0].ncidrs, 2);
    assert_int_equal(l->v[0].cidrs[0].family, 4);
    assert_int_equal(l->v[0].cidrs[0].prefix, 19);
    assert_int_equal(l->v[0].cidrs[1].family, 6);
    assert_int_equal(l->v[0].cidrs[1].prefix, 64);
    assert_string_equal(l->v[1].id, "subnet-11112222");
    assert_string_equal(l->v[1].az, "us-east-1b");
    assert_int_equal(l->v[1].available, 0);
    assert_int_equal(l->v[1].ncidrs, 1);
    assert_string_equal(p->next_token, "eyJ2IjoiMiIsImMiOiJ4In0=");
    assert_string_equal(p->request_id, "7a62c49f-347e-4fc4-9331-6e8eEXAMPLE");
    assert_string_equal(p->error_code, "");
}

static void ec2_xml_page_fields_and_next_token(void **state)
{
    (void)state;
    struct cmh_subnet_list l = {0};
    struct cmh_ec2_page p = {.subnets = &l};
    assert_int_equal(cmh_ec2_parse(page1, strlen(page1), &p), 0);
    check_page1(&p, &l);
    cmh_subnet_list_free(&l);
}

/* The client feeds the body as it streams in: every split point gives the same result. */
static void ec2_xml_same_result_split_at_every_byte(void **state)
{
    (void)state;
    size_t len = strlen(page1);
    for (size_t cut = 0; cut <= len; cut++) {
        struct cmh_subnet_list l = {0};
        struct cmh_ec2_page p = {.subnets = &l};
        struct cmh_ec2_xml *x;
        assert_int_equal(cmh_ec2_xml_new(&x, &p), 0);
        assert_int_equal(cmh_ec2_xml_feed(x, page1, cut, 0), 0);
        assert_int_equal(cmh_ec2_xml_feed(x, page1 + cut, len - cut, 0), 0);
        assert_int_equal(cmh_ec2_xml_feed(x, NULL, 0, 1), 0);
        cmh_ec2_xml_free(x);
        check_page1(&p, &l);
        cmh_subnet_list_free(&l);
    }
}

static void ec2_xml_error_document_code_and_message(void **state)
{
    (void)state;
    struct cmh_subnet_list l = {0};
    struct cmh_ec2_page p = {.subnets = &l};
    assert_int_equal(cmh_ec2_parse(error_doc, strlen(error_doc), &p), 0);
    assert_string_equal(p.error_code, "UnauthorizedOperation");
    assert_non_null(strstr(p.error_message, "ec2:DescribeSubnets"));
    assert_string_equal(p.request_id, "b2f0c3a1-0000");
    assert_int_equal(l.n, 0);
    /* The Query-protocol shape (ErrorResponse/Error) is read too. */
    const char *q = "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>"
                    "<Message>Rate exceeded</Message></Error><RequestId>r</RequestId>"
                    "</ErrorResponse>";
    assert_int_equal(cmh_ec2_parse(q, strlen(q), &p), 0);
    assert_string_equal(p.error_code, "Throttling");
    assert_string_equal(p.error_message, "Rate exceeded");
}

static void ec2_xml_last_page_has_no_token(void **state)
{
    (void)state;
    const char *doc = "<DescribeSubnetsResponse><requestId>r</requestId><subnetSet/>"
                      "</DescribeSubnetsResponse>";
    struct cmh_subnet_list l = {0};
    struct cmh_ec2_page p = {.subnets = &l};
    snprintf(p.next_token, sizeof p.next_token, "stale"); /* cleared by the parser */
    assert_int_equal(cmh_ec2_parse(doc, strlen(doc), &p), 0);
    assert_string_equal(p.next_token, "");
    assert_int_equal(l.n, 0);
}

static void ec2_xml_refuses_what_is_not_an_answer(void **state)
{
    (void)state;
#define ITEM(x)                                                                                    \
    "<DescribeSubnetsResponse><subnetSet><item>" x "</item></subnetSet></DescribeSubnetsResponse>"
    static const struct {
        const char *doc;
        int rc;
    } bad[] = {
        {"", -EPROTO},
        {"<html><body>502 Bad Gateway</body></html>", -EPROTO},
        {"<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY a \"b\">]><DescribeSubnetsResponse/>",
         -EPROTO},
        {"<DescribeSubnetsResponse><subnetSet><item><subnetId>subnet-1</subnetId>", -EPROTO},
        {ITEM("<availabilityZone>a</availabilityZone><availableIpAddressCount>1"
              "</availableIpAddressCount>"),
         -EPROTO}, /* no subnetId */
        {ITEM("<subnetId>s</subnetId><availableIpAddressCount>1</availableIpAddressCount>"),
         -EPROTO}, /* no AZ */
        {ITEM("<subnetId>s</subnetId><availabilityZone>a</availabilityZone>"), -EPROTO},
        {ITEM("<subnetId>s</subnetId><availabilityZone>a</availabilityZone>"
              "<availableIpAddressCount>-1</availableIpAddressCount>"),
         -EPROTO},
        {ITEM("<subnetId>s</subnetId><availabilityZone>a</availabilityZone>"
              "<availableIpAddressCount>12x</availableIpAddressCount>"),
         -EPROTO},
        {ITEM("<subnetId>s</subnetId><subnetId>t</subnetId><availabilityZone>a</availabilityZone>"
              "<availableIpAddressCount>1</availableIpAddressCount>"),
         -EPROTO},
        {ITEM("<subnetId>s</subnetId><availabilityZone>a</availabilityZone>"
              "<availableIpAddressCount>1</availableIpAddressCount>"
              "<cidrBlock>10.0.0.1/24</cidrBlock>"),
         -EPROTO}, /* host bits set */
        {ITEM("<subnetId>s</subnetId><availabilityZone>a</availabilityZone>"
              "<availableIpAddressCount>1</availableIpAddressCount>"
              "<cidrBlock>2600::/64</cidrBlock>"),
         -EPROTO}, /* IPv6 in the IPv4 field */
        {ITEM("<subnetId><b>s</b></subnetId>"), -EPROTO},
        {"<Response><Errors><Error><Message>m</Message></Error></Errors></Response>", -EPROTO},
        {"<Response><Errors><Error><Code>bad code</Code></Error></Errors></Response>", -EPROTO},
    };
#undef ITEM
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct cmh_subnet_list l = {0};
        struct cmh_ec2_page p = {.subnets = &l};
        int rc = cmh_ec2_parse(bad[i].doc, strlen(bad[i].doc), &p);
        if (rc != bad[i].rc)
            fail_msg("case %zu: rc %d, expected %d", i, rc, bad[i].rc);
        cmh_subnet_list_free(&l);
    }
}

static void ec2_xml_over_long_token_is_refused(void **state)
{
    (void)state;
    static char doc[CMH_EC2_TOKEN_MAX * 2];
    int n = snprintf(doc, sizeof doc, "<DescribeSubnetsResponse><nextToken>");
    memset(doc + n, 'A', CMH_EC2_TOKEN_MAX);
    snprintf(doc + n + CMH_EC2_TOKEN_MAX, sizeof doc - (size_t)n - CMH_EC2_TOKEN_MAX,
             "</nextToken></DescribeSubnetsResponse>");
    struct cmh_subnet_list l = {0};
    struct cmh_ec2_page p = {.subnets = &l};
    assert_int_equal(cmh_ec2_parse(doc, strlen(doc), &p), -E2BIG);
}

static void ec2_endpoint_regional_and_override(void **state)
{
    (void)state;
    char buf[128];
    assert_true(cmh_ec2_endpoint("eu-west-1", NULL, buf, sizeof buf) > 0);
    assert_string_equal(buf, "https://ec2.eu-west-1.amazonaws.com");
    assert_true(cmh_ec2_endpoint("cn-north-1", "", buf, sizeof buf) > 0);
    assert_string_equal(buf, "https://ec2.cn-north-1.amazonaws.com.cn");
    assert_true(cmh_ec2_endpoint("x", "http://127.0.0.1:1234", buf, sizeof buf) > 0);
    assert_string_equal(buf, "http://127.0.0.1:1234");
    assert_int_equal(cmh_ec2_endpoint("EU/1", NULL, buf, sizeof buf), -EINVAL);
    assert_int_equal(cmh_ec2_endpoint("eu-west-1", NULL, buf, 8), -ENOSPC);
}

/* DescribeNetworkInterfaces and GetSubnetCidrReservations answers (field names from botocore's
 * EC2 model): every interface address and prefix, every reservation CIDR, split at every byte;
 * an answer to another action, a bad address or an IPv6 prefix where IPv4 is meant are refused. */
static const char enis_answer[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<DescribeNetworkInterfacesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\n"
    " <requestId>r-1</requestId>\n"
    " <networkInterfaceSet>\n"
    "  <item><networkInterfaceId>eni-1</networkInterfaceId><subnetId>subnet-0a1b2c3d</subnetId>\n"
    "   <privateIpAddress>10.0.0.10</privateIpAddress>\n"
    "   <association><publicIp>203.0.113.9</publicIp></association>\n"
    "   <privateIpAddressesSet>\n"
    "    <item><privateIpAddress>10.0.0.10</privateIpAddress><primary>true</primary></item>\n"
    "    <item><privateIpAddress>10.0.0.77</privateIpAddress><primary>false</primary></item>\n"
    "   </privateIpAddressesSet>\n"
    "   <ipv4PrefixSet><item><ipv4Prefix>10.0.1.16/28</ipv4Prefix></item>"
    "<item><ipv4Prefix>10.0.1.32/28</ipv4Prefix></item></ipv4PrefixSet>\n"
    "   <ipv6PrefixSet><item><ipv6Prefix>2600:1f18::/80</ipv6Prefix></item></ipv6PrefixSet>\n"
    "   <tagSet><item><key>k</key><value>10.9.9.9</value></item></tagSet>\n"
    "  </item>\n"
    "  <item><networkInterfaceId>eni-2</networkInterfaceId>\n"
    "   <privateIpAddressesSet><item><privateIpAddress>10.0.2.5</privateIpAddress></item>"
    "</privateIpAddressesSet>\n"
    "  </item>\n"
    " </networkInterfaceSet>\n"
    " <nextToken>tok2</nextToken>\n"
    "</DescribeNetworkInterfacesResponse>\n";

static const char reservations_answer[] =
    "<GetSubnetCidrReservationsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">"
    "<requestId>r-2</requestId><subnetIpv4CidrReservationSet>"
    "<item><subnetCidrReservationId>scr-1</subnetCidrReservationId><cidr>10.0.3.0/25</cidr>"
    "<reservationType>prefix</reservationType></item>"
    "<item><cidr>10.0.4.8/29</cidr></item></subnetIpv4CidrReservationSet>"
    "<subnetIpv6CidrReservationSet><item><cidr>2600:1f18::/64</cidr></item>"
    "</subnetIpv6CidrReservationSet></GetSubnetCidrReservationsResponse>";

static int parse_usage(const char *action, const char *doc, size_t len, size_t split,
                       struct cmh_ec2_cidrs *used, struct cmh_ec2_page *page)
{
    struct cmh_subnet_list l = {0};
    memset(page, 0, sizeof *page);
    page->subnets = &l;
    page->action = action;
    page->used = used;
    struct cmh_ec2_xml *x;
    int rc = cmh_ec2_xml_new(&x, page);
    if (rc == 0 && split > 0 && split < len)
        rc = cmh_ec2_xml_feed(x, doc, split, 0);
    if (rc == 0)
        rc = split > 0 && split < len ? cmh_ec2_xml_feed(x, doc + split, len - split, 1)
                                      : cmh_ec2_xml_feed(x, doc, len, 1);
    cmh_ec2_xml_free(x);
    assert_int_equal(l.n, 0);
    cmh_subnet_list_free(&l);
    return rc;
}

static void ec2_xml_interfaces_and_reservations_answers(void **state)
{
    (void)state;
    static const char *const want_enis[] = {"10.0.0.10/32", "10.0.0.77/32", "10.0.1.16/28",
                                            "10.0.1.32/28", "10.0.2.5/32"};
    struct cmh_ec2_page page;
    for (size_t split = 0; split <= sizeof enis_answer - 1; split++) {
        struct cmh_ec2_cidrs used = {0};
        assert_int_equal(parse_usage("DescribeNetworkInterfaces", enis_answer,
                                     sizeof enis_answer - 1, split, &used, &page),
                         0);
        assert_int_equal(used.n, 5);
        for (size_t i = 0; i < used.n; i++) {
            struct cmh_cidr want;
            assert_int_equal(cmh_cidr_parse(want_enis[i], strlen(want_enis[i]), &want), 0);
            assert_int_equal(used.v[i].family, 4);
            assert_int_equal(used.v[i].prefix, want.prefix);
            assert_memory_equal(used.v[i].addr, want.addr, 4);
        }
        assert_string_equal(page.next_token, "tok2");
        cmh_ec2_cidrs_free(&used);
    }
    struct cmh_ec2_cidrs used = {0};
    assert_int_equal(parse_usage("GetSubnetCidrReservations", reservations_answer,
                                 sizeof reservations_answer - 1, 0, &used, &page),
                     0);
    assert_int_equal(used.n, 2);
    assert_int_equal(used.v[0].prefix, 25);
    assert_int_equal(used.v[1].prefix, 29);
    assert_string_equal(page.next_token, "");
    cmh_ec2_cidrs_free(&used);
    /* Refused: the wrong action's answer (it is not an empty one), a bad address, an IPv6 prefix
     * where IPv4 is meant. */
    static const char bad_ip[] =
        "<DescribeNetworkInterfacesResponse><networkInterfaceSet><item><privateIpAddressesSet>"
        "<item><privateIpAddress>10.0.0.300</privateIpAddress></item></privateIpAddressesSet>"
        "</item></networkInterfaceSet></DescribeNetworkInterfacesResponse>";
    static const char v6_prefix[] =
        "<DescribeNetworkInterfacesResponse><networkInterfaceSet><item><ipv4PrefixSet>"
        "<item><ipv4Prefix>2600:1f18::/80</ipv4Prefix></item></ipv4PrefixSet>"
        "</item></networkInterfaceSet></DescribeNetworkInterfacesResponse>";
    const struct {
        const char *action, *doc;
        size_t len;
    } refused[] = {
        {"GetSubnetCidrReservations", enis_answer, sizeof enis_answer - 1},
        {"DescribeNetworkInterfaces", page1, sizeof page1 - 1},
        {"DescribeNetworkInterfaces", bad_ip, sizeof bad_ip - 1},
        {"DescribeNetworkInterfaces", v6_prefix, sizeof v6_prefix - 1},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        assert_int_equal(
            parse_usage(refused[i].action, refused[i].doc, refused[i].len, 0, &used, &page),
            -EPROTO);
        cmh_ec2_cidrs_free(&used);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ec2_xml_page_fields_and_next_token),
        cmocka_unit_test(ec2_xml_same_result_split_at_every_byte),
        cmocka_unit_test(ec2_xml_error_document_code_and_message),
        cmocka_unit_test(ec2_xml_last_page_has_no_token),
        cmocka_unit_test(ec2_xml_refuses_what_is_not_an_answer),
        cmocka_unit_test(ec2_xml_over_long_token_is_refused),
        cmocka_unit_test(ec2_endpoint_regional_and_override),
        cmocka_unit_test(ec2_xml_interfaces_and_reservations_answers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
