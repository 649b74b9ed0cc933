/** The SDK's API client against a real roostd ([`Roostd`](./roostd.ts)). */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Api, deviceCertificateStatement, KeyPair, RoostError, toBase64Url } from "../src/index.js";
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

test("a device registers, reads and removes its push subscription", { skip: !available }, async () => {
  const api = new Api(base);
  const identity = await KeyPair.generate();
  const device = await KeyPair.generate();
  await api.register(identity, device);
  await api.login(device);
  assert.equal((await api.pushServerKey()).length, 65, "an uncompressed P-256 point");

  // What a browser's PushSubscription.toJSON() holds.
  const subscriber = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"]);
  const p256dh = new Uint8Array(await crypto.subtle.exportKey("raw", subscriber.publicKey));
  const subscription = {
    endpoint: "https://push.example.com/send/abc",
    expirationTime: null,
    keys: { p256dh: toBase64Url(p256dh), auth: toBase64Url(crypto.getRandomValues(new Uint8Array(16))) },
  };
  assert.deepEqual(await api.pushStatus(), { subscribed: false });
  const stored = await api.subscribePush(subscription);
  assert.equal(stored.subscribed, true);
  assert.equal((await api.pushStatus()).endpoint, subscription.endpoint);
  await assert.rejects(
    api.subscribePush({ ...subscription, endpoint: "http://10.0.0.1/push" }),
    (err: unknown) => err instanceof RoostError && err.status === 422 && err.code === "push_endpoint_refused",
  );
  await api.unsubscribePush();
  assert.equal((await api.pushStatus()).subscribed, false);
});
