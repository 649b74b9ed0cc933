/**
 * The high-level client, as the Rust SDK's `Client`: one device of one user on one server, its
 * conversations (MLS groups through {@link MlsDevice}), send, sync and ack, and the live stream.
 *
 * Everything the device knows lives in a {@link StateStore}. Whatever is received is decrypted,
 * kept (message, group state and position in one batch) and only then acknowledged, so a crash
 * costs a re-delivery, never a message. Calls on one client run one at a time.
 */

import type { ClientState, KeyPackage } from "ts-mls";
import { decode, makeKeyPackageRef, mlsMessageDecoder, wireformats } from "ts-mls";

import { Api, RoostError, type Session } from "./api.js";
import { fromBase64Url, toBase64Url, toHex } from "./bytes.js";
import { type ContentJson, decodeContent, encodeContent } from "./content.js";
import { KeyPair, verify } from "./keys.js";
import { isActive, loadGroup, loadKeyPackage, members, MlsDevice, type OwnKeyPackage, saveGroup, saveKeyPackage, verifyLeaf } from "./mls.js";
import { safetyNumber } from "./safety.js";
import { deviceCertificateStatement, handleStatement, linkCode, revokeDeviceStatement } from "./statements.js";
import type { StateStore, Write } from "./store.js";
import { type Timeline, timeline } from "./timeline.js";

/** One-time KeyPackages uploaded at registration and on `keys_low`. */
export const KEY_PACKAGE_BATCH = 20;
/** Attempts at a send or commit that meets `stale_epoch` before giving up. */
const EPOCH_RETRIES = 3;

/** A conversation's kind. */
export type ConversationKind = "direct" | "group" | "note_to_self";

/** A decrypted message, as the device keeps it. */
export interface Message {
  conversationId: string;
  seq: number;
  senderUser: string;
  senderDevice: string;
  createdAt: number;
  content: ContentJson;
}

/** Something the client found while syncing or listening. */
export type Event =
  | { type: "message"; message: Message }
  /** This device joined a conversation (from a Welcome whose members all verified). */
  | { type: "joined"; conversationId: string }
  /** Another member's commit changed the group, or a member left. */
  | { type: "members_changed"; conversationId: string }
  /** This device was removed from the conversation, or its user left it. */
  | { type: "removed"; conversationId: string }
  /** The server said this device was low on KeyPackages; `count` more were uploaded. */
  | { type: "keys_replenished"; count: number }
  /** The user read up to `seq` on another of its devices. */
  | { type: "read_marker"; conversationId: string; seq: number }
  | { type: "typing"; conversationId: string; userId: string; active: boolean }
  | { type: "read_receipt"; conversationId: string; userId: string; seq: number }
  | { type: "presence"; userId: string; online: boolean }
  /** A device of `userId` was linked or revoked. */
  | { type: "devices_changed"; userId: string }
  /** An ephemeral send (call signalling), decrypted; never stored. */
  | { type: "ephemeral"; conversationId: string; senderUser: string; senderDevice: string; content: ContentJson }
  /** The trees were brought in line with who is really there. */
  | { type: "devices_updated"; added: number; removed: number }
  /** Something could not be accepted (a leaf that does not chain to its user, undecryptable
   * ciphertext): reported, not applied. */
  | { type: "rejected"; conversationId?: string; reason: string };

/** An entry of a conversation's log, as sync and the socket carry it. */
export interface EntryFrame {
  conversation_id: string;
  seq: number;
  kind: "message" | "commit" | "leave";
  sender_user: string;
  sender_device: string;
  epoch: number;
  payload: string;
  created_at: number;
}

/** An item of the device's own queue. */
export interface QueueFrame {
  id: number;
  kind: "welcome" | "device_message" | "keys_low" | "read_marker" | "removed";
  conversation_id?: string;
  seq?: number;
  sender_device?: string;
  payload: string;
  created_at: number;
}

/** A frame the server pushes over the WebSocket (docs/protocol.md, "Server frames"). */
export type ServerFrame =
  | { type: "ready"; user_id: string; device_id: string }
  | ({ type: "entry" } & EntryFrame)
  | ({ type: "queue" } & QueueFrame)
  | { type: "queue_empty" }
  | { type: "ephemeral"; conversation_id: string; sender_user: string; sender_device: string; epoch: number; payload: string }
  | { type: "typing"; conversation_id: string; user_id: string; device_id: string; active: boolean }
  | { type: "read_receipt"; conversation_id: string; user_id: string; seq: number }
  | { type: "presence"; user_id: string; online: boolean; last_seen: number }
  | { type: "devices_changed"; user_id: string }
  | { type: "sent" | "send_failed" | "error"; [field: string]: unknown };

/** A conversation as the server lists it. */
export interface ConversationSummary {
  conversation_id: string;
  kind: ConversationKind;
  epoch: number;
  members: { user_id: string; read_seq: number }[];
  last_seq: number;
  read_seq: number;
  unread: number;
  joined_seq: number;
}

interface Account {
  server: string;
  userId: string;
  deviceId: string;
  deviceSeed: string;
  identitySeed?: string;
  certificate: string;
  token?: string;
}

interface ConversationRecord {
  kind: ConversationKind;
  /** The last entry applied (decrypted and kept, or skipped as this device's own). */
  processedSeq: number;
  /** The server said this device was removed (or its user left); a Welcome starts it over. */
  removed?: boolean;
}

interface Claimed {
  packages: { user_id: string; device_id: string; key_package: string; last_resort: boolean }[];
  missing: string[];
}

const text = new TextEncoder();
const untext = new TextDecoder();

function json(value: unknown): Uint8Array {
  return text.encode(JSON.stringify(value));
}

function parse<T>(bytes: Uint8Array): T {
  return JSON.parse(untext.decode(bytes)) as T;
}

