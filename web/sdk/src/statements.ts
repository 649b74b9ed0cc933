/**
 * The byte strings Roost's signatures cover (docs/protocol.md, "Signed statements"): each starts
 * with its own label, so a signature made for one purpose never verifies as another. Ids are
 * the raw 32 key bytes.
 */

import { fromBase64Url } from "./bytes.js";

const encoder = new TextEncoder();

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function u16be(value: number): Uint8Array {
  return Uint8Array.of((value >> 8) & 0xff, value & 0xff);
}

function key(id: string): Uint8Array {
  const bytes = fromBase64Url(id);
  if (bytes.length !== 32) {
    throw new Error("a user or device id is 32 bytes");
  }
  return bytes;
}

/** What the identity key signs to certify a device of its user. */
export function deviceCertificateStatement(userId: string, deviceId: string): Uint8Array {
  return concat(encoder.encode("roost/v1/device-certificate\0"), key(userId), key(deviceId));
}

/** What a device signs to authenticate to the server named `serverName`. */
export function authStatement(serverName: string, deviceId: string, challenge: Uint8Array): Uint8Array {
  const name = encoder.encode(serverName);
  return concat(encoder.encode("roost/v1/auth\0"), u16be(name.length), name, key(deviceId), challenge);
}

/** What the identity key signs to revoke one of its user's devices. */
export function revokeDeviceStatement(userId: string, deviceId: string): Uint8Array {
  return concat(encoder.encode("roost/v1/revoke-device\0"), key(userId), key(deviceId));
}

/**
 * What the identity key signs to claim or release a handle at `timestampMs` (which the server
 * wants within 5 minutes of its clock).
 */
export function handleStatement(action: "claim" | "release", userId: string, handle: string, timestampMs: number): Uint8Array {
  const name = encoder.encode(handle);
  const time = new Uint8Array(8);
  new DataView(time.buffer).setBigInt64(0, BigInt(timestampMs));
  return concat(encoder.encode("roost/v1/handle\0"), encoder.encode(`${action}\0`), key(userId), u16be(name.length), name, time);
}

const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/**
 * The code a new device shows while it waits to be linked: the first 40 bits of
 * `SHA-256("roost/v1/link-code\0" || device_id)` in Crockford base32, as `XXXX-XXXX`. The
 * approving device recomputes it from the key the server returns, so a swapped key shows.
 */
export async function linkCode(deviceId: string): Promise<string> {
  const input = concat(encoder.encode("roost/v1/link-code\0"), key(deviceId));
  const digest = new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", input as BufferSource));
  let bits = 0n;
  for (const byte of digest.slice(0, 5)) {
    bits = (bits << 8n) | BigInt(byte);
  }
  let code = "";
  for (let i = 0; i < 8; i++) {
    if (i === 4) {
      code += "-";
    }
    code += CROCKFORD[Number((bits >> BigInt(35 - 5 * i)) & 0x1fn)];
  }
  return code;
}
