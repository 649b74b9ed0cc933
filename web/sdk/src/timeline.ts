/**
 * A conversation as people read it: the kept messages with every edit, deletion, reaction, poll
 * vote and profile applied, by the rules every Roost client follows (docs/protocol.md, "Content
 * types"), so a TypeScript device shows what a Rust device shows from the same history:
 *
 * - an edit counts only from the author of the message it edits, and only for text and replies;
 *   the last one wins;
 * - a deletion counts only from the author; a deleted message keeps its place but shows nothing,
 *   and takes its reactions with it;
 * - a reaction is per user and emoji: adding twice is once, `remove` withdraws it;
 * - a poll vote is per user (any of their devices): the last one replaces the earlier, no choices
 *   withdraws it, choices out of range are ignored, a single-choice poll keeps the first; votes
 *   after the author closes the poll do not count;
 * - a profile sets the name its sender is shown by.
 *
 * Whatever refers to a message this device does not hold (from before it joined, or pruned) is
 * ignored.
 */

import type { Message } from "./client.js";
import { classify, type ContentJson } from "./content.js";

/** Most options a poll may have. */
const MAX_POLL_OPTIONS = 32;

/** One shown message. */
export interface TimelineItem {
  seq: number;
  senderUser: string;
  senderDevice: string;
  createdAt: number;
  /** What it says now: for an edited text or reply, the last edit's text. */
  content: ContentJson;
  edited: boolean;
  deleted: boolean;
  /** Each emoji with the users who chose it, in the order they did. */
  reactions: Map<string, string[]>;
  /** For a reply, the message it answers as it stands now (when this device holds it). */
  quote?: { seq: number; senderUser: string; text: string };
  /** For a poll: votes per option, each voter's choices, closed or not. */
  poll?: { counts: number[]; voters: Map<string, number[]>; closed: boolean };
}

/** A conversation's shown messages and the names its members chose. */
export interface Timeline {
  items: TimelineItem[];
  displayNames: Map<string, string>;
}

function seqOf(content: ContentJson): number | undefined {
  return typeof content["to_seq"] === "number" ? content["to_seq"] : undefined;
}

function str(value: unknown): string {
  return typeof value === "string" ? value : "";
}

/** A byte count for people. */
export function byteSize(bytes: number): string {
  const units = ["KiB", "MiB", "GiB", "TiB"];
  if (bytes < 1024) {
    return `${bytes} B`;
  }
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit + 1 < units.length) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

/** A one-line rendering of content on its own (what the `roost` CLI prints for it). */
export function display(content: ContentJson): string {
  const known = classify(content);
  if (known.type === "unknown") {
    return `(a ${"typeName" in known ? known.typeName : content.type} message this version cannot show)`;
  }
  const to = seqOf(content);
  switch (content.type) {
    case "text":
      return str(content["body"]);
    case "reply":
      return `(reply to #${to}) ${str(content["body"])}`;
    case "reaction":
      return content["remove"] === true ? `(withdrew ${str(content["emoji"])} from #${to})` : `(reacted ${str(content["emoji"])} to #${to})`;
    case "edit":
      return `(edited #${to}) ${str(content["body"])}`;
    case "delete":
      return `(deleted #${to})`;
    case "attachment": {
      const size = byteSize(typeof content["size"] === "number" ? content["size"] : 0);
      const { width, height } = content;
      return typeof width === "number" && typeof height === "number"
        ? `(file ${str(content["name"])}, ${size}, ${width}×${height})`
        : `(file ${str(content["name"])}, ${size})`;
    }
    case "location": {
      const degrees = (value: unknown) => (typeof value === "number" ? (value / 1e7).toFixed(5) : "?");
      const place = `${degrees(content["latitude_e7"])}, ${degrees(content["longitude_e7"])}`;
      return typeof content["label"] === "string" ? `(location ${content["label"]}: ${place})` : `(location ${place})`;
    }
    case "contact": {
      const name = str(content["name"]);
      const handle = content["handle"];
      return typeof handle === "string" && name !== `@${handle}` ? `(contact ${name}, @${handle})` : `(contact ${name})`;
    }
    case "poll": {
      const options = Array.isArray(content["options"]) ? content["options"].map(str) : [];
      return `(poll) ${str(content["question"])} [${options.join(" / ")}]`;
    }
    case "poll_vote":
      return Array.isArray(content["choices"]) && content["choices"].length === 0 ? `(withdrew a vote in #${to})` : `(voted in #${to})`;
    case "poll_close":
      return `(closed the poll #${to})`;
    case "call":
      return `(call signal: ${str(content["action"])})`;
    case "missed_call":
      return content["video"] === true ? "(missed video call)" : "(missed call)";
    case "profile":
      return typeof content["display_name"] === "string" ? `(now shown as ${content["display_name"]})` : "(cleared their display name)";
    default:
      return `(a ${content.type} message this version cannot show)`;
  }
}