/** Keys of the state store. Sequence numbers are zero-padded so keys sort by them. */
const keys = {
  account: "account",
  pendingLink: "pending_link",
  keyPackage: (ref: string) => `kp/${ref}`,
  conversation: (id: string) => `conv/${id}`,
  group: (id: string) => `group/${id}`,
  messages: (id: string) => `msg/${id}/`,
  message: (id: string, seq: number) => `msg/${id}/${seq.toString().padStart(16, "0")}`,
};

/** A fresh client message id: the send time in milliseconds as 12 hex digits, then 12 random
 * bytes, so the server's idempotency index grows at its end (docs/protocol.md, "Messages"). */
function newClientMessageId(): string {
  return `${Date.now().toString(16).padStart(12, "0")}${toBase64Url(crypto.getRandomValues(new Uint8Array(12)))}`;
}

function staleEpoch(error: unknown): boolean {
  return error instanceof RoostError && error.code === "stale_epoch";
}

/** One device's client. */
export class Client {
  /** The server connection, for calls the client does not cover. */
  readonly api: Api;
  private queue: Promise<unknown> = Promise.resolve();
  /** What catch-ups inside other calls found, for the next sync or frame. */
  private unreported: Event[] = [];
  private upkeepDue = false;

  private constructor(
    private readonly store: StateStore,
    private readonly account: Account,
    private readonly device: KeyPair,
    private readonly identity: KeyPair | undefined,
    readonly mls: MlsDevice,
  ) {
    this.api = new Api(account.server);
    this.api.token = account.token;
  }

  /** This user. */
  get userId(): string {
    return this.account.userId;
  }

  /** This device. */
  get deviceId(): string {
    return this.account.deviceId;
  }

  /** Whether this device holds the identity key (and can link devices, claim handles, revoke). */
  get holdsIdentity(): boolean {
    return this.identity !== undefined;
  }

  /**
   * Creates a new user with this device as its first device on `server`, keeping state in
   * `store`: makes the identity and device keys, registers, logs in and uploads KeyPackages.
   */
  static async register(store: StateStore, server: string, deviceName = "web"): Promise<Client> {
    if ((await store.get(keys.account)) !== undefined) {
      throw new Error("this store already holds an account");
    }
    const identity = await KeyPair.generate(true);
    const device = await KeyPair.generate(true);
    const api = new Api(server);
    await api.register(identity, device, deviceName);
    const certificate = await identity.sign(deviceCertificateStatement(identity.id, device.id));
    const account: Account = {
      server: api.base,
      userId: identity.id,
      deviceId: device.id,
      deviceSeed: toBase64Url(device.seed ?? new Uint8Array()),
      identitySeed: toBase64Url(identity.seed ?? new Uint8Array()),
      certificate: toBase64Url(certificate),
    };
    await store.write([[keys.account, json(account)]]);
    const client = await Client.open(store);
    await client.connect();
    await client.uploadKeyPackages(KEY_PACKAGE_BATCH, true);
    return client;
  }

  /** Opens the account kept in `store` (call {@link Client.connect} before talking to the server). */
  static async open(store: StateStore): Promise<Client> {
    const saved = await store.get(keys.account);
    if (saved === undefined) {
      throw new Error("no account in this store: register or link first");
    }
    const account = parse<Account>(saved);
    const device = await KeyPair.fromSeed(fromBase64Url(account.deviceSeed));
    const identity = account.identitySeed === undefined ? undefined : await KeyPair.fromSeed(fromBase64Url(account.identitySeed));
    const mls = await MlsDevice.create(fromBase64Url(account.userId), device, fromBase64Url(account.certificate));
    return new Client(store, account, device, identity, mls);
  }

  /** Whether `store` holds an account. */
  static async exists(store: StateStore): Promise<boolean> {
    return (await store.get(keys.account)) !== undefined;
  }

  /** Makes sure the device has a working session, logging in again if needed. */
  async connect(): Promise<void> {
    if (this.api.token !== undefined) {
      try {
        await this.api.whoami();
        return;
      } catch (error) {
        if (!(error instanceof RoostError) || error.status !== 401) {
          throw error;
        }
      }
    }
    const session: Session = await this.api.login(this.device);
    this.account.token = session.token;
    await this.store.write([[keys.account, json(this.account)]]);
  }

  /** Ends this device's session (the token stops working at once). */
  async logout(): Promise<void> {
    await this.api.logout();
    delete this.account.token;
    await this.store.write([[keys.account, json(this.account)]]);
  }

  // ---- Linking ------------------------------------------------------------------------------

  /**
   * Starts linking a new device kept in `store` to an existing user: makes the device key and
   * returns the code to approve on a device holding the identity key.
   */
  static async startLink(store: StateStore, server: string): Promise<string> {
    if ((await store.get(keys.account)) !== undefined) {
      throw new Error("this store already holds an account");
    }
    const pending = await store.get(keys.pendingLink);
    const device =
      pending === undefined
        ? await KeyPair.generate(true)
        : await KeyPair.fromSeed(fromBase64Url(parse<{ seed: string }>(pending).seed));
    const api = new Api(server);
    const link = await api.call<{ link_code: string }>("POST", "/v1/links", { device_id: device.id });
    await store.write([[keys.pendingLink, json({ server: api.base, seed: toBase64Url(device.seed ?? new Uint8Array()) })]]);
    return link.link_code;
  }

