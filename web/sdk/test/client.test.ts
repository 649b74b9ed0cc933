/**
 * The SDK's client between TypeScript users through a real roostd: direct chats and groups,
 * adds, removals and leaves, stale-epoch retries, acknowledgements only after keeping, the live
 * stream, state kept in a file across a restart, and linking a second device.
 */

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { Client, type Event, MemoryStore, RoostError } from "../src/index.js";
import { FileStore } from "../src/node.js";
import { available, Roostd } from "./roostd.js";

let server: Roostd | undefined;
let base = "";

before(async () => {
  if (available) {
    server = await Roostd.start();
    base = server.base;
  }
});

after(() => server?.stop());

function texts(events: Event[]): string[] {
  return events.flatMap((event) => (event.type === "message" ? [String(event.message.content["body"])] : []));
}

async function until<T>(what: string, check: () => T | undefined | Promise<T | undefined>): Promise<T> {
  for (let i = 0; i < 200; i++) {
    const found = await check();
    if (found !== undefined) {
      return found;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

test("a direct chat between two TypeScript users: both read, and nothing comes twice", { skip: !available }, async () => {
  const alice = await Client.register(new MemoryStore(), base);
  const bob = await Client.register(new MemoryStore(), base);
  const id = await alice.createConversation("direct", [bob.userId]);
  assert.equal(await alice.sendText(id, "hello bob"), 1);

  const joined = await bob.sync();
  assert.deepEqual(
    joined.map((event) => event.type),
    ["joined", "message"],
  );
  assert.deepEqual(texts(joined), ["hello bob"]);
  assert.deepEqual(await bob.sync(), [], "acknowledged: nothing comes again");
  assert.equal(await bob.directWith(alice.userId), id);
  assert.deepEqual(await bob.members(id), [alice.userId, bob.userId].sort());

  await bob.sendText(id, "hello alice");
  assert.deepEqual(texts(await alice.sync()), ["hello alice"]);
  assert.deepEqual(
    (await alice.history(id)).map((message) => [message.seq, message.content["body"]]),
    [
      [1, "hello bob"],
      [2, "hello alice"],
    ],
  );
  assert.equal(await alice.safetyNumber(bob.userId), await bob.safetyNumber(alice.userId));
});

test("a group: members added and removed by commits, a stale epoch retried, a leave", { skip: !available }, async () => {
  const [alice, bob, carol, dave] = await Promise.all([0, 1, 2, 3].map(() => Client.register(new MemoryStore(), base)));
  assert.ok(alice && bob && carol && dave);
  const id = await alice.createConversation("group", [bob.userId]);
  await bob.sync();

  await alice.addUsers(id, [carol.userId]);
  assert.deepEqual(
    (await carol.sync()).map((event) => event.type),
    ["joined"],
  );
  assert.deepEqual(
    (await bob.sync()).map((event) => event.type),
    ["members_changed"],
  );

  // Bob adds dave while carol has not seen that commit: carol's send meets stale_epoch, catches
  // up and is sent again in the new epoch.
  await bob.addUsers(id, [dave.userId]);
  await carol.sendText(id, "after dave joined");
  assert.equal(await carol.epoch(id), await bob.epoch(id));
  assert.deepEqual(texts(await dave.sync()), ["after dave joined"]);

  // Alice's commit on a stale epoch is rebuilt too: she removes carol without having seen dave.
  await alice.removeUsers(id, [carol.userId]);
  const carolSaw = await carol.sync();
  assert.deepEqual(
    carolSaw.map((event) => event.type).filter((type) => type === "removed" || type === "rejected"),
    ["removed"],
    "told once, and nothing reported as refused",
  );
  await alice.sendText(id, "carol is gone");
  assert.deepEqual(texts(await carol.sync()), [], "nothing after her removal");
  await assert.rejects(carol.sendText(id, "still here?"));
  assert.deepEqual(texts(await bob.sync()), ["after dave joined", "carol is gone"]);
  assert.deepEqual(texts(await dave.sync()), ["carol is gone"]);

  // Dave leaves; the others remove his leaf at their upkeep and go on.
  await dave.leave(id);
  const daveSaw = await dave.sync();
  assert.ok(daveSaw.some((event) => event.type === "removed"));
  const bobSaw = await bob.sync();
  assert.deepEqual(bobSaw.at(-1), { type: "devices_updated", added: 0, removed: 1 }, JSON.stringify(bobSaw));
  await alice.sendText(id, "just us");
  assert.deepEqual(texts(await bob.sync()), ["just us"]);
  assert.deepEqual((await bob.members(id)).length, 2);
});

test("refusals carry the server's stable codes", { skip: !available }, async () => {
  const alice = await Client.register(new MemoryStore(), base);
  const bob = await Client.register(new MemoryStore(), base);
  const mallory = await Client.register(new MemoryStore(), base);
  const id = await alice.createConversation("direct", [bob.userId]);
  await assert.rejects(
    mallory.api.call("GET", `/v1/conversations/${id}/history`),
    (error: unknown) => error instanceof RoostError && error.status === 403 && error.code === "not_a_member",
  );
  await assert.rejects(
    alice.createConversation("direct", [bob.userId, mallory.userId]),
    (error: unknown) => error instanceof RoostError && error.code === "member_limit_reached",
  );
});

test("the live stream applies pushed entries and acknowledges them once kept", { skip: !available }, async () => {
  const alice = await Client.register(new MemoryStore(), base);
  const bob = await Client.register(new MemoryStore(), base);
  const id = await alice.createConversation("direct", [bob.userId]);
  const seen: Event[] = [];
  const stream = bob.listen((event) => seen.push(event));
  try {
    await stream.ready;
    assert.deepEqual(
      seen.map((event) => event.type),
      ["joined"],
    );
    await alice.sendText(id, "live one");
    await alice.sendText(id, "live two");
    await until("both messages", () => (texts(seen).length === 2 ? true : undefined));
    assert.deepEqual(texts(seen), ["live one", "live two"]);
    stream.typing(id, true);
  } finally {
    stream.close();
  }
  // Acknowledged over the socket: the server holds nothing more for bob (a read-only look).
  await until("the acks", async () => {
    const page = await bob.api.call<{ entries: unknown[]; queue: unknown[] }>("GET", "/v1/sync");
    return page.entries.length === 0 && page.queue.length === 0 ? true : undefined;
  });
  assert.equal((await bob.history(id)).length, 2);
});

test("state kept in a file survives a restart of the client", { skip: !available }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "roost-state-"));
  try {
    const path = join(dir, "bob.json");
    const alice = await Client.register(new MemoryStore(), base);
    const first = await Client.register(FileStore.open(path), base);
    const id = await alice.createConversation("direct", [first.userId]);
    await first.sync();
    await alice.sendText(id, "before the restart");
    assert.deepEqual(texts(await first.sync()), ["before the restart"]);

    const bob = await Client.open(FileStore.open(path));
    await bob.connect();
    assert.equal(bob.userId, first.userId);
    await alice.sendText(id, "after the restart");
    assert.deepEqual(texts(await bob.sync()), ["after the restart"]);
    await bob.sendText(id, "still me");
    assert.deepEqual(texts(await alice.sync()), ["still me"]);
    assert.equal((await bob.history(id)).length, 3);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a second device is linked by code and added to the user's conversations by Welcome", { skip: !available }, async () => {
  const alice = await Client.register(new MemoryStore(), base);
  const bob = await Client.register(new MemoryStore(), base);
  const id = await alice.createConversation("direct", [bob.userId]);
  await bob.sync();

  const phone = new MemoryStore();
  const code = await Client.startLink(phone, base);
  assert.equal(await Client.finishLink(phone), undefined, "pending until approved");
  await assert.rejects(bob.approveLink("0000-0000"));
  await bob.approveLink(code, "phone");
  const second = await Client.finishLink(phone);
  assert.ok(second);
  assert.equal(second.userId, bob.userId);
  assert.equal(second.holdsIdentity, false);

  assert.equal(await bob.addMissingOwnDevices(), 1);
  assert.deepEqual(
    (await second.sync()).map((event) => event.type),
    ["joined"],
  );
  await alice.sync();
  await alice.sendText(id, "to both of bob's devices");
  assert.deepEqual(texts(await second.sync()), ["to both of bob's devices"]);
  assert.deepEqual(texts(await bob.sync()), ["to both of bob's devices"]);
});
