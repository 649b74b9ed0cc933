/**
 * Ed25519 keys through WebCrypto (browsers and Node 20 alike): the user's identity key and each
 * device's key. Ids are the raw 32-byte public keys in base64url.
 */

import { fromBase64Url, toBase64Url } from "./bytes.js";

const PKCS8_PREFIX = Uint8Array.of(0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20);

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

  /**
   * The key pair of a 32-byte Ed25519 seed (as {@link KeyPair.seed} gave it): how a device's
   * saved state brings its keys back.
   */
  static async fromSeed(seed: Uint8Array): Promise<KeyPair> {
    if (seed.length !== 32) {
      throw new Error("an Ed25519 seed is 32 bytes");
    }
    // The PKCS#8 document of an Ed25519 key is this fixed prefix, then the seed (RFC 8410).
    const pkcs8 = new Uint8Array(PKCS8_PREFIX.length + 32);
    pkcs8.set(PKCS8_PREFIX, 0);
    pkcs8.set(seed, PKCS8_PREFIX.length);
    const privateKey = await crypto.subtle.importKey("pkcs8", pkcs8 as BufferSource, { name: "Ed25519" }, true, ["sign"]);
    const jwk = await crypto.subtle.exportKey("jwk", privateKey);
    if (jwk.x === undefined) {
      throw new Error("the key has no public part");
    }
    return new KeyPair(privateKey, fromBase64Url(jwk.x), seed.slice());
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