  /**
   * Finishes linking once approved: checks the certificate against the approving user's
   * identity, logs in and uploads KeyPackages. `undefined` while the link is still pending.
   */
  static async finishLink(store: StateStore): Promise<Client | undefined> {
    const pending = await store.get(keys.pendingLink);
    if (pending === undefined) {
      throw new Error("no link in progress: start one first");
    }
    const { server, seed } = parse<{ server: string; seed: string }>(pending);
    const device = await KeyPair.fromSeed(fromBase64Url(seed));
    const api = new Api(server);
    const link = await api.call<{ state: string; user_id?: string; certificate?: string }>(
      "GET",
      `/v1/links/${await linkCode(device.id)}`,
    );
    if (link.user_id === undefined || link.certificate === undefined) {
      return undefined;
    }
    const certificate = fromBase64Url(link.certificate);
    if (!(await verify(fromBase64Url(link.user_id), deviceCertificateStatement(link.user_id, device.id), certificate))) {
      throw new Error("the certificate does not chain to the approving user");
    }
    const account: Account = {
      server,
      userId: link.user_id,
      deviceId: device.id,
      deviceSeed: seed,
      certificate: link.certificate,
    };
    await store.write([
      [keys.account, json(account)],
      [keys.pendingLink, undefined],
    ]);
    const client = await Client.open(store);
    await client.connect();
    await client.uploadKeyPackages(KEY_PACKAGE_BATCH, true);
    return client;
  }

  /**
   * Approves a link request shown as `code` on the new device: checks that the device key the
   * server returns hashes to that code, then certifies it with the identity key. Returns the new
   * device's id. Its conversations come once it uploaded KeyPackages: {@link Client.upkeep}
   * (run on `devices_changed`) adds it to every conversation.
   */
  async approveLink(code: string, deviceName?: string): Promise<string> {
    const identity = this.requireIdentity();
    const wanted = code.trim().toUpperCase();
    const link = await this.api.call<{ device_id: string }>("GET", `/v1/links/${encodeURIComponent(wanted)}`);
    if ((await linkCode(link.device_id)) !== wanted) {
      throw new Error("the server returned a device key that does not match the code; not approving");
    }
    const certificate = await identity.sign(deviceCertificateStatement(this.userId, link.device_id));
    const body: Record<string, unknown> = { device_certificate: toBase64Url(certificate) };
    if (deviceName !== undefined) {
      body["device_name"] = deviceName;
    }
    await this.api.call("POST", `/v1/links/${encodeURIComponent(wanted)}/approve`, body);
    return link.device_id;
  }

  /** Revokes one of this user's devices (signed with the identity key). */
  async revokeDevice(deviceId: string): Promise<void> {
    const identity = this.requireIdentity();
    const signature = await identity.sign(revokeDeviceStatement(this.userId, deviceId));
    await this.api.call("POST", `/v1/devices/${deviceId}/revoke`, { signature: toBase64Url(signature) });
  }

  /** Claims `handle` for this user (signed with the identity key). */
  async claimHandle(handle: string): Promise<void> {
    const identity = this.requireIdentity();
    const timestamp = Date.now();
    const signature = await identity.sign(handleStatement("claim", this.userId, handle, timestamp));
    await this.api.call("POST", `/v1/handles/${encodeURIComponent(handle)}/claim`, { timestamp, signature: toBase64Url(signature) });
  }

  /** The user id behind `@handle` (or `who` itself when it is a user id). */
  async resolve(who: string): Promise<string> {
    if (who.startsWith("@")) {
      const found = await this.api.call<{ user_id: string }>("GET", `/v1/handles/${encodeURIComponent(who.slice(1))}`);
      return found.user_id;
    }
    if (fromBase64Url(who).length !== 32) {
      throw new Error(`${JSON.stringify(who)} is neither @handle nor a user id`);
    }
    return who;
  }

  /** A user's active devices, each certificate verified against the user id. */
  async devices(userId: string): Promise<{ handle?: string; devices: { device_id: string; name?: string }[] }> {
    const list = await this.api.call<{ handle?: string; devices: { device_id: string; certificate: string; name?: string }[] }>(
      "GET",
      `/v1/users/${userId}/devices`,
    );
    for (const device of list.devices) {
      if (!(await verify(fromBase64Url(userId), deviceCertificateStatement(userId, device.device_id), fromBase64Url(device.certificate)))) {
        throw new Error(`device ${device.device_id} does not chain to user ${userId}`);
      }
    }
    return list;
  }

  /** The safety number of this user and `userId`, to compare out of band. */
  async safetyNumber(userId: string): Promise<string> {
    return safetyNumber(this.userId, userId);
  }

  private requireIdentity(): KeyPair {
    if (this.identity === undefined) {
      throw new Error("this device does not hold the identity key; use the first device");
    }
    return this.identity;
  }

  // ---- KeyPackages --------------------------------------------------------------------------

  /** Makes and uploads `count` one-time KeyPackages (and a last-resort one); returns how many
   * one-time packages the server now holds. The private parts are kept before the upload. */
  async uploadKeyPackages(count: number, lastResort: boolean): Promise<number> {
    const oneTime: OwnKeyPackage[] = [];
    for (let i = 0; i < count; i++) {
      oneTime.push(await this.mls.keyPackage());
    }
    const resort = lastResort ? await this.mls.keyPackage(true) : undefined;
    const writes: Write[] = [];
    for (const own of resort === undefined ? oneTime : [...oneTime, resort]) {
      writes.push([keys.keyPackage(await this.packageRef(own.publicPackage)), saveKeyPackage(own)]);
    }
    await this.store.write(writes);
    const body: Record<string, unknown> = { one_time: oneTime.map((own) => toBase64Url(own.encoded)) };
    if (resort !== undefined) {
      body["last_resort"] = toBase64Url(resort.encoded);
    }
    const counted = await this.api.call<{ one_time: number }>("POST", "/v1/keys/packages", body);
    return counted.one_time;
  }

  private async packageRef(keyPackage: KeyPackage): Promise<string> {
    return toBase64Url(await makeKeyPackageRef(keyPackage, this.mls.context.cipherSuite.hash));
  }

