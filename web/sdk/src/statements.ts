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
