#!/usr/bin/python3
"""Checks the fake Kubernetes API (test/sim/fake_k8s_api.py) against the API conventions the
discovery and leader-election code rely on, with Python's own TLS and HTTP client (independent of
our C code): the CA verifies the server for 127.0.0.1, a wrong token gets 401, a paginated list
gives every matching pod once under one resourceVersion, a watch from that resourceVersion streams
exactly the later changes (chunked, newline-delimited) plus bookmarks, a compacted
resourceVersion gets an ERROR 410 event, injected 500s count down, and Lease create/update
enforce AlreadyExists and resourceVersion conflicts."""
import http.client
import json
import os
import select
import ssl
import subprocess
import sys
import tempfile
import time
from urllib.parse import quote

SRC = os.environ.get("CMH_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
FAILS = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILS.append(what)


class Fake:
    def __init__(self, tmp):
        self.token_file = os.path.join(tmp, "token")
        self.p = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(SRC, "test/sim/fake_k8s_api.py"), "--token-file",
             self.token_file, "--lifetime", "120", "--bookmark-interval", "0.3"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.readline(30)
        words = dict(w.split("=", 1) for w in line.split()[1:])
        self.port, self.ca = int(words["port"]), words["ca"]

    def readline(self, timeout):
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not r:
            raise TimeoutError("fake API did not answer")
        return self.p.stdout.readline().strip()

    def cmd(self, text):
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()
        line = self.readline(20)
        if not line.startswith("OK"):
            raise RuntimeError(line)
        return json.loads(line[3:])

    def conn(self):
        ctx = ssl.create_default_context(cafile=self.ca)
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=10)

    def req(self, method, path, token="token-0", body=None):
        c = self.conn()
        headers = {"Authorization": "Bearer " + token} if token else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        out = r.status, json.loads(r.read() or b"null")
        c.close()
        return out

    def stop(self):
        self.p.stdin.close()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def watch(fake, rv, seconds):
    c = fake.conn()
    c.request("GET", "/api/v1/namespaces/kube-system/pods?labelSelector=k8s-app%%3Daws-node"
              "&watch=1&allowWatchBookmarks=true&resourceVersion=%s&timeoutSeconds=%d"
              % (rv, seconds), headers={"Authorization": "Bearer token-0"})
    r = c.getresponse()
    chunked = r.getheader("Transfer-Encoding") == "chunked"
    lines = r.read().decode().splitlines()
    c.close()
    return r.status, chunked, [json.loads(x) for x in lines if x]


def main():
    with tempfile.TemporaryDirectory() as tmp:
        fake = Fake(tmp)
        try:
            pods = "/api/v1/namespaces/kube-system/pods?labelSelector=k8s-app%3Daws-node"
            for i in range(7):
                fake.cmd("add aws-node-%d node-%d 10.0.0.%d" % (i, i, i + 1))
            fake.cmd("add kube-proxy-0 node-0 10.0.0.1 labels=k8s-app=kube-proxy")
            fake.cmd("add aws-node-x node-x 10.0.0.99 ns=default")

            status, body = fake.req("GET", pods, token="wrong")
            check(status == 401 and body["code"] == 401, "wrong token gets 401 Status")
            status, body = fake.req("GET", pods, token=None)
            check(status == 401, "no token gets 401")

            names, rvs, cont, pages = [], set(), "", 0
            while True:
                status, body = fake.req("GET", pods + "&limit=3" +
                                        ("&continue=" + cont if cont else ""))
                pages += 1
                names += [p["metadata"]["name"] for p in body["items"]]
                rvs.add(body["metadata"]["resourceVersion"])
                cont = body["metadata"].get("continue", "")
                if not cont:
                    break
            check(pages == 3 and sorted(names) == ["aws-node-%d" % i for i in range(7)],
                  "paginated list: 7 matching pods once each in 3 pages")
            check(len(rvs) == 1, "every page carries the list's resourceVersion")
            list_rv = rvs.pop()

            fake.cmd("set aws-node-1 ip=10.0.1.2")
            fake.cmd("del aws-node-2")
            fake.cmd("add kube-proxy-1 node-1 10.0.0.2 labels=k8s-app=kube-proxy")
            status, chunked, evs = watch(fake, list_rv, 1)
            kinds = [(e["type"], e["object"]["metadata"].get("name")) for e in evs
                     if e["type"] != "BOOKMARK"]
            check(status == 200 and chunked, "watch answers 200 with a chunked stream")
            check(kinds == [("MODIFIED", "aws-node-1"), ("DELETED", "aws-node-2")],
                  "watch from the list's resourceVersion streams exactly the later changes")
            bms = [e for e in evs if e["type"] == "BOOKMARK"]
            check(len(bms) >= 1 and int(bms[-1]["object"]["metadata"]["resourceVersion"]) >=
                  int(evs[1]["object"]["metadata"]["resourceVersion"]),
                  "bookmarks come and never go back in resourceVersion")

            fake.cmd("compact")
            status, chunked, evs = watch(fake, list_rv, 1)
            check(len(evs) == 1 and evs[0]["type"] == "ERROR" and
                  evs[0]["object"]["code"] == 410, "a compacted resourceVersion gets ERROR 410")
            status, body = fake.req("GET", pods + "&limit=3")
            tok = quote(body["metadata"]["continue"], safe="")
            status, body = fake.req("GET", pods + "&limit=3&continue=" + tok)
            check(status == 200 and len(body["items"]) == 3, "a fresh continue token works")
            fake.cmd("add aws-node-9 node-9 10.0.0.9")
            fake.cmd("compact")
            status, body = fake.req("GET", pods + "&limit=3&continue=" + tok)
            check(status == 410 and body["code"] == 410, "an expired continue token gets 410")

            fake.cmd("fail 2 500")
            codes = [fake.req("GET", pods)[0] for _ in range(3)]
            check(codes == [500, 500, 200], "two injected 500s, then success")

            fake.cmd("token token-1")
            with open(fake.token_file) as f:
                check(f.read().strip() == "token-1", "rotation writes the token file")
            check(fake.req("GET", pods)[0] == 401 and
                  fake.req("GET", pods, token="token-1")[0] == 200,
                  "after rotation only the new token is accepted")

            leases = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": "cni-metrics-helper"},
                     "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}
            t = "token-1"
            check(fake.req("GET", leases + "/cni-metrics-helper", t)[0] == 404,
                  "missing lease is 404")
            s1, created = fake.req("POST", leases, t, lease)
            s2, _ = fake.req("POST", leases, t, lease)
            check(s1 == 201 and s2 == 409, "create then AlreadyExists 409")
            upd = json.loads(json.dumps(created))
            upd["spec"]["holderIdentity"] = "b"
            s3, updated = fake.req("PUT", leases + "/cni-metrics-helper", t, upd)
            s4, _ = fake.req("PUT", leases + "/cni-metrics-helper", t, upd)
            check(s3 == 200 and s4 == 409, "update with the current resourceVersion, then stale 409")
            s5, got = fake.req("GET", leases + "/cni-metrics-helper", t)
            check(s5 == 200 and got["spec"]["holderIdentity"] == "b" and
                  got["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"],
                  "get returns the last update")
        finally:
            fake.stop()
    print("%d failed" % len(FAILS))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
