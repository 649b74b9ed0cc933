"""A Web Push service played for Roost's tests, on 127.0.0.1, written independently of roostd.

It hands out subscriptions (a P-256 key pair and an auth secret it keeps, and an endpoint on
itself), and for every push it receives it checks the VAPID token (RFC 8292: ES256 signature by
the key in `k`, audience = this origin, expiry within 24 hours, a subject) and decrypts the
payload (RFC 8291, aes128gcm) with the subscriber's private key, using the `cryptography` and
`http_ece` packages. Each endpoint answers with the statuses the test asked for (201 by default).

Control API (JSON): POST /subscriptions -> {id, endpoint, keys: {p256dh, auth}};
POST /endpoints -> {id, endpoint}: an endpoint for keys the subscriber made itself (as with a
UnifiedPush distributor), whose pushes are kept undecrypted (`body`, base64url);
GET /received/<id> -> [push, ...]; POST /statuses/<id> {"statuses": [503, 201]} (the last one
stays; 0 never answers, a 3xx redirects to the same endpoint). Prints "listening <port>" once it
accepts connections.
"""

import base64
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


LOCK = threading.Lock()
SUBSCRIPTIONS = {}  # id -> {"key": private key, "auth": bytes}, or None for a bare endpoint
RECEIVED = {}  # id -> [push]
STATUSES = {}  # id -> [status, ...]


def check_vapid(header: str, origin: str):
    """Returns (problems, public key) for an `Authorization: vapid t=..., k=...` header."""
    problems = []
    if not header.startswith("vapid "):
        return ["the Authorization scheme is not vapid"], None
    params = {}
    for part in header[len("vapid "):].split(","):
        name, _, value = part.strip().partition("=")
        params[name] = value
    token, key = params.get("t"), params.get("k")
    if not token or not key:
        return ["t or k missing"], None
    try:
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
    except ValueError:
        return ["k is not a P-256 point"], key
    head, claims, signature = token.split(".")
    header_json = json.loads(unb64url(head))
    if header_json.get("alg") != "ES256":
        problems.append("alg is not ES256")
    raw = unb64url(signature)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        public.verify(der, f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        problems.append("the JWT signature does not verify with k")
    body = json.loads(unb64url(claims))
    if body.get("aud") != origin:
        problems.append(f"aud {body.get('aud')!r} is not {origin!r}")
    now = time.time()
    if not (now < body.get("exp", 0) <= now + 24 * 3600 + 60):
        problems.append("exp is not within the next 24 hours")
    if not body.get("sub"):
        problems.append("no sub")
    return problems, key


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=None, headers=()):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self):
        if self.path.startswith("/received/"):
            with LOCK:
                return self.reply(200, RECEIVED.get(self.path.rsplit("/", 1)[1], []))
        self.reply(404, {})

    def do_POST(self):
        body = self.body()
        if self.path == "/subscriptions":
            key = ec.generate_private_key(ec.SECP256R1())
            auth = os.urandom(16)
            sid = b64url(os.urandom(9))
            with LOCK:
                SUBSCRIPTIONS[sid] = {"key": key, "auth": auth}
                RECEIVED[sid] = []
            port = self.server.server_address[1]
            point = key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            return self.reply(200, {
                "id": sid,
                "endpoint": f"http://127.0.0.1:{port}/push/{sid}",
                "keys": {"p256dh": b64url(point), "auth": b64url(auth)},
            })
        if self.path == "/endpoints":
            sid = b64url(os.urandom(9))
            with LOCK:
                SUBSCRIPTIONS[sid] = None
                RECEIVED[sid] = []
            port = self.server.server_address[1]
            return self.reply(200, {"id": sid, "endpoint": f"http://127.0.0.1:{port}/push/{sid}"})
        if self.path.startswith("/statuses/"):
            with LOCK:
                STATUSES[self.path.rsplit("/", 1)[1]] = json.loads(body)["statuses"]
            return self.reply(200, {})
        if self.path.startswith("/push/"):
            return self.push(self.path.rsplit("/", 1)[1], body)
        self.reply(404, {})

    def push(self, sid, body):
        with LOCK:
            known = sid in SUBSCRIPTIONS
            subscription = SUBSCRIPTIONS.get(sid)
            statuses = STATUSES.get(sid, [201])
            status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        if not known:
            return self.reply(404, {})
        origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        problems, vapid_key = check_vapid(self.headers.get("Authorization", ""), origin)
        payload, error = None, None
        if self.headers.get("Content-Encoding") != "aes128gcm":
            problems.append("Content-Encoding is not aes128gcm")
        if subscription is not None:
            try:
                payload = http_ece.decrypt(
                    body, private_key=subscription["key"], auth_secret=subscription["auth"], version="aes128gcm"
                ).decode()
            except Exception as err:  # any failure to decrypt is what the test looks for
                error = repr(err)
        record = {
            "status": status,
            "payload": payload,
            "decrypt_error": error,
            "vapid_problems": problems,
            "vapid_key": vapid_key,
            "ttl": self.headers.get("TTL"),
            "urgency": self.headers.get("Urgency"),
            "topic": self.headers.get("Topic"),
            "body_bytes": len(body),
            "body": b64url(body),
        }
        with LOCK:
            RECEIVED[sid].append(record)
        if status == 0:
            time.sleep(30)
            return
        headers = [("Retry-After", "1")] if status in (429, 503) else []
        if 300 <= status < 400:
            headers.append(("Location", self.path))
        self.reply(status, {}, headers)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # Ends with its parent: the test holds stdin open while it lives.
    sys.stdin.read()


if __name__ == "__main__":
    main()
