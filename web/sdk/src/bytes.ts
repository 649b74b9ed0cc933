/**
 * Byte strings as the protocol writes them: unpadded base64url (RFC 4648, section 5), and hex.
 */

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/** Unpadded base64url of `bytes`. */
export function toBase64Url(bytes: Uint8Array): string {
  let text = "";
  for (let i = 0; i < bytes.length; i += 3) {
    const chunk = ((bytes[i] ?? 0) << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
    const count = Math.min(3, bytes.length - i) + 1;
    for (let j = 0; j < count; j++) {
      text += ALPHABET[(chunk >> (18 - 6 * j)) & 63];
    }
  }
  return text;
}

/**
 * The bytes of unpadded base64url `text`; throws on padding, other alphabets, impossible
 * lengths and non-zero trailing bits (the protocol accepts only canonical encodings).
 */
export function fromBase64Url(text: string): Uint8Array {
  if (text.length % 4 === 1) {
    throw new Error("not base64url: impossible length");
  }
  const out = new Uint8Array(Math.floor((text.length * 3) / 4));
  let bits = 0;
  let value = 0;
  let at = 0;
  for (const char of text) {
    const digit = ALPHABET.indexOf(char);
    if (digit < 0) {
      throw new Error(`not base64url: ${JSON.stringify(char)}`);
    }
    value = (value << 6) | digit;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[at++] = (value >> bits) & 0xff;
    }
  }
  if ((value & ((1 << bits) - 1)) !== 0) {
    throw new Error("not base64url: non-canonical trailing bits");
  }
  return out;
}

/** Lowercase hex of `bytes`. */
export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}
