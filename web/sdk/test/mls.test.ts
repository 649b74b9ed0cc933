/**
 * What the SDK makes with ts-mls that the Rust SDK reads: GroupInfo with the `external_pub`
 * extension in RFC 9420's encoding (the HPKE public key with its varint length; removing
 * `withRfcExternalPub` fails these tests and the interop test in which a Rust device joins by
 * external commit from a GroupInfo made here), and KeyPackages with the Rust SDK's lifetime.
 */

import assert from "node:assert/strict";
import { test } from "node:test";

import { decode, defaultExtensionTypes, mlsMessageDecoder, wireformats } from "ts-mls";

import { deviceCertificateStatement, KeyPair, MlsDevice, verify, withRfcExternalPub } from "../src/index.js";

async function device(): Promise<{ mls: MlsDevice; key: KeyPair }> {
  const identity = await KeyPair.generate();
  const key = await KeyPair.generate(true);
  const certificate = await identity.sign(deviceCertificateStatement(identity.id, key.id));
  return { mls: await MlsDevice.create(identity.publicKey, key, certificate), key };
}

function varint(length: number): Uint8Array {
  return length < 64 ? Uint8Array.of(length) : Uint8Array.of(0x40 | (length >> 8), length & 0xff);
}

test("the GroupInfo's external_pub carries its length prefix, and the GroupInfo is signed again", async () => {
  const { mls, key } = await device();
  const made = await mls.createGroup(crypto.getRandomValues(new Uint8Array(16)), []);
  const message = decode(mlsMessageDecoder, made.groupInfo);
  assert.equal(message?.wireformat, wireformats.mls_group_info);
  if (message?.wireformat !== wireformats.mls_group_info) {
    return;
  }
  const info = message.groupInfo;
  const externalPub = info.extensions.find((extension) => extension.extensionType === defaultExtensionTypes.external_pub);
  assert.ok(externalPub, "the GroupInfo carries external_pub");
  assert.equal(externalPub.extensionData.length, 33);
  assert.equal(externalPub.extensionData[0], 32, "a one-byte varint: 32 bytes of X25519 key follow");
  assert.ok(
    info.extensions.some((extension) => extension.extensionType === defaultExtensionTypes.ratchet_tree),
    "and the ratchet tree",
  );

  // The signature covers the corrected extension: SignWithLabel("GroupInfoTBS", the encoding
  // without its signature), verified with the device key that made the group.
  const tbs = made.groupInfo.subarray(4, made.groupInfo.length - varint(info.signature.length).length - info.signature.length);
  const label = new TextEncoder().encode("MLS 1.0 GroupInfoTBS");
  const content = new Uint8Array([...varint(label.length), ...label, ...varint(tbs.length), ...tbs]);
  assert.ok(await verify(key.publicKey, content, info.signature));
});

test("a GroupInfo that already has the prefix is left as it is", async () => {
  const { mls } = await device();
  const made = await mls.createGroup(crypto.getRandomValues(new Uint8Array(16)), []);
  const message = decode(mlsMessageDecoder, made.groupInfo);
  if (message?.wireformat !== wireformats.mls_group_info) {
    assert.fail("not a GroupInfo");
  }
  const again = await withRfcExternalPub(message.groupInfo, new Uint8Array(32), mls.context);
  assert.equal(again, message.groupInfo);
});

test("KeyPackages live as the Rust SDK's do: from an hour ago for 84 days", async () => {
  const { mls } = await device();
  const before = BigInt(Math.floor(Date.now() / 1000));
  const own = await mls.keyPackage(true);
  const lifetime = own.publicPackage.leafNode.lifetime;
  assert.ok(lifetime, "a KeyPackage's leaf has a lifetime");
  assert.ok(lifetime.notBefore <= before - 3600n && lifetime.notBefore >= before - 3602n);
  assert.ok(lifetime.notAfter >= before + 84n * 86400n && lifetime.notAfter <= before + 84n * 86400n + 2n);
  assert.ok(
    own.publicPackage.extensions.some((extension) => extension.extensionType === 0x000a),
    "and a last-resort one says so",
  );
});
