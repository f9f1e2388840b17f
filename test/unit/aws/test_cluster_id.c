/* The pure parts of the cluster-id lookup: the original helper's tag rule, the node's providerID,
 * the aws-node pods' CLUSTER_NAME, and the DescribeTags answer's parser. */
#include "cmh/core/alloc.h"
#include "cmh/aws/cluster_id.h"
#include "cmh/aws/ec2_xml_int.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static void tag(struct cmh_ec2_tag *t, const char *k, const char *v)
{
    memset(t, 0, sizeof *t);
    snprintf(t->key, sizeof t->key, "%s", k);
    snprintf(t->value, sizeof t->value, "%s", v);
}

static void pick_follows_the_original_order_not_the_answers(void **state)
{
    (void)state;
    struct cmh_ec2_tag t[4];
    const char *key = NULL;
    tag(&t[0], "Name", "node-1");
    tag(&t[1], "CLUSTER_ID", "cid");
    tag(&t[2], "eks:cluster-name", "");
    tag(&t[3], "eks:eks-cluster-name", "karpenter");
    assert_string_equal(cmh_cluster_pick_tag(t, 4, &key), "cid"); /* the empty value is skipped */
    assert_string_equal(key, "CLUSTER_ID");
    tag(&t[2], "eks:cluster-name", "prod");
    assert_string_equal(cmh_cluster_pick_tag(t, 4, &key), "prod");
    assert_string_equal(cmh_cluster_pick_tag(t, 1, &key), "node-1");
    assert_string_equal(key, "Name");
    assert_null(cmh_cluster_pick_tag(&t[3], 1, &key)); /* a tag the original did not read */
}

static void provider_id_gives_region_and_instance(void **state)
{
    (void)state;
    static const struct {
        const char *pid, *region, *instance;
    } good[] = {
        {"aws:///us-west-2a/i-0123456789abcdef0", "us-west-2", "i-0123456789abcdef0"},
        {"aws:///us-gov-west-1b/i-01234567", "us-gov-west-1", "i-01234567"},
        {"aws:///us-west-2-lax-1a/i-0123456789abcdef0", "us-west-2", "i-0123456789abcdef0"},
        {"aws:///us-east-1-wl1-bos-wlz-1/i-0123456789abcdef0", "us-east-1", "i-0123456789abcdef0"},
        {"aws:///cn-north-1a/i-0123456789abcdef0", "cn-north-1", "i-0123456789abcdef0"},
    };
    static const char *const bad[] = {
        "aws:///us-west-2a/fargate-ip-10-0-1-2.us-west-2.compute.internal",
        "aws:///us-west-2a/0123456789abcdef0/fargate-ip-10-0-1-2",
        "gce://project/us-central1-a/instance-1",
        "aws:///us-west-2a/i-0123456789ABCDEF0",
        "aws:///us-west-2a/",
        "aws:///Us-west-2a/i-0123456789abcdef0",
        "aws:///west-2a/i-0123456789abcdef0",
        "aws:///us-west-2a.evil/i-0123456789abcdef0",
        "",
    };
    char region[64], instance[32];
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        assert_int_equal(cmh_cluster_parse_provider_id(good[i].pid, region, sizeof region, instance,
                                                       sizeof instance),
                         0);
        assert_string_equal(region, good[i].region);
        assert_string_equal(instance, good[i].instance);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(
            cmh_cluster_parse_provider_id(bad[i], region, sizeof region, instance, sizeof instance),
            -EPROTO);
}

static void node_and_pod_documents(void **state)
{
    (void)state;
    char *out = NULL;
    const char node[] = "{\"kind\":\"Node\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"n\"},"
                        "\"spec\":{\"providerID\":\"aws:///us-west-2a/i-0123456789abcdef0\"}}";
    assert_int_equal(cmh_cluster_node_provider_id(node, strlen(node), &out), 0);
    assert_string_equal(out, "aws:///us-west-2a/i-0123456789abcdef0");
    cmh_free(out);
    const char nopid[] = "{\"kind\":\"Node\",\"spec\":{}}";
    assert_int_equal(cmh_cluster_node_provider_id(nopid, strlen(nopid), &out), -EPROTO);
    const char pods[] =
        "{\"kind\":\"PodList\",\"items\":["
        "{\"spec\":{\"containers\":[{\"name\":\"aws-eks-nodeagent\",\"env\":[{\"name\":"
        "\"CLUSTER_NAME\",\"value\":\"not-this\"}]},{\"name\":\"aws-node\",\"env\":[{\"name\":"
        "\"CLUSTER_NAME\",\"value\":\"\"}]}]}},"
        "{\"spec\":{\"containers\":[{\"name\":\"aws-node\",\"env\":[{\"name\":\"X\",\"value\":"
        "\"y\"},{\"name\":\"CLUSTER_NAME\",\"value\":\"prod\"}]}]}}]}";
    assert_int_equal(cmh_cluster_aws_node_cluster_name(pods, strlen(pods), &out), 0);
    assert_string_equal(out, "prod");
    cmh_free(out);
    const char none[] = "{\"kind\":\"PodList\",\"items\":[{\"spec\":{\"containers\":[{\"name\":"
                        "\"aws-node\",\"env\":[]}]}}]}";
    assert_int_equal(cmh_cluster_aws_node_cluster_name(none, strlen(none), &out), -ENOENT);
    assert_int_equal(cmh_cluster_aws_node_cluster_name("[", 1, &out), -EPROTO);
}

static void describe_tags_answer_parses(void **state)
{
    (void)state;
    const char doc[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                       "<DescribeTagsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">"
                       "<requestId>r-1</requestId><tagSet>"
                       "<item><resourceId>i-1</resourceId><resourceType>instance</resourceType>"
                       "<key>CLUSTER_ID</key><value>cid &amp; co</value></item>"
                       "<item><resourceId>i-1</resourceId><key>Name</key><value></value></item>"
                       "</tagSet></DescribeTagsResponse>";
    struct cmh_subnet_list list = {0};
    static struct cmh_ec2_page page;
    page.subnets = &list;
    assert_int_equal(cmh_ec2_parse(doc, strlen(doc), &page), 0);
    assert_true(page.tags_answer);
    assert_int_equal(page.ntags, 2);
    assert_string_equal(page.tags[0].key, "CLUSTER_ID");
    assert_string_equal(page.tags[0].value, "cid & co");
    assert_string_equal(page.tags[1].value, "");
    const char nokey[] = "<DescribeTagsResponse><tagSet><item><value>v</value></item></tagSet>"
                         "</DescribeTagsResponse>";
    assert_int_equal(cmh_ec2_parse(nokey, strlen(nokey), &page), -EPROTO);
    const char subnets[] = "<DescribeSubnetsResponse><subnetSet/></DescribeSubnetsResponse>";
    assert_int_equal(cmh_ec2_parse(subnets, strlen(subnets), &page), 0);
    assert_false(page.tags_answer);
    cmh_subnet_list_free(&list);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pick_follows_the_original_order_not_the_answers),
        cmocka_unit_test(provider_id_gives_region_and_instance),
        cmocka_unit_test(node_and_pod_documents),
        cmocka_unit_test(describe_tags_answer_parses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
