/** The Roost client SDK for browsers and Node. */

export { Api, RoostError } from "./api.js";
export type { PushStatus, PushSubscriptionJSON, Session } from "./api.js";
export { fromBase64Url, toBase64Url, toHex } from "./bytes.js";
export { classify, decodeContent, encodeContent, KNOWN_TYPES, PAD_TO, VERSION } from "./content.js";
export type { ContentJson, UnknownContent } from "./content.js";
export { KeyPair, verify } from "./keys.js";
export { CIPHERSUITE, MlsDevice, roostAuthService, verifyLeaf } from "./mls.js";
export type { LeafIdentity, OwnKeyPackage } from "./mls.js";
export { safetyNumber } from "./safety.js";
export { authStatement, deviceCertificateStatement } from "./statements.js";
