#!/usr/bin/env python3
"""Drive roostd over raw HTTP with an independent Ed25519 implementation.

Registers alice with three devices (two of them linked through the link-code flow) and bob with
one, authenticates every device, claims a handle, uploads and claims KeyPackages, and shows that a
replayed challenge is refused. Needs only the Python standard library and `cryptography`
(pip install cryptography). Usage: python3 docs/examples/raw_http_walkthrough.py [BASE_URL]
"""

import base64
import hashlib
import json
import sys
import time
import urllib.error
import urllib.request

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def call(method, path, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request) as response:
            text = response.read().decode()
            return response.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read().decode())


class Key:
    """An Ed25519 key pair; its id is the unpadded base64url of the public key."""

    def __init__(self):
        self.private = Ed25519PrivateKey.generate()
        self.public = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.id = b64(self.public)

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)


# The signed statements of docs/protocol.md, byte for byte.
def device_certificate(identity: Key, device: Key) -> str:
    return b64(identity.sign(b"roost/v1/device-certificate\0" + identity.public + device.public))


def auth_statement(server_name: str, device: Key, challenge: bytes) -> bytes:
    name = server_name.encode()
    return b"roost/v1/auth\0" + len(name).to_bytes(2, "big") + name + device.public + challenge


def handle_statement(action: str, identity: Key, handle: str, timestamp_ms: int) -> bytes:
    return (
        b"roost/v1/handle\0" + action.encode() + b"\0" + identity.public
        + len(handle).to_bytes(2, "big") + handle.encode() + timestamp_ms.to_bytes(8, "big", signed=True)
    )


def link_code(device: Key) -> str:
    digest = hashlib.sha256(b"roost/v1/link-code\0" + device.public).digest()
    bits = int.from_bytes(digest[:5], "big")
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    code = "".join(alphabet[(bits >> (35 - 5 * i)) & 31] for i in range(8))
    return code[:4] + "-" + code[4:]


def expect(status, body, wanted):
    if status != wanted:
        sys.exit(f"expected HTTP {wanted}, got {status}: {body}")
    return body


def login(device: Key) -> str:
    challenge = expect(*call("POST", "/v1/auth/challenge", {"device_id": device.id}), 200)
    raw = unb64(challenge["challenge"])
    signature = device.sign(auth_statement(challenge["server_name"], device, raw))
    answer = {"device_id": device.id, "challenge": challenge["challenge"], "signature": b64(signature)}
    session = expect(*call("POST", "/v1/auth/session", answer), 201)
    # The same answer again is a replay.
    status, error = call("POST", "/v1/auth/session", answer)
    assert status == 401 and error["error"]["code"] == "challenge_used", error
    return session["token"]


def register(name: str):
    identity, device = Key(), Key()
    body = {
        "identity_key": identity.id,
        "device_id": device.id,
        "device_certificate": device_certificate(identity, device),
        "device_name": f"{name}'s laptop",
    }
    expect(*call("POST", "/v1/users", body), 201)
    token = login(device)
    print(f"registered {name}: user {identity.id[:12]}…, device {device.id[:12]}…")
    return identity, [(device, token)]


def link(name: str, identity: Key, approver_token: str):
    device = Key()
    started = expect(*call("POST", "/v1/links", {"device_id": device.id}), 201)
    code = started["link_code"]
    print(f"{name}'s new device shows link code {code}")
    # The approving device looks the request up and checks the key against the code.
    seen = expect(*call("GET", f"/v1/links/{code}"), 200)
    assert seen["device_id"] == device.id and link_code(device) == code
    approve = {"device_certificate": device_certificate(identity, device), "device_name": "phone"}
    expect(*call("POST", f"/v1/links/{code}/approve", approve, approver_token), 201)
    polled = expect(*call("GET", f"/v1/links/{code}"), 200)
    assert polled["state"] == "approved" and polled["user_id"] == identity.id
    return device, login(device)


def main():
    expect(*call("GET", "/healthz"), 200)
    alice, alice_devices = register("alice")
    bob, bob_devices = register("bob")
    for _ in range(2):
        alice_devices.append(link("alice", alice, alice_devices[0][1]))

    for device, token in alice_devices + bob_devices:
        me = expect(*call("GET", "/v1/auth/session", token=token), 200)
        assert me["device_id"] == device.id
    listed = expect(*call("GET", f"/v1/users/{alice.id}/devices", token=bob_devices[0][1]), 200)
    print(f"bob sees {len(listed['devices'])} devices for alice")
    assert len(listed["devices"]) == 3

    now = int(time.time() * 1000)
    handle = "alice" + alice.id[:6].lower().replace("-", "_")
    claim = {"timestamp": now, "signature": b64(alice.sign(handle_statement("claim", alice, handle, now)))}
    expect(*call("POST", f"/v1/handles/{handle}/claim", claim, alice_devices[0][1]), 200)
    resolved = expect(*call("GET", f"/v1/handles/@{handle}", token=bob_devices[0][1]), 200)
    assert resolved["user_id"] == alice.id
    print(f"@{handle} resolves to alice")

    for index, (device, token) in enumerate(alice_devices):
        upload = {"one_time": [b64(f"kp-{index}-{i}".encode()) for i in range(3)], "last_resort": b64(b"last")}
        expect(*call("POST", "/v1/keys/packages", upload, token), 200)
    claimed = expect(*call("POST", "/v1/keys/claim", {"user_ids": [alice.id]}, bob_devices[0][1]), 200)
    assert len(claimed["packages"]) == 3
    print(f"bob claimed {len(claimed['packages'])} KeyPackages, one per alice device")
    print("ok")


if __name__ == "__main__":
    main()
