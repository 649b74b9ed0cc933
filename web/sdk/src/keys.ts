/**
 * Ed25519 keys through WebCrypto (browsers and Node 20 alike): the user's identity key and each
 * device's key. Ids are the raw 32-byte public keys in base64url.
 */

import { toBase64Url } from "./bytes.js";

/** An Ed25519 key pair. */
export class KeyPair {
  private constructor(
    private readonly privateKey: CryptoKey,
    /** The raw 32-byte public key. */
    readonly publicKey: Uint8Array,
    /** The 32-byte private seed, for keys that must sign elsewhere too (a device's MLS leaf). */
    readonly seed: Uint8Array | undefined,
  ) {}

  /**
   * A fresh key pair. A device key is `extractable`: its seed also signs the device's MLS leaf
   * (ts-mls takes raw keys) and is what the device's state keeps.
   */
  static async generate(extractable = false): Promise<KeyPair> {
    const pair = (await crypto.subtle.generateKey({ name: "Ed25519" }, extractable, ["sign", "verify"])) as CryptoKeyPair;
    const raw = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
    // An Ed25519 PKCS#8 document ends with the 32-byte seed.
    const seed = extractable ? new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey)).slice(-32) : undefined;
    return new KeyPair(pair.privateKey, raw, seed);
  }

  /** The id this key is known by: its public key in base64url. */
  get id(): string {
    return toBase64Url(this.publicKey);
  }

  /** The 64-byte Ed25519 signature of `message`. */
  async sign(message: Uint8Array): Promise<Uint8Array> {
    return new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, this.privateKey, message as BufferSource));
  }
}

/** Whether `signature` is `publicKey`'s Ed25519 signature of `message`. */
export async function verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): Promise<boolean> {
  try {
    const key = await crypto.subtle.importKey("raw", publicKey as BufferSource, { name: "Ed25519" }, false, ["verify"]);
    return await crypto.subtle.verify({ name: "Ed25519" }, key, signature as BufferSource, message as BufferSource);
  } catch {
    return false;
  }
}
