"""Re-checks the mechanical claims of docs/security.md against the code and the running daemon, so the
document cannot silently go stale:

- source: TLS verification set once, unconditionally, in the one module that includes libcurl;
  no verbose/debug callback; no redirects; the only trust-anchor variables are AWS_CA_BUNDLE and
  K8S_CA_FILE, and a CA file always turns libcurl's built-in CA path off; the Kubernetes API, IMDS
  and container-credential requests never use a proxy, STS does; URLs are logged through the one
  redaction; the process is made non-dumpable first thing;
- docs: every threat paragraph of docs/security.md names a test, and every test named after
  *Tests:* exists in CTest;
- IMDSv2 only: against a loopback IMDS that issues tokens, every GET carries the issued token;
  against one that refuses the token PUT (403, 404, 405), no GET is ever sent (no IMDSv1 fallback);
- allow-lists: a container credential URL or a CloudWatch endpoint with user information
  (`http://127.0.0.1:1@127.0.0.3:9/`: the real host is 127.0.0.3, not the allow-listed 127.0.0.1)
  is refused, as is a plain-http non-loopback one;
- secrets: the daemon at debug level, with static keys, a session token and a service-account
  token that all carry markers, and every peer failing, never prints a marker in its log, on
  /metrics or on /readyz;
- our HTTP server: GET/HEAD on three paths only (405 for other methods, 404 for other paths),
  431 for an oversized request.
"""
import atexit
import glob
import http.server
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from testlib import check, finish  # noqa: E402

SRC = os.environ["CMH_SOURCE_DIR"]
BIN = os.environ["CMH_BIN"]


def source(name):
    """A file of src/ by its path there ("http/curl_uv.c")."""
    with open(os.path.join(SRC, "src", name), encoding="utf-8") as f:
        return f.read()


def all_sources():
    out = {}
    for d in ("src", "include/cmh"):
        for root, _, names in sorted(os.walk(os.path.join(SRC, d))):
            for n in sorted(names):
                if n.endswith((".c", ".h")):
                    path = os.path.join(root, n)
                    with open(path, encoding="utf-8") as f:
                        out[os.path.relpath(path, SRC)] = f.read()
    return out


# ---- source claims ---------------------------------------------------------------------------
srcs = all_sources()
curl_users = [n for n, t in srcs.items() if re.search(r"#include\s*<curl/", t)]
check("only src/http/curl_uv.c includes libcurl", curl_users == ["src/http/curl_uv.c"], curl_users)
cu = source("http/curl_uv.c")
check("TLS peer verification is set on, once",
      len(re.findall(r"CURLOPT_SSL_VERIFYPEER", cu)) == 1 and "SET(CURLOPT_SSL_VERIFYPEER, 1L)" in cu)
check("TLS host verification is set on, once",
      len(re.findall(r"CURLOPT_SSL_VERIFYHOST", cu)) == 1 and "SET(CURLOPT_SSL_VERIFYHOST, 2L)" in cu)
m = re.search(r"\n([^\n]*)\n[^\n]*SET\(CURLOPT_SSL_VERIFYPEER", cu)
check("TLS verification is not under a condition",
      m is not None and not re.search(r"\b(if|else|\?)\b", m.group(1)), m and m.group(1))
risky = [n for n, t in srcs.items()
         if re.search(r"CURLOPT_(VERBOSE|DEBUGFUNCTION|SSL_OPTIONS|PROXY_SSL_VERIFY|SSL_VERIFYSTATUS)"
                      r"|CURLSSLOPT_NO_REVOKE|CURLSSLOPT_ALLOW_BEAST", t)]
check("no verbose/debug output and no TLS relaxing option anywhere", not risky, risky)
check("redirects are never followed", "SET(CURLOPT_FOLLOWLOCATION, 0L)" in cu)
cainfo = re.findall(r"SET\(CURLOPT_CAINFO, [^)]*\);\s*SET\(CURLOPT_CAPATH, \(char \*\)NULL\);", cu)
check("a CA file replaces the system store: CAINFO set in one place, always with CAPATH off",
      len(re.findall(r"CURLOPT_CAINFO", cu)) == 1 and len(cainfo) == 1, cainfo)
check("a no_proxy request sets CURLOPT_PROXY to \"\" (libcurl then reads no proxy variable)",
      re.search(r"if \(req->no_proxy\)\s*SET\(CURLOPT_PROXY, \"\"\);", cu) is not None)
