/**
 * The Rust SDK's shared test vectors (crates/roost-client/tests/vectors.json): this SDK reads
 * and writes exactly what the Rust SDK does.
 */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { classify, decodeContent, encodeContent, fromBase64Url, PAD_TO, safetyNumber, toBase64Url } from "../src/index.js";

const vectors = JSON.parse(
  readFileSync(new URL("../../../../crates/roost-client/tests/vectors.json", import.meta.url), "utf8"),
) as {
  content: { json: { v: number; type: string }; encoded: string }[];
  unknown_content: { encoded: string; type: string };
  safety_number: { a: string; b: string; number: string };
};

test("every content vector decodes to its JSON and encodes back to it", () => {
  assert.ok(vectors.content.length >= 14);
  for (const { json, encoded } of vectors.content) {
    const bytes = fromBase64Url(encoded);
    assert.deepEqual(decodeContent(bytes), json);
    const written = encodeContent(json);
    assert.equal(written.length % PAD_TO, 0);
    assert.deepEqual(decodeContent(written), json);
    assert.notEqual(classify(json).type, "unknown", json.type);
  }
});

test("a newer content type is kept as unknown", () => {
  const json = decodeContent(fromBase64Url(vectors.unknown_content.encoded));
  const seen = classify(json);
  assert.equal(seen.type, "unknown");
  assert.equal("typeName" in seen ? seen.typeName : undefined, vectors.unknown_content.type);
});

test("broken framing is refused", () => {
  const good = encodeContent({ type: "text", body: "hi" });
  const padded = good.slice();
  padded[padded.length - 1] = 1;
  assert.throws(() => decodeContent(padded), /padding/);
  const long = good.slice();
  new DataView(long.buffer).setUint32(0, 10_000, false);
  assert.throws(() => decodeContent(long), /past its end/);
  assert.throws(() => decodeContent(new Uint8Array(2)), /shorter/);
});

test("a JSON of exactly 252 bytes gets no padding", () => {
  const body = "x".repeat(252 - JSON.stringify({ v: 1, type: "text", body: "" }).length);
  assert.equal(encodeContent({ type: "text", body }).length, 256);
  assert.equal(encodeContent({ type: "text", body: body + "y" }).length, 512);
});

test("safety numbers match the Rust SDK's, whichever side computes them", async () => {
  const { a, b, number } = vectors.safety_number;
  assert.equal(await safetyNumber(a, b), number);
  assert.equal(await safetyNumber(b, a), number);
});

test("base64url is canonical", () => {
  for (const length of [0, 1, 2, 3, 31, 32, 33]) {
    const bytes = Uint8Array.from({ length }, (_, i) => (i * 37) & 0xff);
    assert.deepEqual(fromBase64Url(toBase64Url(bytes)), bytes);
  }
  assert.throws(() => fromBase64Url("AB="));
  assert.throws(() => fromBase64Url("AB+/"));
  assert.throws(() => fromBase64Url("AR"), /trailing bits/);
  assert.throws(() => fromBase64Url("A"), /length/);
});