  /**
   * Claims one KeyPackage per active device of `users` and per device of `devices` (this device
   * excluded) and checks each: a KeyPackage whose leaf does not chain to the user it was
   * claimed for, or names another device, is refused.
   */
  private async claim(users: string[], devices: string[], allowMissing = false): Promise<{ deviceId: string; keyPackage: KeyPackage }[]> {
    const claimed = await this.api.call<Claimed>("POST", "/v1/keys/claim", { user_ids: users, device_ids: devices });
    if (claimed.missing.length > 0 && !allowMissing) {
      throw new Error(`device ${claimed.missing[0]} has no KeyPackage to add it with`);
    }
    const verified: { deviceId: string; keyPackage: KeyPackage }[] = [];
    for (const package_ of claimed.packages) {
      if (package_.device_id === this.deviceId) {
        continue;
      }
      const message = decode(mlsMessageDecoder, fromBase64Url(package_.key_package));
      if (message?.wireformat !== wireformats.mls_key_package) {
        throw new Error(`the KeyPackage claimed for ${package_.device_id} is something else`);
      }
      const leaf = message.keyPackage.leafNode;
      const identity = await verifyLeaf(leaf.credential, leaf.signaturePublicKey);
      if (identity?.userId !== package_.user_id || identity.deviceId !== package_.device_id) {
        throw new Error(`the KeyPackage claimed for ${package_.device_id} does not belong to it`);
      }
      verified.push({ deviceId: package_.device_id, keyPackage: message.keyPackage });
    }
    return verified;
  }

  // ---- Conversations ------------------------------------------------------------------------

  /**
   * Creates a conversation with every device of `users` and this user's other devices: claims
   * and checks their KeyPackages, builds the MLS group and uploads it. Returns its id.
   */
  async createConversation(kind: ConversationKind, users: string[]): Promise<string> {
    return this.exclusive(async () => {
      const targets = users.includes(this.userId) ? users : [...users, this.userId];
      const claimed = await this.claim(targets, []);
      const id = crypto.getRandomValues(new Uint8Array(16));
      const made = await this.mls.createGroup(
        id,
        claimed.map((found) => found.keyPackage),
      );
      const conversationId = toBase64Url(id);
      const body: Record<string, unknown> = {
        conversation_id: conversationId,
        kind,
        epoch: Number(made.state.groupContext.epoch),
        group_info: toBase64Url(made.groupInfo),
      };
      if (made.welcome !== undefined) {
        body["members"] = claimed.map((found) => found.deviceId);
        body["welcome"] = toBase64Url(made.welcome);
      }
      await this.api.call("POST", "/v1/conversations", body);
      await this.store.write([
        [keys.group(conversationId), saveGroup(made.state)],
        [keys.conversation(conversationId), json({ kind, processedSeq: 0 } satisfies ConversationRecord)],
      ]);
      return conversationId;
    });
  }

  /** Adds every device of `users` to a conversation with a commit and Welcome. */
  async addUsers(conversationId: string, users: string[]): Promise<void> {
    await this.exclusive(async () => {
      const claimed = await this.claim(users, []);
      await this.commitChange(conversationId, async () => ({ add: claimed, remove: [] }));
    });
  }

  /** Removes every device of `users` from a conversation with a commit. */
  async removeUsers(conversationId: string, users: string[]): Promise<void> {
    await this.exclusive(() => this.removeMatching(conversationId, (member) => users.includes(member.userId)));
  }

  private async removeMatching(conversationId: string, gone: (member: { userId: string; deviceId: string }) => boolean): Promise<void> {
    await this.commitChange(conversationId, async (state) => {
      const remove = (await members(state)).filter((member) => member.deviceId !== this.deviceId && gone(member));
      if (remove.length === 0) {
        throw new Error("none of them is a member");
      }
      return { add: [], remove };
    });
  }

  /** Leaves a conversation: every device of this user stops receiving it. */
  async leave(conversationId: string): Promise<void> {
    await this.exclusive(() => this.api.call("POST", `/v1/conversations/${conversationId}/leave`, {}));
  }