api = source("k8s/api.c")
api_get = re.search(r"\nint cmh_k8s_api_get\(.*?\n\}", api, re.S)
api_start = re.search(r"\nint cmh_k8s_api_start\(.*?\n\}", api, re.S)
api_start = api_start.group(0) if api_start else ""
m = re.search(r"\n([^\n]*)\n[^\n]*\bno_proxy = 1;", api_start)
check("the Kubernetes API helper sets no_proxy once, unconditionally, on every request it starts",
      len(re.findall(r"\bno_proxy\b", api)) == 1 and m is not None
      and not re.search(r"\b(if|else|\?)\b", m.group(1))
      and api_start.rstrip("}").rstrip().endswith("return cmh_curl_uv_start(curl, &r->curl, done);")
      and api_get is not None and "return cmh_k8s_api_start(a, curl, r, done);" in api_get.group(0)
      and len(re.findall(r"\bcmh_curl_uv_start\(", api)) == 1,
      m and m.group(1))
k8s_clients = ("k8s/discovery.c", "k8s/leader.c", "k8s/eniconfig.c", "scrape/proxy_scrape.c",
               "cmd/report.c", "aws/cluster_id.c")
direct = {f: (len(re.findall(r"\bcmh_k8s_api_(?:start|get)\(", source(f))),
              len(re.findall(r"\bcmh_curl_uv_start\(|\bno_proxy\b", source(f))))
          for f in k8s_clients}
check("every Kubernetes API request (discovery, leader election, ENIConfigs, pod proxy, report, "
      "cluster id) "
      "starts through that helper, none by curl_uv directly",
      all(n >= 1 and d == 0 for n, d in direct.values()), direct)
# The credential layer's requests all go through cmh_aws_job_request (creds_job.c), whose
# credential_endpoint argument (the one before the timeout) becomes the request's no_proxy.
ac = source("aws/creds.c") + source("aws/imds.c") + source("aws/region.c")
check("the credential jobs' credential_endpoint argument is the request's no_proxy",
      ".no_proxy = credential_endpoint," in source("aws/creds_job.c"))
imds_calls = re.findall(r"(\d),\s*p->(?:imds|sts)_timeout_ms,\s*(\w+)\)", ac, re.S)
check("IMDS and container-credential requests are no_proxy; STS (an AWS service) is not",
      sorted((c[1], c[0]) for c in imds_calls) ==
      [("on_container_creds", "1"), ("on_imds_token", "1"), ("on_resp", "1"),
       ("on_sts", "0"), ("on_sts", "0")],  # STS AssumeRoleWithWebIdentity and AssumeRole
      imds_calls)
url_fields = [(n, m) for n, t in srcs.items()
              for m in re.findall(r'CMH_STR\("(url|endpoint|server)"', t)]
check("URLs are logged only as CMH_URL (the one redaction), never as plain strings",
      not url_fields, url_fields)
check("the process makes itself non-dumpable first thing in main",
      re.search(r"int main\(int argc, char \*\*argv\)\s*\{[^}]*?prctl\(PR_SET_DUMPABLE, 0L",
                source("main.c"), re.S) is not None)
# ---- docs/security.md names real tests ------------------------------------------------------
with open(os.path.join(SRC, "docs", "security.md"), encoding="utf-8") as f:
    doc = f.read()
listed = subprocess.run(["ctest", "-N"], cwd=os.environ["CMH_BUILD_DIR"], capture_output=True,
                        text=True, timeout=60).stdout
known = set(re.findall(r"Test +#\d+: (\S+)", listed))
threats = doc.split("## Threats and how they are met", 1)[-1].split("\n## ", 1)[0]
paragraphs = [p for p in threats.split("\n\n") if p.startswith("**")]
untested = [p.split("**")[1] for p in paragraphs
            if not any(n in known for n in re.findall(r"`([a-z0-9_]+)`", p))]
check("docs/security.md: every threat paragraph names a test that exists", paragraphs and not untested,
      untested)
cited = {n for p in paragraphs for clause in re.findall(r"\*Tests:\*(.*)", p, re.S)
         for n in re.findall(r"`([a-z0-9_]+)`", clause) if "_" in n}
