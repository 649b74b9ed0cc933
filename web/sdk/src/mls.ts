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
  type GroupInfo,
  type KeyPackage,
  type MlsContext,
  type PrivateKeyPackage,
  type Proposal,
  clientStateDecoder,
  clientStateEncoder,
  createApplicationMessage,
  createCommit,
  createGroup,
  createGroupInfoWithExternalPubAndRatchetTree,
  decode,
  defaultCapabilities,
  defaultCredentialTypes,
  defaultExtensionTypes,
  defaultProposalTypes,
  encode,
  generateKeyPackageWithKey,
  getCiphersuiteImpl,
  joinGroup,
  keyPackageDecoder,
  keyPackageEncoder,
  makeCustomExtension,
  makeKeyPackageRef,
  mlsMessageDecoder,
  mlsMessageEncoder,
  nodeTypes,
  privateKeyPackageDecoder,
  privateKeyPackageEncoder,
  processPrivateMessage,
  processPublicMessage,
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

/**
 * A KeyPackage's lifetime as docs/protocol.md gives it (OpenMLS's default, what the Rust SDK
 * makes): from an hour before now until 84 days after. ts-mls's own default ends after 15
 * days, too soon for a last-resort package that may wait months to be claimed.
 */
export function keyPackageLifetime(now = Date.now()): { notBefore: bigint; notAfter: bigint } {
  const seconds = Math.floor(now / 1000);
  return { notBefore: BigInt(seconds - 3600), notAfter: BigInt(seconds + 84 * 86400) };
}

/** The extension that marks a last-resort KeyPackage (RFC 9420, section 17.3). */
const LAST_RESORT_EXTENSION = 0x000a;

/** An own KeyPackage as kept in a device's state: the public and private parts, TLS-encoded. */
export function saveKeyPackage(own: OwnKeyPackage): Uint8Array {
  const publicPart = encode(keyPackageEncoder, own.publicPackage);
  const privatePart = encode(privateKeyPackageEncoder, own.privatePackage);
  const out = new Uint8Array(4 + publicPart.length + privatePart.length);
  new DataView(out.buffer).setUint32(0, publicPart.length);
  out.set(publicPart, 4);
  out.set(privatePart, 4 + publicPart.length);
  return out;
}

/** The own KeyPackage {@link saveKeyPackage} kept. */
export function loadKeyPackage(saved: Uint8Array): OwnKeyPackage {
  const length = new DataView(saved.buffer, saved.byteOffset, saved.byteLength).getUint32(0);
  const publicPackage = decode(keyPackageDecoder, saved.subarray(4, 4 + length));
  const privatePackage = decode(privateKeyPackageDecoder, saved.subarray(4 + length));
  if (publicPackage === undefined || privatePackage === undefined) {
    throw new Error("a saved KeyPackage does not decode");
  }
  const encoded = encode(mlsMessageEncoder, {
    version: protocolVersions.mls10,
    wireformat: wireformats.mls_key_package,
    keyPackage: publicPackage,
  });
  return { publicPackage, privatePackage, encoded };
}

/** A group's state as kept in a device's state. */
export function saveGroup(state: ClientState): Uint8Array {
  return encode(clientStateEncoder, state);
}

/** The group state {@link saveGroup} kept. */
export function loadGroup(saved: Uint8Array): ClientState {
  const state = decode(clientStateDecoder, saved);
  if (state === undefined) {
    throw new Error("a saved group does not decode");
  }
  return state;
}

/** A member of a group: its leaf index and its verified Roost identity. */
export interface Member extends LeafIdentity {
  leafIndex: number;
}

/** Every member of the group, each leaf verified (a leaf that fails throws). */
export async function members(state: ClientState): Promise<Member[]> {
  const found: Member[] = [];
  for (let node = 0; node < state.ratchetTree.length; node += 2) {
    const leaf = state.ratchetTree[node];
    if (leaf?.nodeType !== nodeTypes.leaf) {
      continue;
    }
    const identity = await verifyLeaf(leaf.leaf.credential, leaf.leaf.signaturePublicKey);
    if (identity === undefined) {
      throw new Error(`leaf ${node / 2} of the group does not chain to its user`);
    }
    found.push({ ...identity, leafIndex: node / 2 });
  }
  return found;
}

/** This device's leaf index in the group. */
export function ownLeafIndex(state: ClientState): number {
  return state.privatePath.leafIndex;
}

/** Whether this device is still in the group (not removed by a commit it processed). */
export function isActive(state: ClientState): boolean {
  return state.groupActiveState.kind === "active";
}

/** What a member's commit gives to submit: the commit, the Welcome for added devices, the next
 * epoch's GroupInfo, and the state to keep once the server accepts it. */
export interface MadeCommit {
  state: ClientState;
  /** The epoch the commit was made in (what `POST .../commits` names). */
  epoch: bigint;
  commit: Uint8Array;
  welcome: Uint8Array | undefined;
  groupInfo: Uint8Array;
}