/** How an item reads now: "(deleted)", or its content with "(edited)" and any poll tally. */
export function itemText(item: TimelineItem): string {
  if (item.deleted) {
    return "(deleted)";
  }
  let text: string;
  if (item.content.type === "poll" && item.poll !== undefined) {
    const options = Array.isArray(item.content["options"]) ? item.content["options"].map(str) : [];
    const tallies = options.map((option, index) => `${option} ${item.poll?.counts[index] ?? 0}`);
    text = `(poll) ${str(item.content["question"])} [${tallies.join(" / ")}]${item.poll.closed ? " (closed)" : ""}`;
  } else if (item.content.type === "reply" && item.quote !== undefined) {
    text = str(item.content["body"]);
  } else {
    text = display(item.content);
  }
  return item.edited ? `${text} (edited)` : text;
}

/** Applies every message (in sequence order) to the ones it refers to. */
export function timeline(messages: Message[]): Timeline {
  const shown: Timeline = { items: [], displayNames: new Map() };
  const at = new Map<number, TimelineItem>();
  for (const message of messages) {
    const content = message.content;
    const to = seqOf(content);
    const target = to === undefined ? undefined : at.get(to);
    switch (content.type) {
      case "reaction": {
        if (target === undefined || target.deleted || typeof content["emoji"] !== "string") {
          break;
        }
        const users = (target.reactions.get(content["emoji"]) ?? []).filter((user) => user !== message.senderUser);
        if (content["remove"] !== true) {
          users.push(message.senderUser);
        }
        if (users.length === 0) {
          target.reactions.delete(content["emoji"]);
        } else {
          target.reactions.set(content["emoji"], users);
        }
        break;
      }
      case "edit":
        if (target === undefined || target.senderUser !== message.senderUser || target.deleted) {
          break;
        }
        if (target.content.type === "text" || target.content.type === "reply") {
          target.content = { ...target.content, body: str(content["body"]) };
          target.edited = true;
        }
        break;
      case "delete":
        if (target !== undefined && target.senderUser === message.senderUser) {
          target.deleted = true;
          target.reactions.clear();
        }
        break;
      case "poll_vote": {
        if (target?.content.type !== "poll" || target.poll === undefined || target.poll.closed || target.deleted) {
          break;
        }
        const options = Array.isArray(target.content["options"]) ? target.content["options"].length : 0;
        const choices = Array.isArray(content["choices"]) ? content["choices"] : [];
        let valid = choices.filter((choice): choice is number => Number.isInteger(choice) && choice >= 0 && choice < options);
        if (target.content["multiple"] === true) {
          valid = [...new Set(valid)].sort((a, b) => a - b);
        } else {
          valid = valid.slice(0, 1);
        }
        if (valid.length === 0) {
          target.poll.voters.delete(message.senderUser);
        } else {
          target.poll.voters.set(message.senderUser, valid);
        }
        break;
      }
      case "poll_close":
        if (target?.poll !== undefined && target.senderUser === message.senderUser) {
          target.poll.closed = true;
        }
        break;
      // Signalling travels ephemerally; one kept by mistake is nothing to show.
      case "call":
        break;
      case "profile":
        if (typeof content["display_name"] === "string") {
          shown.displayNames.set(message.senderUser, content["display_name"]);
        } else {
          shown.displayNames.delete(message.senderUser);
        }
        break;
      default: {
        const options = Array.isArray(content["options"]) ? content["options"].length : 0;
        const item: TimelineItem = {
          seq: message.seq,
          senderUser: message.senderUser,
          senderDevice: message.senderDevice,
          createdAt: message.createdAt,
          content,
          edited: false,
          deleted: false,
          reactions: new Map(),
        };
        if (content.type === "poll" && options >= 2 && options <= MAX_POLL_OPTIONS) {
          item.poll = { counts: [], voters: new Map(), closed: false };
        }
        at.set(message.seq, item);
        shown.items.push(item);
      }
    }
  }
  // Tallies and quotes once everything is applied, so they show messages as they stand.
  const texts = new Map(shown.items.map((item) => [item.seq, { senderUser: item.senderUser, text: itemText(item) }]));
  for (const item of shown.items) {
    if (item.poll !== undefined) {
      const options = Array.isArray(item.content["options"]) ? item.content["options"].length : 0;
      item.poll.counts = new Array<number>(options).fill(0);
      for (const choices of item.poll.voters.values()) {
        for (const choice of choices) {
          item.poll.counts[choice] = (item.poll.counts[choice] ?? 0) + 1;
        }
      }
    }
    if (item.content.type === "reply") {
      const to = seqOf(item.content);
      const quoted = to === undefined ? undefined : texts.get(to);
      if (to !== undefined && quoted !== undefined) {
        item.quote = { seq: to, ...quoted };
      }
    }
  }
  return shown;
}