# A test some builds leave out (static analysis outside the sanitizer build) is registered by name.
with open(os.path.join(SRC, "test", "CMakeLists.txt"), encoding="utf-8") as f:
    registered = f.read()
# A cmocka case inside a CTest test binary is cited by its own name.
cases = set()
for unit in glob.glob(os.path.join(SRC, "test", "unit", "**", "*.c"), recursive=True):
    with open(unit, encoding="utf-8") as f:
        cases.update(re.findall(r"cmocka_unit_test(?:_setup_teardown)?\((\w+)", f.read()))


def registered_name(n):
    """n is declared in test/CMakeLists.txt, its case count possibly as ${_n} (the differentials
    run thousands of cases in the plain build, hundreds in the sanitizer build)."""
    pattern = r"\b%s\b" % re.sub(r"_\d+_", lambda m: r"_(?:\d+|\$\{_n\})_", n)
    return re.search(pattern, registered) is not None


missing = sorted(n for n in cited if n not in known and n not in cases and not registered_name(n))
check("docs/security.md: every test named after *Tests:* is a CTest test", cited and not missing,
      missing)
help_text = subprocess.run([BIN, "--help"], capture_output=True, text=True, timeout=30).stdout
TLS_WORDS = {"CA", "CACERT", "CERT", "CERTS", "TLS", "SSL", "INSECURE", "VERIFY", "SKIP", "BUNDLE"}
tls_vars = sorted(v for v in re.findall(r"^  ([A-Z][A-Z0-9_]+) \(", help_text, re.MULTILINE)
                  if TLS_WORDS & set(v.split("_")))
check("the only trust-anchor settings are AWS_CA_BUNDLE and K8S_CA_FILE (nothing turns verification off)",
      tls_vars == ["AWS_CA_BUNDLE", "K8S_CA_FILE"], tls_vars)


# ---- a loopback peer that records requests ----------------------------------------------------
class Recorder:
    def __init__(self, handler):
        self.requests = []
        rec = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(min(n, 1 << 20))
                rec.requests.append((self.command, self.path, dict(self.headers)))
                status, body = handler(self.command, self.path, self.headers)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            do_GET = do_PUT = do_POST = _any

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.timeout = 1
        self.port = self.srv.server_address[1]
        self.t = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.t.start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


BASE = {"PATH": "/usr/bin:/bin", "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0",
        "SCRAPE_TARGETS": "127.0.0.1:1", "AWS_VPC_K8S_CNI_LOGLEVEL": "debug",
        "METRIC_UPDATE_INTERVAL": "1s", "HTTP_TIMEOUT": "2s"}


STARTED = []


@atexit.register
def _kill_leftovers():
    for p in STARTED:
        if p.poll() is None:
            p.kill()


class Daemon:
    """The daemon under test, its log lines collected by a thread."""

    def __init__(self, env):
        self.p = subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True)
        STARTED.append(self.p)
        self.lines = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for ln in self.p.stderr:
            self.lines.append(ln.rstrip("\n"))

    def wait_for(self, pattern, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.p.poll() is None:
            if pattern and any(re.search(pattern, ln) for ln in list(self.lines)):
                return True
            time.sleep(0.05)
        return False

    def port(self):
        for ln in list(self.lines):
            m = re.search(r"msg=\"?listening\"? .*port=(\d+)|\"msg\":\"listening\".*\"port\":(\d+)", ln)
            if m:
                return int(m.group(1) or m.group(2))
        return None

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
        try:
            self.p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.t.join(timeout=5)
        return self.lines


def run_daemon(env, seconds, until=None):
    """Runs the daemon until a log line matches `until` (at most `seconds`); returns
    (log lines so far, the port it listens on, the Daemon, still running)."""
    d = Daemon({**BASE, **env})
    d.wait_for(until, seconds)
    if until is None or d.port() is None:
        d.wait_for(r"listening", 2)
    return list(d.lines), d.port(), d


def stop(d):
    return d.stop()


# ---- IMDSv2 only -------------------------------------------------------------------------------
TOKEN = "imds-token-" + "x" * 40


def imds_v2(method, path, headers):
    if method == "PUT" and path == "/latest/api/token":
        return 200, TOKEN.encode()
    if headers.get("X-aws-ec2-metadata-token") != TOKEN:
        return 401, b""
    if path.endswith("/placement/region"):
        return 200, b"eu-west-1"
    return 404, b""


imds = Recorder(imds_v2)
env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{imds.port}",
       "AWS_CLUSTER_ID": "c1", "USE_CLOUDWATCH": "true",
       "AWS_ENDPOINT_URL_CLOUDWATCH": "http://127.0.0.1:1/"}
