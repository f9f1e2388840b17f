"""A throw-away CA and a server certificate for the loopback test peers, made with the openssl CLI
at test time (nothing secret is committed). Shared by every TLS peer under test/sim/."""
import os
import subprocess


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(d, ca="ca.pem", cert="srv.pem", ca_cn="cmh test CA", server_cn="127.0.0.1",
               san="IP:127.0.0.1", rogue=False):
    """Writes d/ca.key + d/<ca>, d/srv.key + d/<cert> signed by it for san; with rogue, also a
    self-signed d/rogue.key + d/rogue.pem for 127.0.0.1 that no test trusts."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", ca, "-days", "2", "-subj",
            "/CN=" + ca_cn, cwd=d)
    openssl("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=" + server_cn, cwd=d)
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=%s\n" % san)
    openssl("x509", "-req", "-in", "srv.csr", "-CA", ca, "-CAkey", "ca.key", "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", "ext.cnf", cwd=d)
    if rogue:
        openssl("req", "-x509", *ec, "-keyout", "rogue.key", "-out", "rogue.pem", "-days", "2",
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", cwd=d)
