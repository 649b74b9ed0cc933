/**
 * The TypeScript SDK and the Rust `roost` CLI share a conversation through a real roostd: the
 * Rust user starts a direct chat with the TypeScript user, who joins by the Welcome, reads the
 * message and answers; the Rust user reads the answer. The CLI checks the TypeScript device's
 * KeyPackage (OpenMLS's validation, and the leaf must chain to its user); the TypeScript side
 * checks every leaf of the group it joins.
 */

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import {
  Api,
  Client,
  decodeContent,
  type Event,
  MemoryStore,
  deviceCertificateStatement,
  encodeContent,
  fromBase64Url,
  KeyPair,
  MlsDevice,
  toBase64Url,
} from "../src/index.js";
import { available, cargoBinary, Roostd } from "./roostd.js";

interface Synced {
  entries: { conversation_id: string; seq: number; kind: string; payload: string }[];
  queue: { id: number; kind: string; conversation_id?: string; payload: string }[];
}

function texts(events: Event[]): string[] {
  return events.flatMap((event) => (event.type === "message" ? [String(event.message.content["body"])] : []));
}

function roost(home: string, args: string[]): string {
  return execFileSync(cargoBinary("roost"), ["--home", home, ...args], { encoding: "utf8" });
}

/** Runs `body` against a fresh roostd, with a temporary directory for the CLI users' homes. */
async function withServer(body: (server: Roostd, home: string) => Promise<void>): Promise<void> {
  const server = await Roostd.start();
  const home = mkdtempSync(join(tmpdir(), "roost-cli-"));
  try {
    await body(server, home);
  } finally {
    server.stop();
    rmSync(home, { recursive: true, force: true });
  }
}

