/** The Roost client SDK for browsers and Node. */
export { Api, RoostError } from "./api.js";
export type { PushStatus, PushSubscriptionJSON, Session } from "./api.js";
export { fromBase64Url, toBase64Url, toHex } from "./bytes.js";
export { classify, decodeContent, encodeContent, KNOWN_TYPES, PAD_TO, VERSION } from "./content.js";
export type { ContentJson, UnknownContent } from "./content.js";
export { KeyPair, verify } from "./keys.js";
export { CIPHERSUITE, isActive, members, MlsDevice, roostAuthService, verifyLeaf, withRfcExternalPub } from "./mls.js";
export type { LeafIdentity, MadeCommit, Member, OwnKeyPackage } from "./mls.js";
export { safetyNumber } from "./safety.js";
export { authStatement, deviceCertificateStatement, handleStatement, linkCode, revokeDeviceStatement } from "./statements.js";
export { Client, KEY_PACKAGE_BATCH, Stream } from "./client.js";
export type { ConversationKind, ConversationSummary, EntryFrame, Event, Message, QueueFrame, ServerFrame } from "./client.js";
export { IndexedDbStore, MemoryStore } from "./store.js";
export type { StateStore, Write } from "./store.js";
export { byteSize, display, itemText, timeline } from "./timeline.js";
export type { Timeline, TimelineItem } from "./timeline.js";