  /**
   * Builds a commit with `change` on the group's current epoch, submits it with the next epoch's
   * GroupInfo and keeps the new state once the server accepted it. On `stale_epoch` the commit
   * is dropped, the client catches up, and the change is rebuilt on the new epoch.
   */
  private async commitChange(
    conversationId: string,
    change: (state: ClientState) => Promise<{ add: { deviceId: string; keyPackage: KeyPackage }[]; remove: { deviceId: string; leafIndex: number }[] }>,
  ): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const state = await this.group(conversationId);
      const { add, remove } = await change(state);
      const made = await this.mls.change(
        state,
        add.map((found) => found.keyPackage),
        remove.map((member) => member.leafIndex),
      );
      const body: Record<string, unknown> = {
        epoch: Number(made.epoch),
        commit: toBase64Url(made.commit),
        group_info: toBase64Url(made.groupInfo),
        add: add.map((found) => found.deviceId),
        remove: remove.map((member) => member.deviceId),
      };
      if (made.welcome !== undefined) {
        body["welcome"] = toBase64Url(made.welcome);
      }
      try {
        await this.api.call("POST", `/v1/conversations/${conversationId}/commits`, body);
      } catch (error) {
        if (staleEpoch(error) && attempt < EPOCH_RETRIES) {
          await this.catchUp();
          continue;
        }
        throw error;
      }
      await this.store.write([[keys.group(conversationId), saveGroup(made.state)]]);
      return;
    }
  }

  /** Adds this user's other devices to every conversation of this device that lacks them (a
   * linked device joins this way). Returns how many were added. */
  async addMissingOwnDevices(): Promise<number> {
    return this.exclusive(() => this.addMissingOwnDevicesNow());
  }

  private async addMissingOwnDevicesNow(): Promise<number> {
    const own = (await this.devices(this.userId)).devices.map((device) => device.device_id).filter((id) => id !== this.deviceId);
    let added = 0;
    for (const conversationId of await this.conversationIds()) {
      const state = await this.group(conversationId);
      if (!isActive(state)) {
        continue;
      }
      const present = new Set((await members(state)).map((member) => member.deviceId));
      const missing = own.filter((device) => !present.has(device));
      if (missing.length === 0) {
        continue;
      }
      // A device that has not uploaded KeyPackages yet (linked a moment ago) waits for the next
      // upkeep.
      const claimed = await this.claim([], missing, true);
      if (claimed.length === 0) {
        continue;
      }
      await this.commitChange(conversationId, async () => ({ add: claimed, remove: [] }));
      added += claimed.length;
    }
    return added;
  }

  /**
   * Removes, with ordinary commits, the leaves that no longer belong: revoked devices and the
   * devices of users who left. Returns how many leaves went.
   */
  async removeDeparted(): Promise<number> {
    return this.exclusive(() => this.removeDepartedNow());
  }

  private async removeDepartedNow(): Promise<number> {
    const active = new Map<string, Set<string>>();
    let removed = 0;
    for (const conversationId of await this.conversationIds()) {
      const state = await this.group(conversationId);
      if (!isActive(state)) {
        continue;
      }
      let summary: ConversationSummary;
      try {
        summary = await this.api.call<ConversationSummary>("GET", `/v1/conversations/${conversationId}`);
      } catch {
        continue; // Left or lost: nothing to do.
      }
      const users = new Set(summary.members.map((member) => member.user_id));
      const departed: string[] = [];
      for (const member of await members(state)) {
        let gone = !users.has(member.userId);
        if (!gone) {
          let devices = active.get(member.userId);
          if (devices === undefined) {
            devices = new Set((await this.devices(member.userId)).devices.map((device) => device.device_id));
            active.set(member.userId, devices);
          }
          gone = !devices.has(member.deviceId);
        }
        if (gone && member.deviceId !== this.deviceId) {
          departed.push(member.deviceId);
        }
      }
      if (departed.length === 0) {
        continue;
      }
      try {
        await this.removeMatching(conversationId, (member) => departed.includes(member.deviceId));
        removed += departed.length;
      } catch (error) {
        if (!(error instanceof Error) || error.message !== "none of them is a member") {
          throw error;
        }
      }
    }
    return removed;
  }

  /** Brings every conversation's tree in line with who is there (own devices added, departed
   * leaves removed); run on `devices_changed` and after a member left. */
  async upkeep(): Promise<Event | undefined> {
    return this.exclusive(() => this.upkeepNow());
  }

  private async upkeepNow(): Promise<Event | undefined> {
    this.upkeepDue = false;
    const added = await this.addMissingOwnDevicesNow();
    const removed = await this.removeDepartedNow();
    return added + removed > 0 ? { type: "devices_updated", added, removed } : undefined;
  }

  // ---- Messages -----------------------------------------------------------------------------

  /** Sends a text message; returns its sequence number. */
  async sendText(conversationId: string, body: string): Promise<number> {
    return this.send(conversationId, { v: 1, type: "text", body });
  }

  /**
   * Encrypts and sends `content`, catching up and retrying if the epoch moved on (with the same
   * client message id, so a send that did land is not doubled). The message is kept with the
   * sequence number the server assigned.
   */
  async send(conversationId: string, content: ContentJson): Promise<number> {
    return this.exclusive(async () => {
      const accepted = await this.post(conversationId, content, false);
      if (accepted.seq === undefined) {
        throw new Error("the server assigned no sequence number");
      }
      const message: Message = {
        conversationId,
        seq: accepted.seq,
        senderUser: this.userId,
        senderDevice: this.deviceId,
        createdAt: accepted.created_at,
        content,
      };
      await this.store.write([[keys.message(conversationId, accepted.seq), json(message)]]);
      return accepted.seq;
    });
  }

  /** Sends `content` only to the members' devices connected now, never stored (call signals). */
  async sendEphemeral(conversationId: string, content: ContentJson): Promise<void> {
    await this.exclusive(() => this.post(conversationId, content, true));
  }

  private async post(conversationId: string, content: ContentJson, ephemeral: boolean): Promise<{ seq?: number; created_at: number }> {
    const plaintext = encodeContent(content);
    const clientMessageId = newClientMessageId();
    for (let attempt = 1; ; attempt++) {
      const sealed = await this.mls.seal(await this.group(conversationId), plaintext);
      // Kept before it is sent: the ratchet must never hand out the same key twice.
      await this.store.write([[keys.group(conversationId), saveGroup(sealed.state)]]);
      try {
        return await this.api.call("POST", `/v1/conversations/${conversationId}/messages`, {
          client_message_id: clientMessageId,
          epoch: Number(sealed.epoch),
          ciphertext: toBase64Url(sealed.bytes),
          ephemeral,
        });
      } catch (error) {
        if (staleEpoch(error) && attempt < EPOCH_RETRIES) {
          await this.catchUp();
          continue;
        }
        throw error;
      }
    }
  }

  /** The server's list of this device's conversations, every page: kinds, member users with
   * their read positions (read receipts), last sequence numbers and unread counts. */
  async listConversations(): Promise<ConversationSummary[]> {
    const found: ConversationSummary[] = [];
    let cursor: string | undefined;
    do {
      const query = cursor === undefined ? "" : `?cursor=${encodeURIComponent(cursor)}`;
      const page = await this.api.call<{ conversations: ConversationSummary[]; cursor?: string }>("GET", `/v1/conversations${query}`);
      found.push(...page.conversations);
      cursor = page.cursor;
    } while (cursor !== undefined);
    return found;
  }

  /** Moves this user's read position in a conversation forward to `seq`. */
  async markRead(conversationId: string, seq: number): Promise<void> {
    await this.api.call("POST", `/v1/conversations/${conversationId}/read`, { seq });
  }

  // ---- Sync ---------------------------------------------------------------------------------

  /** Fetches everything the server holds for this device, applies it (joins, commits,
   * messages), keeps what it decrypted, then acknowledges it. Returns what happened. */
  async sync(): Promise<Event[]> {
    return this.exclusive(async () => {
      const events = await this.syncNow();
      if (this.upkeepDue) {
        const done = await this.upkeepNow();
        if (done !== undefined) {
          events.push(done);
        }
      }
      return events;
    });
  }

  private async syncNow(): Promise<Event[]> {
    const events = this.unreported.splice(0);
    for (;;) {
      const page = await this.api.call<{ entries: EntryFrame[]; queue: QueueFrame[] }>("GET", "/v1/sync");
      if (page.entries.length === 0 && page.queue.length === 0) {
        return events;
      }
      // Queue first: a Welcome must be processed before the entries that follow it.
      let queueUpTo: number | undefined;
      for (const item of page.queue) {
        await this.applyQueueItem(item, events);
        queueUpTo = item.id;
      }
      const positions = new Map<string, number>();
      for (const entry of page.entries) {
        await this.applyEntry(entry, events);
        positions.set(entry.conversation_id, entry.seq);
      }
      // Only now, with everything kept, is it acknowledged.
      const body: Record<string, unknown> = {
        conversations: [...positions].map(([conversation_id, seq]) => ({ conversation_id, seq })),
      };
      if (queueUpTo !== undefined) {
        body["queue_up_to"] = queueUpTo;
      }
      await this.api.call("POST", "/v1/ack", body);
    }
  }

  /** Syncs inside another call, keeping what it found for the next sync or frame. */
  private async catchUp(): Promise<void> {
    this.unreported.push(...(await this.syncNow()));
  }

  private async applyQueueItem(item: QueueFrame, events: Event[]): Promise<void> {
    switch (item.kind) {
      case "welcome": {
        if (item.conversation_id === undefined || item.seq === undefined) {
          return;
        }
        const known = await this.store.get(keys.conversation(item.conversation_id));
        if (known !== undefined && parse<ConversationRecord>(known).removed !== true) {
          const held = await this.group(item.conversation_id);
          if (isActive(held)) {
            return; // Already joined (this Welcome came again).
          }
        }
        try {
          await this.join(item.conversation_id, item.seq, fromBase64Url(item.payload));
          events.push({ type: "joined", conversationId: item.conversation_id });
        } catch (error) {
          events.push({ type: "rejected", conversationId: item.conversation_id, reason: String(error) });
        }
        return;
      }
      case "keys_low":
        events.push({ type: "keys_replenished", count: await this.uploadKeyPackages(KEY_PACKAGE_BATCH, false) });
        return;
      case "removed": {
        if (item.conversation_id === undefined) {
          return;
        }
        const record = await this.store.get(keys.conversation(item.conversation_id));
        if (record !== undefined && parse<ConversationRecord>(record).removed === true) {
          return; // Known already, from the commit that removed this device.
        }
        if (record !== undefined) {
          const kept: ConversationRecord = { ...parse<ConversationRecord>(record), removed: true };
          await this.store.write([[keys.conversation(item.conversation_id), json(kept)]]);
        }
        events.push({ type: "removed", conversationId: item.conversation_id });
        return;
      }
      case "read_marker":
        if (item.conversation_id !== undefined) {
          const { seq } = parse<{ seq: number }>(fromBase64Url(item.payload));
          events.push({ type: "read_marker", conversationId: item.conversation_id, seq });
        }
        return;
      default:
        return;
    }
  }

  /** Joins from a Welcome (every member's leaf checked) with the own KeyPackage it names; a
   * one-time package is then forgotten, a last-resort one kept. */
  private async join(conversationId: string, seq: number, welcome: Uint8Array): Promise<void> {
    const saved = await this.store.keys("kp/");
    const packages: { key: string; own: OwnKeyPackage }[] = [];
    for (const key of saved) {
      const bytes = await this.store.get(key);
      if (bytes !== undefined) {
        packages.push({ key, own: loadKeyPackage(bytes) });
      }
    }
    const state = await this.mls.join(
      welcome,
      packages.map((found) => found.own),
    );
    if (toBase64Url(state.groupContext.groupId) !== conversationId) {
      throw new Error("the Welcome is for another group");
    }
    await members(state);
    let kind: ConversationKind = "group";
    try {
      kind = (await this.api.call<ConversationSummary>("GET", `/v1/conversations/${conversationId}`)).kind;
    } catch {
      // Gone already (removed again since): kept as a group, nothing arrives for it.
    }
    const used = await this.usedPackage(state, packages);
    const writes: Write[] = [
      [keys.group(conversationId), saveGroup(state)],
      [keys.conversation(conversationId), json({ kind, processedSeq: seq } satisfies ConversationRecord)],
    ];
    if (used !== undefined) {
      writes.push([used, undefined]);
    }
    await this.store.write(writes);
  }

  /** The key of the one-time KeyPackage a joined group's own leaf came from, if any. */
  private async usedPackage(state: ClientState, packages: { key: string; own: OwnKeyPackage }[]): Promise<string | undefined> {
    const leaf = state.ratchetTree[state.privatePath.leafIndex * 2];
    if (leaf?.nodeType !== 1) {
      return undefined;
    }
    const hpkeKey = toHex(leaf.leaf.hpkePublicKey);
    const found = packages.find((candidate) => toHex(candidate.own.publicPackage.leafNode.hpkePublicKey) === hpkeKey);
    const lastResort = found?.own.publicPackage.extensions.some((extension) => extension.extensionType === 0x000a);
    return found === undefined || lastResort === true ? undefined : found.key;
  }

  private async applyEntry(entry: EntryFrame, events: Event[]): Promise<void> {
    const id = entry.conversation_id;
    const recordBytes = await this.store.get(keys.conversation(id));
    if (recordBytes === undefined) {
      return;
    }
    const record = parse<ConversationRecord>(recordBytes);
    if (entry.seq <= record.processedSeq) {
      return;
    }
    const position: Write = [keys.conversation(id), json({ ...record, processedSeq: entry.seq })];
    if (entry.sender_device === this.deviceId) {
      // Our own message (kept when sent) or commit (kept when accepted).
      await this.store.write([position]);
      return;
    }
    try {
      const state = await this.group(id);
      if (entry.kind === "message") {
        const opened = await this.mls.open(state, fromBase64Url(entry.payload));
        const message: Message = {
          conversationId: id,
          seq: entry.seq,
          senderUser: entry.sender_user,
          senderDevice: entry.sender_device,
          createdAt: entry.created_at,
          content: decodeContent(opened.plaintext),
        };
        await this.store.write([[keys.group(id), saveGroup(opened.state)], [keys.message(id, entry.seq), json(message)], position]);
        events.push({ type: "message", message });
        return;
      }
      if (entry.kind === "commit") {
        let next: ClientState;
        try {
          next = await this.mls.applyCommit(state, fromBase64Url(entry.payload));
        } catch (error) {
          // ts-mls cannot process a commit that removes this device when it carries a path
          // (every OpenMLS removal does): the server's queue says whether that is what it was.
          if (record.removed === true || (await this.removedAt(id, entry.seq))) {
            await this.store.write([[keys.conversation(id), json({ ...record, processedSeq: entry.seq, removed: true })]]);
            if (record.removed !== true) {
              events.push({ type: "removed", conversationId: id });
            }
            return;
          }
          throw error;
        }
        const removed = !isActive(next);
        await this.store.write([
          [keys.group(id), saveGroup(next)],
          [keys.conversation(id), json({ ...record, processedSeq: entry.seq, ...(removed ? { removed } : {}) })],
        ]);
        if (!removed) {
          events.push({ type: "members_changed", conversationId: id });
        } else if (record.removed !== true) {
          events.push({ type: "removed", conversationId: id });
        }
        return;
      }
      this.upkeepDue = true;
      events.push({ type: "members_changed", conversationId: id });
    } catch (error) {
      events.push({ type: "rejected", conversationId: id, reason: String(error) });
    }
    await this.store.write([position]);
  }

  /** Whether the device's queue holds a `removed` item for the conversation at `seq` (a
   * read-only look: nothing is acknowledged). */
  private async removedAt(conversationId: string, seq: number): Promise<boolean> {
    let cursor: string | undefined;
    for (let page = 0; page < 10; page++) {
      const query = cursor === undefined ? "" : `?cursor=${encodeURIComponent(cursor)}`;
      const found = await this.api.call<{ queue: QueueFrame[]; cursor?: string }>("GET", `/v1/sync${query}`);
      if (found.queue.some((item) => item.kind === "removed" && item.conversation_id === conversationId && item.seq === seq)) {
        return true;
      }
      cursor = found.cursor;
      if (cursor === undefined || found.queue.length === 0) {
        return false;
      }
    }
    return false;
  }

  // ---- The live stream ----------------------------------------------------------------------

  /**
   * Applies one frame of the device's socket and returns what happened; `ack` sends a frame back
   * (an acknowledgement, once what the frame carried is kept). A pushed entry that follows what
   * the device holds is applied as it came; one after a gap, a queue item or the end of the
   * initial drain runs a sync, which reads what is missing from the server.
   */
  async onFrame(frame: ServerFrame, ack: (frame: object) => void): Promise<Event[]> {
    return this.exclusive(async () => {
      const events: Event[] = [];
      switch (frame.type) {
        case "entry": {
          const record = await this.store.get(keys.conversation(frame.conversation_id));
          const next = record === undefined ? undefined : parse<ConversationRecord>(record).processedSeq + 1;
          if (next === frame.seq) {
            await this.applyEntry(frame, events);
            ack({ type: "ack", conversations: [{ conversation_id: frame.conversation_id, seq: frame.seq }] });
          } else {
            events.push(...(await this.syncNow()));
          }
          break;
        }
        case "queue":
        case "queue_empty":
          events.push(...(await this.syncNow()));
          break;
        case "typing":
          events.push({ type: "typing", conversationId: frame.conversation_id, userId: frame.user_id, active: frame.active });
          break;
        case "read_receipt":
          events.push({ type: "read_receipt", conversationId: frame.conversation_id, userId: frame.user_id, seq: frame.seq });
          break;
        case "presence":
          events.push({ type: "presence", userId: frame.user_id, online: frame.online });
          break;
        case "devices_changed":
          this.upkeepDue = true;
          events.push({ type: "devices_changed", userId: frame.user_id });
          break;
        case "ephemeral": {
          // One sent in another epoch cannot be opened: it was never meant to last, so dropped.
          try {
            const opened = await this.mls.open(await this.group(frame.conversation_id), fromBase64Url(frame.payload));
            await this.store.write([[keys.group(frame.conversation_id), saveGroup(opened.state)]]);
            events.push({
              type: "ephemeral",
              conversationId: frame.conversation_id,
              senderUser: frame.sender_user,
              senderDevice: frame.sender_device,
              content: decodeContent(opened.plaintext),
            });
          } catch {
            // Dropped.
          }
          break;
        }
        default:
          break;
      }
      if (this.upkeepDue) {
        const done = await this.upkeepNow();
        if (done !== undefined) {
          events.push(done);
        }
      }
      events.push(...this.unreported.splice(0));
      return events;
    });
  }

  /**
   * Opens the device's WebSocket and applies what arrives until {@link Stream.close}: events go
   * to `onEvent`. A dropped connection is opened again after a pause (what it missed comes from
   * the store); one the server ended for good (replaced by a newer connection, device revoked,
   * session ended) stops, with the close code given to `onClosed`.
   */
  listen(onEvent: (event: Event) => void, onClosed?: (code: number) => void): Stream {
    return new Stream(this, onEvent, onClosed);
  }

  /** The WebSocket address of the server. */
  get socketUrl(): string {
    return `${this.api.base.replace(/^http/, "ws")}/v1/ws`;
  }

  // ---- What the device holds ----------------------------------------------------------------

  /** The conversations this device is in (or was, until removed), with their kinds. */
  async conversations(): Promise<{ conversationId: string; kind: ConversationKind; active: boolean }[]> {
    const found: { conversationId: string; kind: ConversationKind; active: boolean }[] = [];
    for (const conversationId of await this.conversationIds()) {
      const record = await this.store.get(keys.conversation(conversationId));
      if (record !== undefined) {
        const { kind, removed } = parse<ConversationRecord>(record);
        found.push({ conversationId, kind, active: removed !== true && isActive(await this.group(conversationId)) });
      }
    }
    return found;
  }

  private async conversationIds(): Promise<string[]> {
    return (await this.store.keys("conv/")).map((key) => key.slice("conv/".length));
  }

  /** The kept messages of a conversation, oldest first. */
  async history(conversationId: string): Promise<Message[]> {
    const found: Message[] = [];
    for (const key of await this.store.keys(keys.messages(conversationId))) {
      const bytes = await this.store.get(key);
      if (bytes !== undefined) {
        found.push(parse<Message>(bytes));
      }
    }
    return found;
  }

  /** The conversation as people read it: its messages with edits, deletions, reactions, poll
   * votes and profiles applied (see `timeline.ts`). */
  async timeline(conversationId: string): Promise<Timeline> {
    return timeline(await this.history(conversationId));
  }

  /** The users in a conversation, from its verified leaves. */
  async members(conversationId: string): Promise<string[]> {
    const users = (await members(await this.group(conversationId))).map((member) => member.userId);
    return [...new Set(users)].sort();
  }

  /** The direct conversation this device has with `userId`, if any. */
  async directWith(userId: string): Promise<string | undefined> {
    for (const { conversationId, kind, active } of await this.conversations()) {
      if (kind === "direct" && active && (await this.members(conversationId)).includes(userId)) {
        return conversationId;
      }
    }
    return undefined;
  }

  /** The MLS epoch this device's group of a conversation is in. */
  async epoch(conversationId: string): Promise<bigint> {
    return (await this.group(conversationId)).groupContext.epoch;
  }

  private async group(conversationId: string): Promise<ClientState> {
    const saved = await this.store.get(keys.group(conversationId));
    if (saved === undefined) {
      throw new Error(`this device is not in conversation ${conversationId}`);
    }
    return loadGroup(saved);
  }

  /** Runs `work` after every call before it has finished: one call at a time per client. */
  private exclusive<T>(work: () => Promise<T>): Promise<T> {
    const run = this.queue.then(work, work);
    this.queue = run.catch(() => undefined);
    return run;
  }
}