/** The MLS varint (RFC 9420, section 2.1.2) of `length`. */
function varint(length: number): Uint8Array {
  if (length < 1 << 6) {
    return Uint8Array.of(length);
  }
  if (length < 1 << 14) {
    return Uint8Array.of(0x40 | (length >> 8), length & 0xff);
  }
  if (length < 1 << 30) {
    return Uint8Array.of(0x80 | (length >>> 24), (length >> 16) & 0xff, (length >> 8) & 0xff, length & 0xff);
  }
  throw new Error("too long for an MLS vector");
}

/**
 * THE ONE PLACE the SDK corrects ts-mls's GroupInfo encoding. RFC 9420 (section 12.4.3.2)
 * defines the `external_pub` extension as `struct { HPKEPublicKey external_pub; }`, where
 * `HPKEPublicKey` is `opaque<V>`: the extension's data is the public key with a varint length
 * before it. ts-mls up to 2.0.0-rc.10 writes the bare key, which OpenMLS (the Rust SDK) cannot
 * read: a Rust device joining by external commit from such a GroupInfo fails. This adds the
 * length prefix and signs the GroupInfo again with the committer's leaf key (the signature
 * covers the extensions). A GroupInfo whose `external_pub` already carries the prefix (a fixed
 * ts-mls) is returned unchanged, so the correction can stay after an upgrade.
 *
 * Only GroupInfo this SDK uploads passes here: the Rust SDK reads it. Welcomes are unaffected
 * (their GroupInfo carries no `external_pub`), so adding a device by Welcome works either way.
 */