test("a Rust user starts a direct chat; the TypeScript user joins by Welcome, reads it and answers", { skip: !available }, async () => {
  await withServer(async (server, home) => {
    const api = new Api(server.base);
    const identity = await KeyPair.generate();
    const device = await KeyPair.generate(true);
    await api.register(identity, device, "web");
    await api.login(device);
    const certificate = await identity.sign(deviceCertificateStatement(identity.id, device.id));
    const mls = await MlsDevice.create(identity.publicKey, device, certificate);
    const packages = [await mls.keyPackage(), await mls.keyPackage()];
    await api.call("POST", "/v1/keys/packages", { one_time: packages.map((own) => toBase64Url(own.encoded)) });

    roost(join(home, "alice"), ["init", "--server", server.base, "--handle", "alice"]);
    const sent = roost(join(home, "alice"), ["dm", identity.id, "hello from rust"]);
    assert.match(sent, /^sent #1/);

    const synced = await api.call<Synced>("GET", "/v1/sync");
    const welcome = synced.queue.find((item) => item.kind === "welcome");
    assert.ok(welcome, JSON.stringify(synced.queue));
    const state = await mls.join(fromBase64Url(welcome.payload), packages);
    const message = synced.entries.find((entry) => entry.kind === "message");
    assert.ok(message, JSON.stringify(synced.entries));
    const opened = await mls.open(state, fromBase64Url(message.payload));
    assert.deepEqual(decodeContent(opened.plaintext), { v: 1, type: "text", body: "hello from rust" });
    await api.call("POST", "/v1/ack", {
      conversations: [{ conversation_id: message.conversation_id, seq: message.seq }],
      queue_up_to: welcome.id,
  });

  // And back: the TypeScript user answers; the Rust user reads it.
  const reply = await mls.seal(opened.state, encodeContent({ type: "text", body: "hello from typescript" }));
  const accepted = await api.call<{ seq: number }>("POST", `/v1/conversations/${message.conversation_id}/messages`, {
    client_message_id: "ts-1",
    epoch: Number(reply.epoch),
    ciphertext: toBase64Url(reply.bytes),
  });
  assert.equal(accepted.seq, message.seq + 1);
  const read = roost(join(home, "alice"), ["sync"]);
  assert.match(read, /hello from typescript/);
  });
});

/** The user id `roost whoami` prints for the account in `home`. */
function rustUser(home: string): string {
  const shown = /^user\s+(\S+)$/m.exec(roost(home, ["whoami"]))?.[1];
  assert.ok(shown, "whoami names the user");
  return shown;
}

test("a TypeScript user creates a group; Rust users join, commit, remove and are removed", { skip: !available }, async () => {
  await withServer(async (server, home) => {
    const [alice, bob] = [join(home, "alice"), join(home, "bob")];
    roost(alice, ["init", "--server", server.base, "--handle", "alice"]);
    roost(bob, ["init", "--server", server.base, "--handle", "bob"]);
    const aliceId = rustUser(alice);
    const web = await Client.register(new MemoryStore(), server.base);

    // TypeScript creates; Rust joins by the Welcome and reads.
    const id = await web.createConversation("group", [aliceId]);
    await web.sendText(id, "hello from typescript");
    const aliceRead = roost(alice, ["sync"]);
    assert.match(aliceRead, /joined/);
    assert.match(aliceRead, /hello from typescript/);

    // A Rust commit (alice adds bob) is processed by TypeScript, which then writes to both.
    assert.match(roost(alice, ["group", "add", id, "@bob"]), /added/);
    const webSaw = await web.sync();
    assert.deepEqual(
      webSaw.map((event) => event.type),
      ["members_changed"],
    );
    await web.sendText(id, "welcome bob");
    assert.match(roost(bob, ["sync"]), /welcome bob/);
    roost(bob, ["send", id, "hi from bob"]);
    assert.deepEqual(texts(await web.sync()), ["hi from bob"]);
    assert.match(roost(alice, ["sync"]), /hi from bob/);

    // A TypeScript commit removes alice: both Rust users process it; alice reads nothing after.
    await web.removeUsers(id, [aliceId]);
    assert.match(roost(alice, ["sync"]), /no longer a member/);
    await web.sendText(id, "alice is gone");
    assert.match(roost(bob, ["sync"]), /alice is gone/);
    assert.doesNotMatch(roost(alice, ["sync"]), /alice is gone/);

    // And a Rust commit removes the TypeScript user, who sees it and can send no more.
    assert.match(roost(bob, ["group", "remove", id, web.userId]), /removed/);
    const removed = await web.sync();
    assert.deepEqual(removed, [{ type: "removed", conversationId: id }], "told once, and nothing reported as refused");
    roost(bob, ["send", id, "after the removal"]);
    assert.deepEqual(texts(await web.sync()), []);
    await assert.rejects(web.sendText(id, "still here?"));
  });
});

test("a Rust device joins by external commit from a GroupInfo the TypeScript SDK made", { skip: !available }, async () => {
  // Fails without withRfcExternalPub: OpenMLS cannot read ts-mls's bare external_pub.
  await withServer(async (server, home) => {
    const [bob, bobPhone] = [join(home, "bob"), join(home, "bob-phone")];
    roost(bob, ["init", "--server", server.base, "--handle", "bob"]);
    const web = await Client.register(new MemoryStore(), server.base);
    const id = await web.createConversation("direct", [rustUser(bob)]);
    assert.match(roost(bob, ["sync"]), /joined/);

    const code = roost(bobPhone, ["link", "--server", server.base, "--no-wait"]).trim();
    roost(bob, ["devices", "approve", code]);
    assert.match(roost(bobPhone, ["link"]), /linked/);
    // The newest GroupInfo of the conversation is the one TypeScript made when creating it.
    assert.match(roost(bobPhone, ["join", id]), /joined/);

    const webSaw = await web.sync();
    assert.deepEqual(
      webSaw.map((event) => event.type),
      ["members_changed"],
      JSON.stringify(webSaw),
    );
    await web.sendText(id, "to both of bob's devices");
    assert.match(roost(bobPhone, ["sync"]), /to both of bob's devices/);
    assert.match(roost(bob, ["sync"]), /to both of bob's devices/);
  });
});

test("a TypeScript device is linked to a Rust user and added to its conversations by Welcome", { skip: !available }, async () => {
  await withServer(async (server, home) => {
    const [alice, bob] = [join(home, "alice"), join(home, "bob")];
    roost(alice, ["init", "--server", server.base, "--handle", "alice"]);
    roost(bob, ["init", "--server", server.base, "--handle", "bob"]);
    roost(alice, ["dm", "@bob", "before the web device"]);
    roost(bob, ["sync"]);

    // The Rust CLI recomputes the code from the key the server returns: the SDK's link code
    // must be the same function of the device key.
    const store = new MemoryStore();
    const code = await Client.startLink(store, server.base);
    assert.match(roost(alice, ["devices", "approve", code]), /approved|linked|device/i);
    const web = await Client.finishLink(store);
    assert.ok(web);
    assert.equal(web.userId, rustUser(alice));

    // Alice's next sync adds the new device to her conversations (upkeep), by Welcome.
    roost(alice, ["sync"]);
    const joined = await web.sync();
    assert.deepEqual(
      joined.map((event) => event.type),
      ["joined"],
    );
    roost(bob, ["sync"]);
    roost(bob, ["dm", "@alice", "to every device of alice"]);
    assert.deepEqual(texts(await web.sync()), ["to every device of alice"]);
    assert.match(roost(alice, ["sync"]), /to every device of alice/);
  });
});
