/** The timeline rules (docs/protocol.md, "Content types"), as the Rust SDK applies them. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { type ContentJson, itemText, type Message, timeline } from "../src/index.js";

const ALICE = "a".repeat(43);
const BOB = "b".repeat(43);

function history(...sent: [string, Omit<ContentJson, "v">][]): Message[] {
  return sent.map(([sender, content], index) => ({
    conversationId: "c",
    seq: index + 1,
    senderUser: sender,
    senderDevice: sender,
    createdAt: index,
    content: { v: 1, ...content } as ContentJson,
  }));
}

test("edits count from the author only, the last one wins, and a deletion keeps its place", () => {
  const shown = timeline(
    history(
      [ALICE, { type: "text", body: "helo" }],
      [BOB, { type: "edit", to_seq: 1, body: "hijacked" }],
      [ALICE, { type: "edit", to_seq: 1, body: "hello" }],
      [BOB, { type: "text", body: "bye" }],
      [ALICE, { type: "delete", to_seq: 4 }],
      [BOB, { type: "delete", to_seq: 4 }],
      [ALICE, { type: "edit", to_seq: 99, body: "before I joined" }],
    ),
  );
  assert.deepEqual(shown.items.map(itemText), ["hello (edited)", "(deleted)"]);
});

test("reactions are per user and emoji, withdrawn by remove, gone with a deleted message", () => {
  const shown = timeline(
    history(
      [ALICE, { type: "text", body: "lunch?" }],
      [BOB, { type: "reaction", to_seq: 1, emoji: "👍" }],
      [BOB, { type: "reaction", to_seq: 1, emoji: "👍" }],
      [ALICE, { type: "reaction", to_seq: 1, emoji: "👍" }],
      [ALICE, { type: "reaction", to_seq: 1, emoji: "🎉" }],
      [ALICE, { type: "reaction", to_seq: 1, emoji: "🎉", remove: true }],
    ),
  );
  assert.deepEqual([...(shown.items[0]?.reactions ?? [])], [["👍", [BOB, ALICE]]]);
});

test("a reply quotes its message as it stands now; polls are tallied by the rules", () => {
  const shown = timeline(
    history(
      [ALICE, { type: "text", body: "first" }],
      [BOB, { type: "reply", to_seq: 1, body: "answer" }],
      [ALICE, { type: "edit", to_seq: 1, body: "first, edited" }],
      [ALICE, { type: "poll", question: "Lunch?", options: ["pizza", "sushi"] }],
      [BOB, { type: "poll_vote", to_seq: 4, choices: [1, 0] }],
      [ALICE, { type: "poll_vote", to_seq: 4, choices: [7] }],
      [ALICE, { type: "poll_vote", to_seq: 4, choices: [0] }],
      [BOB, { type: "poll_close", to_seq: 4 }],
      [ALICE, { type: "poll_close", to_seq: 4 }],
      [BOB, { type: "poll_vote", to_seq: 4, choices: [0] }],
      [BOB, { type: "profile", display_name: "Bob B." }],
      [ALICE, { type: "sticker", id: 3 }],
    ),
  );
  const reply = shown.items[1];
  assert.deepEqual(reply?.quote, { seq: 1, senderUser: ALICE, text: "first, edited (edited)" });
  assert.equal(reply && itemText(reply), "answer");
  const poll = shown.items[2];
  assert.equal(poll && itemText(poll), "(poll) Lunch? [pizza 1 / sushi 1] (closed)");
  assert.equal(shown.displayNames.get(BOB), "Bob B.");
  const sticker = shown.items[3];
  assert.equal(sticker && itemText(sticker), "(a sticker message this version cannot show)");
});
