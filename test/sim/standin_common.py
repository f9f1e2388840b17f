"""What the loopback AWS stand-ins (ec2_standin.py, cloudwatch_standin.py) share: the accepted
credentials, the SigV4 check with botocore as the independent oracle, and the serve-until-stdin-
closes lifetime."""
import datetime
import os
import socket
import struct
import sys
import threading
import time

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

DEFAULT_KEY = "AKIDEXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def add_common_args(ap):
    """--region, --key (repeatable) and --lifetime, as every stand-in takes them."""
    ap.add_argument("--region", default="us-west-2")
    ap.add_argument("--key", action="append", default=[],
                    help="ID:SECRET[:TOKEN] accepted credentials (repeatable)")
    ap.add_argument("--lifetime", type=float, default=300)


def parse_keys(specs):
    """{key id: (secret, token or None)} from ID:SECRET[:TOKEN] strings (the example key when
    none are given)."""
    keys = {}
    for k in specs or [DEFAULT_KEY]:
        p = k.split(":", 2)
        keys[p[0]] = (p[1], p[2] if len(p) > 2 else None)
    return keys


def check_signature(h, body, service, region, keys, token_must_be_signed=False):
    """Recomputes the SigV4 signature of request handler h (its bytes body) with botocore;
    returns why it is wrong, or None."""
    auth = h.headers.get("Authorization", "")
    amz_date = h.headers.get("X-Amz-Date", "")
    try:
        algo, rest = auth.split(" ", 1)
        parts = dict(p.strip().split("=", 1) for p in rest.split(","))
        key_id, date, cred_region, cred_service, term = parts["Credential"].split("/")
        signed = parts["SignedHeaders"].split(";")
        got = parts["Signature"]
    except (ValueError, KeyError):
        return "malformed Authorization header"
    if algo != "AWS4-HMAC-SHA256" or cred_service != service or term != "aws4_request":
        return "bad credential scope"
    if cred_region != region:
        return "signed for region %s, expected %s" % (cred_region, region)
    if not amz_date.startswith(date):
        return "X-Amz-Date does not match the credential date"
    secret, token = keys.get(key_id, (None, None))
    if secret is None:
        return "unknown access key " + key_id
    if token and h.headers.get("X-Amz-Security-Token") != token:
        return "missing or wrong session token"
    for required in ("host", "x-amz-date", "content-type"):
        if required not in signed:
            return "header %s not signed" % required
    if token_must_be_signed and token and "x-amz-security-token" not in signed:
        return "security token not signed"
    try:
        when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
    except ValueError:
        return "bad X-Amz-Date"
    if abs((datetime.datetime.utcnow() - when).total_seconds()) > 300:
        return "request time too skewed"
    headers = {}
    for name in signed:
        v = h.headers.get_all(name)
        if v is None:
            return "signed header %s missing" % name
        headers[name] = ",".join(v)
    req = AWSRequest(method=h.command, url="http://%s%s" % (headers["host"], h.path),
                     data=body, headers=headers)
    req.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(key_id, secret, token), service, region)
    canonical = signer.canonical_request(req)
    want = signer.signature(signer.string_to_sign(req, canonical), req)
    if want != got:
        return "signature mismatch; canonical request was:\n" + canonical
    return None


def serve_until_stdin_closes(servers, ready_line, lifetime, cleanup=None):
    """Serves every server on its own thread, prints ready_line, and exits the process when stdin
    closes or lifetime seconds pass (cleanup() runs first on the lifetime path)."""
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print(ready_line, flush=True)
    end = time.monotonic() + lifetime

    def watch_stdin():
        try:
            while sys.stdin.read(4096):
                pass
        except OSError:
            pass
        os._exit(0)
    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        while time.monotonic() < end:
            time.sleep(0.2)
    finally:
        if cleanup:
            cleanup()
    os._exit(0)


def reset_connection(handler, partial=None):
    """Ends the handler's connection with a TCP RST, after partial (bytes: half an answer) when
    given. A reset before any byte of the answer on a reused connection is retried by libcurl
    itself, invisibly to the client's attempt count; after half an answer the client sees a broken
    response."""
    sock = handler.connection
    try:
        if partial:
            handler.wfile.write(partial)
            handler.wfile.flush()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    handler.close_connection = True
    try:
        sock.close()
    except OSError:
        pass
