/**
 * Safety numbers: SHA-256 of `"roost/v1/safety-number\0" || smaller user id || larger user id`
 * (raw 32-byte identity keys, compared byte by byte), as twelve groups of five digits (each
 * group: two digest bytes as a big-endian number modulo 100,000). Both users compute the same.
 */

import { fromBase64Url } from "./bytes.js";

const LABEL = new TextEncoder().encode("roost/v1/safety-number\0");

function compare(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const difference = (a[i] ?? 0) - (b[i] ?? 0);
    if (difference !== 0) {
      return difference;
    }
  }
  return a.length - b.length;
}

/** The safety number of two users, given their user ids (base64url identity keys). */
export async function safetyNumber(a: string, b: string): Promise<string> {
  const [first, second] = [fromBase64Url(a), fromBase64Url(b)].sort(compare);
  const input = new Uint8Array(LABEL.length + 64);
  input.set(LABEL, 0);
  input.set(first ?? new Uint8Array(), LABEL.length);
  input.set(second ?? new Uint8Array(), LABEL.length + 32);
  const digest = new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", input));
  const groups: string[] = [];
  for (let i = 0; i < 24; i += 2) {
    groups.push(((((digest[i] ?? 0) << 8) | (digest[i + 1] ?? 0)) % 100_000).toString().padStart(5, "0"));
  }
  return groups.join(" ");
}
