#!/usr/bin/python3
"""Prints one aws-node Pod as the Kubernetes API returns it, with @NAME@, @NODE@ and @IP@ where
each pod differs: the pod template of the real aws-node DaemonSet (test/data/k8s/, VPC CNI
v1.14.0), the env variables later releases added (about 30 in the aws-node container then), and
what the API server adds to a DaemonSet pod: defaults, the service-account token volume, the node
affinity by name, tolerations, status with container statuses, and the managedFields of the
DaemonSet controller and the kubelet. About 20 KB of JSON, the size the bench needs."""
import json
import os
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
DS = os.path.join(HERE, "..", "data", "k8s", "aws-node-daemonset_v1.14.0.yaml")

# Variables of later aws-node releases (VPC CNI 1.15 to 1.19), with their default values.
LATER_ENV = [("ANNOTATE_POD_IP", "false"), ("CLUSTER_NAME", "prod-eu-west-1"),
             ("ENABLE_SUBNET_DISCOVERY", "true"), ("ENABLE_V6_EGRESS", "false"),
             ("NETWORK_POLICY_ENFORCING_MODE", "standard"),
             ("POD_SECURITY_GROUP_ENFORCING_MODE", "standard"),
             ("VPC_CNI_VERSION", "v1.19.0"), ("VPC_ID", "vpc-0a1b2c3d4e5f67890")]


def fields(v):
    """FieldsV1 of a value, as the API server writes managedFields."""
    if isinstance(v, dict):
        out = {".": {}} if v else {}
        for k, x in v.items():
            out["f:" + k] = fields(x)
        return out
    if isinstance(v, list) and v and all(isinstance(x, dict) and "name" in x for x in v):
        return {"k:" + json.dumps({"name": x["name"]}, separators=(",", ":")): fields(x)
                for x in v}
    return {}


def container_defaults(c):
    c.setdefault("imagePullPolicy", "IfNotPresent")
    c["terminationMessagePath"] = "/dev/termination-log"
    c["terminationMessagePolicy"] = "File"
    c.setdefault("volumeMounts", []).append({
        "name": "kube-api-access-x7k2p", "readOnly": True,
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"})
    for p in c.get("ports", []):
        p.setdefault("protocol", "TCP")
        p["hostPort"] = p["containerPort"]
    for probe in ("livenessProbe", "readinessProbe"):
        if probe in c:
            c[probe].update({"periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})


def status_of(c, init):
    st = {"name": c["name"], "image": c["image"],
          "imageID": c["image"].split(":")[0] + "@sha256:" + "4f" * 32,
          "containerID": "containerd://" + "9c" * 32, "ready": not init, "restartCount": 0,
          "started": not init}
    if init:
        st["state"] = {"terminated": {"exitCode": 0, "reason": "Completed",
                                      "startedAt": "2026-12-01T08:00:03Z",
                                      "finishedAt": "2026-12-01T08:00:05Z",
                                      "containerID": st["containerID"]}}
    else:
        st["state"] = {"running": {"startedAt": "2026-12-01T08:00:06Z"}}
    st["lastState"] = {}
    return st


def main():
    with open(DS) as f:
        ds = yaml.safe_load(f)
    spec = ds["spec"]["template"]["spec"]
    env = spec["containers"][0]["env"]
    for name, value in LATER_ENV:
        env.insert(-2, {"name": name, "value": value})
    for c in spec["initContainers"] + spec["containers"]:
        container_defaults(c)
    spec.update({"nodeName": "@NODE@", "dnsPolicy": "ClusterFirst", "restartPolicy": "Always",
                 "schedulerName": "default-scheduler", "serviceAccount": "aws-node",
                 "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority",
                 "priority": 2000001000})
    spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"].append({"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["@NODE@"]}]})
    for key in ("not-ready", "unreachable", "disk-pressure", "memory-pressure", "pid-pressure",
                "unschedulable", "network-unavailable"):
        spec["tolerations"].append({"key": "node.kubernetes.io/" + key, "operator": "Exists",
                                    "effect": "NoExecute" if key in ("not-ready", "unreachable")
                                    else "NoSchedule"})
    spec["volumes"].append({"name": "kube-api-access-x7k2p", "projected": {
        "defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt",
                           "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}})
    labels = dict(ds["spec"]["template"]["metadata"]["labels"])
    labels.update({"controller-revision-hash": "5f7b9c6d8", "pod-template-generation": "12"})
    status = {
        "phase": "Running", "hostIP": "@IP@", "hostIPs": [{"ip": "@IP@"}], "podIP": "@IP@",
        "podIPs": [{"ip": "@IP@"}], "qosClass": "Burstable", "startTime": "2026-12-01T08:00:01Z",
        "conditions": [{"type": t, "status": "True", "lastProbeTime": None,
                        "lastTransitionTime": "2026-12-01T08:00:%02dZ" % i}
                       for i, t in enumerate(("PodReadyToStartContainers", "Initialized",
                                              "Ready", "ContainersReady", "PodScheduled"))],
        "initContainerStatuses": [status_of(c, True) for c in spec["initContainers"]],
        "containerStatuses": [status_of(c, False) for c in spec["containers"]],
    }
    meta = {"name": "@NAME@", "generateName": "aws-node-", "namespace": "kube-system",
            "uid": "3f0c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8", "resourceVersion": "48151623",
            "creationTimestamp": "2026-12-01T08:00:00Z", "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "aws-node",
                                 "uid": "0e1d2c3b-4a59-6877-8695-a4b3c2d1e0f9",
                                 "controller": True, "blockOwnerDeletion": True}]}
    meta["managedFields"] = [
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
         "time": "2026-12-01T08:00:00Z", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": fields({"generateName": 0, "labels": labels,
                                             "ownerReferences": 0}),
                      "f:spec": fields(spec)}},
        {"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
         "time": "2026-12-01T08:00:07Z", "fieldsType": "FieldsV1", "subresource": "status",
         "fieldsV1": {"f:status": fields(status)}}]
    pod = {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec, "status": status}
    sys.stdout.write(json.dumps(pod, separators=(",", ":")))


if __name__ == "__main__":
    main()
