/**
 * MLS through ts-mls, as docs/protocol.md describes it: ciphersuite
 * MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519, one leaf per device whose basic credential
 * is `user_id || device_id || device certificate` and whose signature key is the device key,
 * every MLS byte string a TLS-serialised MLSMessage. Every leaf this SDK meets (claimed, added or
 * joined) is checked: the certificate must verify under the user id for that device, and the
 * leaf must sign with that device's key.
 */

import {
  type AuthenticationService,
  type ClientState,
  type Credential,
  type KeyPackage,
  type MlsContext,
  type PrivateKeyPackage,
  decode,
  defaultCredentialTypes,
  encode,
  generateKeyPackageWithKey,
  getCiphersuiteImpl,
  joinGroup,
  makeKeyPackageRef,
  mlsMessageDecoder,
  mlsMessageEncoder,
  createApplicationMessage,
  processPrivateMessage,
  protocolVersions,
  wireformats,
} from "ts-mls";

import { toBase64Url } from "./bytes.js";
import { type KeyPair, verify } from "./keys.js";
import { deviceCertificateStatement } from "./statements.js";

/** The only ciphersuite Roost uses. */
export const CIPHERSUITE = "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519" as const;

/** The parts of a Roost leaf credential. */
export interface LeafIdentity {
  userId: string;
  deviceId: string;
  certificate: Uint8Array;
}

/** The leaf a credential names, if it is a Roost device certificate that verifies. */
export async function verifyLeaf(credential: Credential, signatureKey: Uint8Array): Promise<LeafIdentity | undefined> {
  if (credential.credentialType !== defaultCredentialTypes.basic || !("identity" in credential)) {
    return undefined;
  }
  const identity = credential.identity;
  if (identity.length !== 128) {
    return undefined;
  }
  const user = identity.slice(0, 32);
  const device = identity.slice(32, 64);
  const certificate = identity.slice(64);
  const leaf = { userId: toBase64Url(user), deviceId: toBase64Url(device), certificate };
  const sameKey = device.length === signatureKey.length && device.every((byte, i) => byte === signatureKey[i]);
  if (!sameKey || !(await verify(user, deviceCertificateStatement(leaf.userId, leaf.deviceId), certificate))) {
    return undefined;
  }
  return leaf;
}

/** ts-mls asks this for every credential it meets. */
export const roostAuthService: AuthenticationService = {
  async validateCredential(credential, signaturePublicKey) {
    return (await verifyLeaf(credential, signaturePublicKey)) !== undefined;
  },
};

/** A KeyPackage this device made, with the private keys that open a Welcome to it. */
export interface OwnKeyPackage {
  publicPackage: KeyPackage;
  privatePackage: PrivateKeyPackage;
  /** Its TLS-serialised MLSMessage, as uploaded. */
  encoded: Uint8Array;
}

/** One device's MLS side. */
export class MlsDevice {
  private constructor(
    readonly context: MlsContext,
    private readonly credential: Credential,
    private readonly device: KeyPair,
  ) {}

  /** For `device` (an extractable key) of the user `userId`, certified by `certificate`. */
  static async create(userId: Uint8Array, device: KeyPair, certificate: Uint8Array): Promise<MlsDevice> {
    const cipherSuite = await getCiphersuiteImpl(CIPHERSUITE);
    const identity = new Uint8Array(128);
    identity.set(userId, 0);
    identity.set(device.publicKey, 32);
    identity.set(certificate, 64);
    const credential: Credential = { credentialType: defaultCredentialTypes.basic, identity };
    return new MlsDevice({ cipherSuite, authService: roostAuthService }, credential, device);
  }

  /** A fresh KeyPackage signed by the device key. */
  async keyPackage(): Promise<OwnKeyPackage> {
    if (this.device.seed === undefined) {
      throw new Error("the device key must be extractable to sign its MLS leaf");
    }
    const made = await generateKeyPackageWithKey({
      credential: this.credential,
      signatureKeyPair: { signKey: this.device.seed, publicKey: this.device.publicKey },
      cipherSuite: this.context.cipherSuite,
      // No GREASE extension in the KeyPackage: ts-mls would add one without listing it in the
      // leaf's capabilities, and OpenMLS (the Rust SDK) then refuses the package.
      extensions: [],
    });
    const encoded = encode(mlsMessageEncoder, {
      version: protocolVersions.mls10,
      wireformat: wireformats.mls_key_package,
      keyPackage: made.publicPackage,
    });
    return { ...made, encoded };
  }

  /** Joins the group a Welcome (a TLS-serialised MLSMessage) adds this device to, with the one
   * of `packages` it was made for; every member's leaf is checked. */
  async join(welcomeBytes: Uint8Array, packages: OwnKeyPackage[]): Promise<ClientState> {
    const message = decode(mlsMessageDecoder, welcomeBytes);
    if (message?.wireformat !== wireformats.mls_welcome) {
      throw new Error("not an MLS Welcome");
    }
    const refs = message.welcome.secrets.map((secret) => toBase64Url(secret.newMember));
    for (const own of packages) {
      const ref = toBase64Url(await makeKeyPackageRef(own.publicPackage, this.context.cipherSuite.hash));
      if (refs.includes(ref)) {
        return joinGroup({
          context: this.context,
          welcome: message.welcome,
          keyPackage: own.publicPackage,
          privateKeys: own.privatePackage,
        });
      }
    }
    throw new Error("the Welcome is for none of this device's KeyPackages");
  }

  /** Seals an application message (content bytes) as a TLS-serialised MLSMessage; returns the
   * group's next state, the bytes to send and the epoch they were made in. */
  async seal(state: ClientState, plaintext: Uint8Array): Promise<{ state: ClientState; bytes: Uint8Array; epoch: bigint }> {
    const epoch = state.groupContext.epoch;
    const made = await createApplicationMessage({ context: this.context, state, message: plaintext });
    return { state: made.newState, bytes: encode(mlsMessageEncoder, made.message), epoch };
  }

  /** Opens an application message (a TLS-serialised MLSMessage). */
  async open(state: ClientState, bytes: Uint8Array): Promise<{ state: ClientState; plaintext: Uint8Array }> {
    const message = decode(mlsMessageDecoder, bytes);
    if (message?.wireformat !== wireformats.mls_private_message) {
      throw new Error("not an MLS PrivateMessage");
    }
    const result = await processPrivateMessage({ context: this.context, state, privateMessage: message.privateMessage });
    if (result.kind !== "applicationMessage") {
      throw new Error("not an application message");
    }
    return { state: result.newState, plaintext: result.message };
  }
}
