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
  decodeContent,
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

function roost(home: string, args: string[]): string {
  return execFileSync(cargoBinary("roost"), ["--home", home, ...args], { encoding: "utf8" });
}

test("a Rust user starts a direct chat; the TypeScript user joins by Welcome, reads it and answers", { skip: !available }, async () => {
  const server = await Roostd.start();
  const home = mkdtempSync(join(tmpdir(), "roost-cli-"));
  try {
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
  } finally {
    server.stop();
    rmSync(home, { recursive: true, force: true });
  }
});