/** Close codes after which reconnecting would not help (docs/protocol.md). */
const FINAL_CLOSES = new Set([4001, 4002, 4003, 4004, 4006]);

/** A device's live connection (see {@link Client.listen}). */
export class Stream {
  private socket: WebSocket | undefined;
  private closed = false;
  private pending: Promise<void> = Promise.resolve();
  /** Resolves once the initial drain is over (the first `queue_empty` was applied). */
  readonly ready: Promise<void>;
  private markReady: () => void = () => undefined;

  constructor(
    private readonly client: Client,
    private readonly onEvent: (event: Event) => void,
    private readonly onClosed?: (code: number) => void,
  ) {
    this.ready = new Promise((resolve) => {
      this.markReady = resolve;
    });
    this.open();
  }

  /** Sends a typing indicator to the conversation's other devices online now. */
  typing(conversationId: string, active: boolean): void {
    this.send({ type: "typing", conversation_id: conversationId, active });
  }

  /** Opts this connection in to (or out of) presence. */
  presence(visible: boolean): void {
    this.send({ type: "presence", visible });
  }

  /** Closes the connection for good. */
  close(): void {
    this.closed = true;
    this.socket?.close(1000);
  }

  private send(frame: object): void {
    if (this.socket?.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(frame));
    }
  }

  private open(): void {
    const socket = new WebSocket(this.client.socketUrl);
    this.socket = socket;
    socket.onopen = () => socket.send(JSON.stringify({ type: "auth", token: this.client.api.token }));
    socket.onmessage = (message: MessageEvent) => {
      const frame = JSON.parse(String(message.data)) as ServerFrame;
      // Frames are applied in the order they came, each after the one before.
      this.pending = this.pending.then(async () => {
        try {
          for (const event of await this.client.onFrame(frame, (reply) => this.send(reply))) {
            this.onEvent(event);
          }
        } catch (error) {
          this.onEvent({ type: "rejected", reason: `applying a ${frame.type} frame: ${String(error)}` });
        }
        if (frame.type === "queue_empty") {
          this.markReady();
        }
      });
    };
    socket.onclose = (event: CloseEvent) => {
      if (this.closed || FINAL_CLOSES.has(event.code)) {
        this.closed = true;
        this.onClosed?.(event.code);
        return;
      }
      setTimeout(() => {
        if (!this.closed) {
          this.open();
        }
      }, 1000);
    };
  }
}
