/**
 * What travels inside MLS application messages: `u32 length (big-endian) || JSON || zero
 * padding`, the u32 counting the JSON's bytes and the zeros filling the whole up to the next
 * multiple of 256 bytes, so sizes do not reveal lengths exactly. docs/protocol.md ("Content
 * types") lists every type; a type this SDK does not know is kept as {@link UnknownContent}.
 */

/** Padding granularity in bytes. */
export const PAD_TO = 256;
/** The content format version this SDK writes. */
export const VERSION = 1;

/** Any content as JSON: `v`, `type` and the type's fields. */
export interface ContentJson {
  v: number;
  type: string;
  [field: string]: unknown;
}

/** Content of a type this SDK does not know (from a newer client): shown as such, never dropped. */
export interface UnknownContent {
  type: "unknown";
  /** The type it announced. */
  typeName: string;
  /** Its JSON as received. */
  json: ContentJson;
}

/** The padded encoding of content. */
export function encodeContent(content: Omit<ContentJson, "v"> & { v?: number }): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify({ v: VERSION, ...content }));
  const total = Math.ceil((4 + json.length) / PAD_TO) * PAD_TO;
  const out = new Uint8Array(total);
  new DataView(out.buffer).setUint32(0, json.length, false);
  out.set(json, 4);
  return out;
}

/**
 * The JSON of padded content; throws if the framing is broken (a length past the end, padding
 * that is not zero, JSON that is not an object with a `type`).
 */
export function decodeContent(bytes: Uint8Array): ContentJson {
  if (bytes.length < 4) {
    throw new Error("content shorter than its length prefix");
  }
  const length = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0, false);
  if (4 + length > bytes.length) {
    throw new Error("content length past its end");
  }
  if (bytes.subarray(4 + length).some((byte) => byte !== 0)) {
    throw new Error("content padding is not zero");
  }
  const value: unknown = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(4, 4 + length)));
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new Error("content is not a JSON object");
  }
  const json = value as Partial<ContentJson>;
  if (typeof json.type !== "string" || typeof json.v !== "number") {
    throw new Error("content without a version and a type");
  }
  return json as ContentJson;
}

/** The content types this SDK shows; anything else is {@link UnknownContent}. */
export const KNOWN_TYPES: readonly string[] = [
  "text",
  "reply",
  "reaction",
  "edit",
  "delete",
  "attachment",
  "location",
  "contact",
  "poll",
  "poll_vote",
  "poll_close",
  "profile",
  "call",
  "missed_call",
];

/** The content as this SDK understands it: known JSON, or unknown kept whole. */
export function classify(json: ContentJson): ContentJson | UnknownContent {
  return KNOWN_TYPES.includes(json.type) && json.v === VERSION ? json : { type: "unknown", typeName: json.type, json };
}