lines, _, p = run_daemon(env, 8, until=r"region=eu-west-1")
lines = stop(p)
gets = [r for r in imds.requests if r[0] == "GET"]
check("IMDSv2: the token is requested with PUT first",
      imds.requests and imds.requests[0][:2] == ("PUT", "/latest/api/token"), imds.requests[:2])
check("IMDSv2: the region came from IMDS", any("region=eu-west-1" in ln for ln in lines),
      "\n".join(lines[-5:]))
check("IMDSv2: every GET carries the issued token",
      gets and all(r[2].get("X-aws-ec2-metadata-token") == TOKEN for r in gets),
      [(r[1], r[2].get("X-aws-ec2-metadata-token")) for r in gets])
imds.close()
for refusal in (403, 404, 405):
    imds = Recorder(lambda m, pth, h, s=refusal: (s, b"") if m == "PUT" else (200, b"eu-west-1"))
    env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = f"http://127.0.0.1:{imds.port}"
    lines, _, p = run_daemon(env, 5, until=r"IMDSv2|imds")
    time.sleep(1.0)
    stop(p)
    check(f"IMDSv2: a token PUT answered {refusal} is tried",
          any(r[0] == "PUT" for r in imds.requests), imds.requests)
    check(f"IMDSv2: after a token PUT answered {refusal}, no IMDSv1 GET",
          not any(r[0] == "GET" for r in imds.requests), imds.requests)
    imds.close()

# ---- allow-lists -------------------------------------------------------------------------------
AWS_OFF = {"AWS_REGION": "eu-west-1", "AWS_CLUSTER_ID": "c1", "AWS_EC2_METADATA_DISABLED": "true",
           "USE_CLOUDWATCH": "true"}
KEYS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}


def refused(var, url_of, refusal, extra):
    """Starts the daemon with var=url_of(port of a listener on 127.0.0.3); returns (refusal
    logged, connections the listener saw)."""
    ls = socket.socket()
    ls.bind(("127.0.0.3", 0))
    ls.listen(8)
    ls.settimeout(0.2)
    lines, _, d = run_daemon({**AWS_OFF, **extra, var: url_of(ls.getsockname()[1])}, 5,
                             until=refusal)
    accepted = 0
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        try:
            c, _ = ls.accept()
            c.close()
            accepted += 1
        except socket.timeout:
            pass
    lines = stop(d)
    ls.close()
    return any(re.search(refusal, ln) for ln in lines), accepted, lines


MARK_URL_PW = "URLPASSWORDk4Tn"
for url_of, why in ((lambda p: f"http://127.0.0.1:1@127.0.0.3:{p}/creds", "user information"),
                    (lambda p: f"http://u:{MARK_URL_PW}@127.0.0.3:{p}/creds", "a password"),
                    (lambda p: "http://10.1.1.1/creds", "a non-loopback plain-http host")):
    ok, n, lines = refused("AWS_CONTAINER_CREDENTIALS_FULL_URI", url_of,
                           r"container credentials endpoint refused", {})
    check(f"container credential URL with {why} is refused", ok and n == 0,
          f"connections={n} " + "\n".join(lines[-4:]))
    check(f"container credential URL with {why}: no password in the log",
          not any(MARK_URL_PW in ln for ln in lines), "\n".join(lines[-4:]))
for url_of, why in ((lambda p: f"http://127.0.0.1:1@127.0.0.3:{p}/", "user information"),
                    (lambda p: f"http://u:{MARK_URL_PW}@127.0.0.3:{p}/", "a password"),
                    (lambda p: "http://10.1.1.1/", "a non-loopback host")):
    ok, n, lines = refused("AWS_ENDPOINT_URL_CLOUDWATCH", url_of,
                           r"CloudWatch endpoint( is not an https|: plain http is allowed only)", KEYS)
    check(f"plain-http CloudWatch endpoint with {why} is refused", ok and n == 0,
          f"connections={n} " + "\n".join(lines[-4:]))
    check(f"CloudWatch endpoint with {why}: no password in the log",
          not any(MARK_URL_PW in ln for ln in lines), "\n".join(lines[-4:]))

