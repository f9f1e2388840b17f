#!/bin/sh
# Creates the alarms and the dashboard of manifests/cloudwatch/ with the AWS CLI, without
# CloudFormation: fills in the placeholders of the put-metric-alarm / put-dashboard files here,
# then calls `aws cloudwatch put-metric-alarm` / `put-dashboard` once per file.
#
#   apply.sh CLUSTER_ID SNS_TOPIC_ARN REGION ACCOUNT_ID           create or update them
#   apply.sh --render DIR CLUSTER_ID SNS_TOPIC_ARN REGION ACCOUNT_ID   only write the filled files
#
# The files are generated from ../alarms.yaml with its default thresholds; edit a filled file to
# change one. SUBNET_ALARM=false (the template's SubnetAlarm=false) leaves out the fullest-subnet
# alarm and its entry in the dashboard's alarm widget: set it when the helper runs without
# SUBNET_METRICS=true, since that alarm treats no subnet datum as breaching.
set -eu

subnet_alarm=${SUBNET_ALARM:-true}
case $subnet_alarm in
true | false) ;;
*)
    echo "$0: SUBNET_ALARM '$subnet_alarm' is not valid (expected true or false)" >&2
    exit 2
    ;;
esac

render=""
if [ "${1:-}" = "--render" ]; then
    render=${2:?--render needs a directory}
    shift 2
fi
if [ $# -ne 4 ]; then
    echo "usage: $0 [--render DIR] CLUSTER_ID SNS_TOPIC_ARN REGION ACCOUNT_ID" >&2
    exit 2
fi
cluster=$1 topic=$2 region=$3 account=$4

# The values go into JSON strings and a Metrics Insights quoted value, and through sed: accept
# only what they can be (the same patterns as the CloudFormation parameters).
want() {
    if ! printf '%s' "$2" | grep -Eqx "$3"; then
        echo "$0: $1 '$2' is not valid (expected $3)" >&2
        exit 2
    fi
}
want CLUSTER_ID "$cluster" '[0-9A-Za-z][A-Za-z0-9_-]{0,99}'
want SNS_TOPIC_ARN "$topic" 'arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}'
want REGION "$region" '[a-z]{2}(-[a-z]+)+-[0-9]+'
want ACCOUNT_ID "$account" '[0-9]{12}'
case $region in
cn-*) partition=aws-cn ;;
us-gov-*) partition=aws-us-gov ;;
*) partition=aws ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
out=${render:-$(mktemp -d)}
mkdir -p "$out"
# Without the subnet alarm, its ARN leaves the alarm widget (a JSON string inside the dashboard
# body, so its quotes are escaped there): what the template gives with SubnetAlarm=false.
subnet=alarm-subnet-ip-utilization-high.json
drop='s|\\"arn:[^\\]*:alarm:cni-@CLUSTER_ID@-subnet-ip-utilization-high\\",||'
[ "$subnet_alarm" = true ] && drop=''
for f in "$here"/*.json; do
    name=$(basename "$f")
    [ "$subnet_alarm" = false ] && [ "$name" = "$subnet" ] && continue
    sed -e "$drop" -e "s|@CLUSTER_ID@|$cluster|g" -e "s|@SNS_TOPIC_ARN@|$topic|g" \
        -e "s|@REGION@|$region|g" -e "s|@ACCOUNT_ID@|$account|g" -e "s|@PARTITION@|$partition|g" \
        "$f" >"$out/$name"
done
[ -n "$render" ] && exit 0

for f in "$out"/alarm-*.json; do
    echo "put-metric-alarm $(basename "$f")"
    aws cloudwatch put-metric-alarm --region "$region" --cli-input-json "file://$f"
done
echo "put-dashboard dashboard.json"
aws cloudwatch put-dashboard --region "$region" --cli-input-json "file://$out/dashboard.json"
rm -rf "$out"