export async function withRfcExternalPub(info: GroupInfo, signaturePrivateKey: Uint8Array, context: MlsContext): Promise<GroupInfo> {
  // An X25519 public key (the only ciphersuite Roost uses); with its prefix it would be 33 bytes.
  const keyLength = 32;
  let changed = false;
  const extensions = info.extensions.map((extension) => {
    if (extension.extensionType !== defaultExtensionTypes.external_pub || extension.extensionData.length !== keyLength) {
      return extension;
    }
    changed = true;
    const prefix = varint(extension.extensionData.length);
    const data = new Uint8Array(prefix.length + extension.extensionData.length);
    data.set(prefix, 0);
    data.set(extension.extensionData, prefix.length);
    return { ...extension, extensionData: data };
  });
  if (!changed) {
    return info;
  }
  const unsigned: GroupInfo = { ...info, extensions };
  // GroupInfo = GroupInfoTBS || signature<V>: the signed part is the encoding without its last
  // field (after the MLSMessage's 4-byte header).
  const whole = encode(mlsMessageEncoder, { version: protocolVersions.mls10, wireformat: wireformats.mls_group_info, groupInfo: unsigned });
  const tbs = whole.subarray(4, whole.length - varint(info.signature.length).length - info.signature.length);
  const label = new TextEncoder().encode("MLS 1.0 GroupInfoTBS");
  const labelPrefix = varint(label.length);
  const tbsPrefix = varint(tbs.length);
  const signContent = new Uint8Array(labelPrefix.length + label.length + tbsPrefix.length + tbs.length);
  signContent.set(labelPrefix, 0);
  signContent.set(label, labelPrefix.length);
  signContent.set(tbsPrefix, labelPrefix.length + label.length);
  signContent.set(tbs, labelPrefix.length + label.length + tbsPrefix.length);
  const signature = await context.cipherSuite.signature.sign(signaturePrivateKey, signContent);
  return { ...unsigned, signature };
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

  /** A fresh KeyPackage signed by the device key; `lastResort` marks it with the last-resort
   * extension (listed in the leaf's capabilities, as OpenMLS requires). */
  async keyPackage(lastResort = false): Promise<OwnKeyPackage> {
    const capabilities = defaultCapabilities();
    if (lastResort) {
      capabilities.extensions = [...capabilities.extensions, LAST_RESORT_EXTENSION];
    }
    const made = await generateKeyPackageWithKey({
      credential: this.credential,
      signatureKeyPair: this.signatureKeyPair(),
      cipherSuite: this.context.cipherSuite,
      capabilities,
      lifetime: keyPackageLifetime(),
      // No GREASE extension in the KeyPackage: ts-mls would add one without listing it in the
      // leaf's capabilities, and OpenMLS (the Rust SDK) then refuses the package.
      extensions: lastResort ? [makeCustomExtension({ extensionType: LAST_RESORT_EXTENSION, extensionData: new Uint8Array() })] : [],
    });
    const encoded = encode(mlsMessageEncoder, {
      version: protocolVersions.mls10,
      wireformat: wireformats.mls_key_package,
      keyPackage: made.publicPackage,
    });
    return { ...made, encoded };
  }

  private signatureKeyPair(): { signKey: Uint8Array; publicKey: Uint8Array } {
    if (this.device.seed === undefined) {
      throw new Error("the device key must be extractable to sign its MLS leaf");
    }
    return { signKey: this.device.seed, publicKey: this.device.publicKey };
  }

  /**
   * A new group `groupId` with this device alone, then (when `add` names KeyPackages) the commit
   * adding them: the state of the resulting epoch, its Welcome and its GroupInfo, as
   * `POST /v1/conversations` takes them (the creating commit itself is not uploaded).
   */
  async createGroup(groupId: Uint8Array, add: KeyPackage[]): Promise<{ state: ClientState; welcome: Uint8Array | undefined; groupInfo: Uint8Array }> {
    const own = await this.keyPackage();
    let state = await createGroup({
      context: this.context,
      groupId,
      keyPackage: own.publicPackage,
      privateKeyPackage: own.privatePackage,
      extensions: [],
    });
    let welcome: Uint8Array | undefined;
    if (add.length > 0) {
      const made = await this.commit(state, add.map((keyPackage) => ({ proposalType: defaultProposalTypes.add, add: { keyPackage } })));
      state = made.state;
      welcome = made.welcome;
    }
    return { state, welcome, groupInfo: await this.groupInfo(state) };
  }

  /** A commit adding `add` (KeyPackages) and removing the leaves `remove`, made in the group's
   * current epoch; the group moves on only when the caller keeps the returned state. */
  async change(state: ClientState, add: KeyPackage[], remove: number[]): Promise<MadeCommit> {
    const proposals: Proposal[] = [
      ...remove.map((removed): Proposal => ({ proposalType: defaultProposalTypes.remove, remove: { removed } })),
      ...add.map((keyPackage): Proposal => ({ proposalType: defaultProposalTypes.add, add: { keyPackage } })),
    ];
    const made = await this.commit(state, proposals);
    return { ...made, epoch: state.groupContext.epoch, groupInfo: await this.groupInfo(made.state) };
  }

  private async commit(state: ClientState, proposals: Proposal[]): Promise<{ state: ClientState; commit: Uint8Array; welcome: Uint8Array | undefined }> {
    const made = await createCommit({
      context: this.context,
      state,
      extraProposals: proposals,
      // Welcomes carry the tree; members' commits are PrivateMessages (the server refuses others).
      ratchetTreeExtension: true,
      wireAsPublicMessage: false,
    });
    return {
      state: made.newState,
      commit: encode(mlsMessageEncoder, made.commit),
      welcome: made.welcome === undefined ? undefined : encode(mlsMessageEncoder, made.welcome),
    };
  }

  /** The group's GroupInfo (with the ratchet tree and `external_pub`), TLS-serialised. */
  async groupInfo(state: ClientState): Promise<Uint8Array> {
    const made = await createGroupInfoWithExternalPubAndRatchetTree(state, [], this.context.cipherSuite);
    const groupInfo = await withRfcExternalPub(made, state.signaturePrivateKey, this.context);
    return encode(mlsMessageEncoder, { version: protocolVersions.mls10, wireformat: wireformats.mls_group_info, groupInfo });
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
    if (!isActive(state)) {
      throw new Error("this device is no longer in the group");
    }
    const made = await createApplicationMessage({ context: this.context, state, message: plaintext });
    return { state: made.newState, bytes: encode(mlsMessageEncoder, made.message), epoch };
  }

  /** Opens an application message (a TLS-serialised MLSMessage). */
  async open(state: ClientState, bytes: Uint8Array): Promise<{ state: ClientState; plaintext: Uint8Array }> {
    const result = await this.process(state, bytes);
    if (result.plaintext === undefined) {
      throw new Error("not an application message");
    }
    return { state: result.state, plaintext: result.plaintext };
  }

  /** Applies a commit: another member's (a PrivateMessage) or a new device's external commit (a
   * PublicMessage); every leaf it adds or updates is checked by {@link roostAuthService}. */
  async applyCommit(state: ClientState, bytes: Uint8Array): Promise<ClientState> {
    const result = await this.process(state, bytes);
    if (result.plaintext !== undefined) {
      throw new Error("a commit entry carried an application message");
    }
    if (result.state.groupContext.epoch === state.groupContext.epoch && isActive(result.state)) {
      throw new Error("a commit entry carried no commit");
    }
    return result.state;
  }

  private async process(state: ClientState, bytes: Uint8Array): Promise<{ state: ClientState; plaintext?: Uint8Array }> {
    const message = decode(mlsMessageDecoder, bytes);
    if (message?.wireformat === wireformats.mls_public_message) {
      // The server relays PublicMessages only as external commits (docs/protocol.md).
      const result = await processPublicMessage({ context: this.context, state, publicMessage: message.publicMessage });
      return { state: result.newState };
    }
    if (message?.wireformat !== wireformats.mls_private_message) {
      throw new Error("not an MLS PrivateMessage");
    }
    const result = await processPrivateMessage({ context: this.context, state, privateMessage: message.privateMessage });
    if (result.kind === "applicationMessage") {
      return { state: result.newState, plaintext: result.message };
    }
    return { state: result.newState };
  }
}