# ---- secrets never printed ---------------------------------------------------------------------
MARK_SECRET = "SECRETMARKERq7Zk"
MARK_SESSION = "SESSIONMARKERv3Xp"
MARK_SA = "SATOKENMARKERw9Lm"
with tempfile.TemporaryDirectory() as tmp:
    tok = os.path.join(tmp, "token")
    with open(tok, "w", encoding="utf-8") as f:
        f.write("eyJhbGciOi." + MARK_SA + ".sig\n")
    ca = os.path.join(tmp, "ca.crt")
    with open(ca, "w", encoding="utf-8") as f:
        f.write("")
    cw = Recorder(lambda m, pth, h: (403, b"<ErrorResponse><Error><Type>Sender</Type><Code>"
                                         b"AccessDenied</Code><Message>denied</Message></Error>"
                                         b"</ErrorResponse>"))
    env = {**AWS_OFF, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
           "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/" + MARK_SECRET,
           "AWS_SESSION_TOKEN": "FwoGZXIvYXdzE" + MARK_SESSION,
           "AWS_ENDPOINT_URL_CLOUDWATCH": f"http://127.0.0.1:{cw.port}/",
           "USE_PROMETHEUS": "true", "LOG_FORMAT": "json"}
    lines, port, p = run_daemon(env, 6, until=r"AccessDenied")
    pages = []
    if port:
        for path in ("/metrics", "/readyz", "/healthz"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    pages.append(r.read().decode())
            except urllib.error.HTTPError as e:
                pages.append(e.read().decode())
    lines = stop(p)
    cw.close()
    seen = "\n".join(lines + pages)
    check("the daemon reached the CloudWatch peer and logged the failure",
          any("AccessDenied" in ln for ln in lines), "\n".join(lines[-5:]))
    check("three pages served", len(pages) == 3, pages)
    for mark in (MARK_SECRET, MARK_SESSION):
        check(f"credential marker {mark} never in the log, /metrics or /readyz", mark not in seen)
    # Kubernetes discovery with a token file, against an API that does not answer TLS.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead.listen(8)
    env = {"PATH": "/usr/bin:/bin", "USE_CLOUDWATCH": "false", "AWS_VPC_K8S_CNI_LOGLEVEL": "debug",
           "PROMETHEUS_ADDRESS": "127.0.0.1", "PROMETHEUS_PORT": "0", "HTTP_TIMEOUT": "1s",
           "KUBERNETES_SERVICE_HOST": "127.0.0.1",
           "KUBERNETES_SERVICE_PORT": str(dead.getsockname()[1]),
           "K8S_TOKEN_FILE": tok, "K8S_CA_FILE": ca, "AWS_REGION": "eu-west-1",
           "AWS_CLUSTER_ID": "c1"}
    d = Daemon(env)
    d.wait_for(r"(?i)discovery.*(error|fail|retry)|kubernetes.*(error|fail)", 6)
    lines = d.stop()
    dead.close()
    check("discovery ran and failed against the silent API",
          any("discovery" in ln or "kubernetes" in ln.lower() for ln in lines), "\n".join(lines[-5:]))
    check("service-account token never in the log", MARK_SA not in "\n".join(lines))

# ---- our HTTP server ---------------------------------------------------------------------------
lines, port, p = run_daemon({"USE_CLOUDWATCH": "false"}, 5, until=r"msg=listening")


def raw(req):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(req)
    data = b""
    try:
        while len(data) < 65536:
            c = s.recv(4096)
            if not c:
                break
            data += c
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    m = re.match(rb"HTTP/1\.1 (\d{3})", data)
    return int(m.group(1)) if m else None


if check("daemon listening", port is not None, lines[-3:]):
    check("GET /healthz 200", raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == 200)
    check("HEAD /healthz 200", raw(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == 200)
    for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"):
        st = raw(method + b" /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        check(f"{method.decode()} /healthz is 405", st == 405, st)
    for path in (b"/", b"/debug", b"/metrics/../readyz", b"/healthz/x", b"/config"):
        st = raw(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        check(f"GET {path.decode()} is 404", st == 404, st)
    st = raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n")
    check("a 9 KB request is refused (431)", st == 431, st)
stop(p)
finish()
