/** The signed statements byte for byte, as docs/protocol.md's test vectors give them. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { authStatement, deviceCertificateStatement, toBase64Url, toHex } from "../src/index.js";

const user = toBase64Url(new Uint8Array(32).fill(1));
const device = toBase64Url(new Uint8Array(32).fill(2));

test("the device certificate statement", () => {
  const expected = "726f6f73742f76312f6465766963652d636572746966696361746500" + "01".repeat(32) + "02".repeat(32);
  assert.equal(toHex(deviceCertificateStatement(user, device)), expected);
});

test("the authentication statement", () => {
  const expected =
    "726f6f73742f76312f6175746800" + "000d" + "726f6f73742e6578616d706c65" + "02".repeat(32) + "aabb";
  assert.equal(toHex(authStatement("roost.example", device, Uint8Array.of(0xaa, 0xbb))), expected);
});

test("ids of another length are refused", () => {
  assert.throws(() => deviceCertificateStatement(toBase64Url(new Uint8Array(31)), device), /32 bytes/);
});
