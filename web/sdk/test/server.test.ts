/**
 * The SDK against a real roostd: the binary cargo built (`target/debug/roostd`, or `ROOST_BIN`),
 * started on 127.0.0.1:0 with a temporary data directory. Without the binary the tests skip
 * with a notice.
 */

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { Api, deviceCertificateStatement, KeyPair, RoostError, toBase64Url } from "../src/index.js";

const binary = process.env["ROOST_BIN"] ?? fileURLToPath(new URL("../../../../target/debug/roostd", import.meta.url));
const available = existsSync(binary);
if (!available) {
  console.log(`notice: ${binary} does not exist (run cargo build); the server tests skip`);
}

let server: ChildProcess | undefined;
let base = "";
let dataDir = "";

before(async () => {
  if (!available) {
    return;
  }
  dataDir = mkdtempSync(join(tmpdir(), "roost-sdk-"));
  server = spawn(binary, ["--listen", "127.0.0.1:0", "--data-dir", dataDir], {
    env: { ...process.env, ROOST_LOG: "info", ROOST_LOG_FORMAT: "text", ROOST_SERVER_NAME: "roost.test" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  base = await new Promise<string>((resolve, reject) => {
    let seen = "";
    const look = (chunk: Buffer) => {
      // The log may be coloured: drop the escape sequences before reading it.
      seen += chunk.toString().replace(/\u001b\[[0-9;]*m/g, "");
      const address = /roostd listening address=(\S+)/.exec(seen)?.[1];
      if (address !== undefined) {
        resolve(`http://${address}`);
      }
    };
    server?.stdout?.on("data", look);
    server?.stderr?.on("data", look);
    server?.on("exit", (code) => reject(new Error(`roostd exited (${code}): ${seen}`)));
    setTimeout(() => reject(new Error(`roostd did not say where it listens: ${seen}`)), 20_000);
  });
});

after(() => {
  server?.kill();
  if (dataDir !== "") {
    rmSync(dataDir, { recursive: true, force: true });
  }
});

test("a user registers, logs in, sees its session and logs out", { skip: !available }, async () => {
  const api = new Api(base);
  const identity = await KeyPair.generate();
  const device = await KeyPair.generate();
  await api.register(identity, device, "web");
  const session = await api.login(device);
  assert.equal(session.user_id, identity.id);
  assert.equal(session.device_id, device.id);
  assert.match(session.token, /^rst_/);
  const me = await api.whoami();
  assert.equal(me.device_id, device.id);
  await api.logout();
  api.token = session.token;
  await assert.rejects(api.whoami(), (err: unknown) => err instanceof RoostError && err.code === "unauthenticated");
});

test("the server refuses what does not verify, with stable codes", { skip: !available }, async () => {
  const api = new Api(base);
  const identity = await KeyPair.generate();
  const device = await KeyPair.generate();
  // A certificate signed by another key than the identity it names.
  const impostor = await KeyPair.generate();
  await assert.rejects(
    api.call("POST", "/v1/users", {
      identity_key: identity.id,
      device_id: device.id,
      device_certificate: toBase64Url(await impostor.sign(deviceCertificateStatement(identity.id, device.id))),
    }),
    (err: unknown) => err instanceof RoostError && err.status === 422 && err.code === "signature_invalid",
  );
  await api.register(identity, device);
  await assert.rejects(api.register(identity, device), (err: unknown) => err instanceof RoostError && err.code === "user_exists");
  // Another device cannot log in as this one.
  const stranger = await KeyPair.generate();
  await assert.rejects(api.login(stranger), (err: unknown) => err instanceof RoostError && err.code === "device_unknown");
});
