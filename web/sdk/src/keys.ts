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
  ) {}

  /** A fresh key pair; `extractable` lets it be saved (a device's state) or not. */
  static async generate(extractable = false): Promise<KeyPair> {
    const pair = (await crypto.subtle.generateKey({ name: "Ed25519" }, extractable, ["sign", "verify"])) as CryptoKeyPair;
    const raw = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
    return new KeyPair(pair.privateKey, raw);
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
