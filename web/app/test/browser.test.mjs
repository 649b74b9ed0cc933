// The web app in real Chromium (Debian's, driven by playwright-core) against a real roostd that
// serves it: two browser users chat (live messages, typing, read indicators, unread counts, a
// group with an add and a removal, safety numbers, state kept across a reload), a user links a
// second browser by code, and a browser user chats with a `roost` CLI user.
//
// Needs web/sdk built (its tests' roostd starter) and target/debug/roostd and roost. Without
// Chromium the tests skip with a notice, unless ROOST_TEST_REQUIRE_BROWSER=1 (CI) makes that a
// failure.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

import { available, cargoBinary, Roostd } from "../../sdk/dist/test/roostd.js";

const executablePath = process.env.ROOST_TEST_CHROMIUM ?? "/usr/bin/chromium";
const haveBrowser = existsSync(executablePath);
if (!haveBrowser && process.env.ROOST_TEST_REQUIRE_BROWSER === "1") {
  throw new Error(`${executablePath} does not exist and ROOST_TEST_REQUIRE_BROWSER=1`);
}
if (!haveBrowser) {
  console.log(`notice: ${executablePath} does not exist (apt-get install chromium); the browser tests skip`);
}
const skip = !haveBrowser || !available;
const dist = join(dirname(fileURLToPath(import.meta.url)), "..", "dist");

let server;
let browser;

before(async () => {
  if (skip) {
    return;
  }
  server = await Roostd.start({ ROOST_WEB__DIR: dist });
  browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  server?.stop();
});

/** A user in a fresh browser context (its own IndexedDB): registers with `handle`. */
async function register(handle) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("pageerror", (error) => console.log(`page error (${handle}): ${error.message}`));
  await page.goto(server.base);
  await page.fill("#register-handle", handle);
  await page.click("#register");
  await page.waitForSelector("#main:not(.hidden)");
  await page.waitForFunction((name) => document.querySelector("#me")?.textContent === `@${name}`, handle);
  return page;
}

/** The list entry whose title is exactly `title`. */
function entry(page, title) {
  const exact = new RegExp(`^${title.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`);
  return page.locator("#conversations li", { has: page.locator(".title", { hasText: exact }) });
}

/** Opens the conversation whose list entry reads `title`. */
async function openConversation(page, title) {
  await entry(page, title).click();
  await page.waitForFunction((wanted) => document.querySelector("#title")?.textContent === wanted, title);
}

async function send(page, text) {
  await page.fill("#text", text);
  await page.click("#send");
  await page.locator("#messages li.mine .bubble", { hasText: text }).waitFor();
}

/** Waits until the open conversation shows exactly `expected` (rendering is asynchronous). */
async function expectMessages(page, expected) {
  let shown = [];
  for (let i = 0; i < 100; i++) {
    shown = await page.locator("#messages .bubble").allTextContents();
    if (JSON.stringify(shown) === JSON.stringify(expected)) {
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.deepEqual(shown, expected);
}

test("two browser users chat: live messages, typing, read indicators, unread counts, a group, safety numbers, a reload", { skip }, async () => {
  const ann = await register("ann");
  const ben = await register("ben");
  const cal = await register("cal");

  await ann.fill("#dm-user", "@ben");
  await ann.click("#dm-form button");
  await ann.waitForFunction(() => document.querySelector("#title")?.textContent === "@ben");
  await send(ann, "hello ben");
  await send(ann, "are you there?");

  // Ben's list shows the chat with two unread; opening it reads them and ann sees that.
  await entry(ben, "@ann").locator(".unread", { hasText: /^2$/ }).waitFor();
  await openConversation(ben, "@ann");
  await expectMessages(ben, ["hello ben", "are you there?"]);
  await ann.locator("#messages li.mine .status", { hasText: "read by @ben" }).nth(1).waitFor();

  // Typing shows live; an answer arrives live and clears it.
  await ben.type("#text", "hi");
  await ann.locator("#typing", { hasText: "@ben is typing" }).waitFor();
  await ben.fill("#text", "hi ann, here");
  await ben.click("#send");
  await ann.locator("#messages .bubble", { hasText: "hi ann, here" }).waitFor();
  await ann.waitForFunction(() => document.querySelector("#typing")?.textContent === "");

  // Both see the same safety number.
  await ann.click('#member-list li:has-text("@ben") button.safety');
  await ben.click('#member-list li:has-text("@ann") button.safety');
  const annSafety = (await ann.textContent("#safety")).split("\n")[1];
  const benSafety = (await ben.textContent("#safety")).split("\n")[1];
  assert.match(annSafety, /^(\d{5} ){11}\d{5}$/);
  assert.equal(annSafety, benSafety);

  // A group: ann creates it with ben, adds cal, then removes cal; cal reads only what came
  // while she was a member.
  await ann.fill("#group-users", "@ben");
  await ann.click("#group-form button");
  await ann.waitForFunction(() => document.querySelector("#title")?.textContent === "Group: @ben");
  await ann.fill("#add-user", "@cal");
  await ann.click("#add-form button[type=submit]");
  await ann.waitForFunction(() => document.querySelector("#title")?.textContent === "Group: @ben, @cal");
  await send(ann, "welcome cal");
  await openConversation(cal, "Group: @ann, @ben");
  await cal.locator("#messages .bubble", { hasText: "welcome cal" }).waitFor();
  await openConversation(ben, "Group: @ann, @cal");
  await send(ben, "hello group");
  await cal.locator("#messages .bubble", { hasText: "hello group" }).waitFor();
  await ann.click('#member-list li:has-text("@cal") button.remove');
  await ann.waitForFunction(() => document.querySelector("#title")?.textContent === "Group: @ben");
  await send(ann, "cal is gone");
  await ben.locator("#messages .bubble", { hasText: "cal is gone" }).waitFor();
  await cal.locator("#conversations li.gone").waitFor();
  await expectMessages(cal, ["welcome cal", "hello group"]);

  // Ann's device state is in IndexedDB: after a reload the chats and their history are there.
  await ann.reload();
  await ann.waitForSelector("#main:not(.hidden)");
  await openConversation(ann, "@ben");
  await expectMessages(ann, ["hello ben", "are you there?", "hi ann, here"]);
  await send(ann, "after a reload");
  await entry(ben, "@ann").locator(".unread").waitFor();
});

test("a user links a second browser by code; it joins the user's chats", { skip }, async () => {
  const dot = await register("dot");
  const eve = await register("eve");
  await dot.fill("#dm-user", "@eve");
  await dot.click("#dm-form button");
  await send(dot, "before the second device");

  const context = await browser.newContext();
  const phone = await context.newPage();
  await phone.goto(server.base);
  await phone.click("#link-start");
  await phone.waitForFunction(() => document.querySelector("#link-code")?.textContent !== "");
  const code = (await phone.textContent("#link-code")).trim();
  assert.match(code, /^[0-9A-Z]{4}-[0-9A-Z]{4}$/);
  await eve.fill("#approve-code", code);
  await eve.click("#approve-form button");
  await phone.waitForSelector("#main:not(.hidden)");
  await phone.waitForFunction(() => document.querySelector("#me")?.textContent === "@eve");
  // Eve's first browser adds the new one to her chats by Welcome as soon as it is ready.
  await entry(phone, "@dot").waitFor({ timeout: 30_000 });
  await openConversation(phone, "@dot");
  await send(dot, "to both of eve's browsers");
  await phone.locator("#messages .bubble", { hasText: "to both of eve's browsers" }).waitFor();
  await send(phone, "from eve's second browser");
  await dot.locator("#messages .bubble", { hasText: "from eve's second browser" }).waitFor();
});

test("a browser user chats with a roost CLI user", { skip }, async () => {
  const home = mkdtempSync(join(tmpdir(), "roost-cli-"));
  const roost = (args) => execFileSync(cargoBinary("roost"), ["--home", home, ...args], { encoding: "utf8" });
  try {
    roost(["init", "--server", server.base, "--handle", "cli"]);
    const fay = await register("fay");
    await fay.fill("#dm-user", "@cli");
    await fay.click("#dm-form button");
    await fay.waitForFunction(() => document.querySelector("#title")?.textContent === "@cli");
    await send(fay, "hello from the browser");
    assert.match(roost(["sync"]), /hello from the browser/);
    const id = /^(\S+)\s+direct/m.exec(roost(["conversations"]))?.[1];
    assert.ok(id, "the CLI lists the chat");
    roost(["send", id, "hello from the terminal"]);
    await fay.locator("#messages .bubble", { hasText: "hello from the terminal" }).waitFor();
    // The CLI marked what it printed as read: the browser shows it.
    await fay.locator("#messages li.mine .status", { hasText: "read by @cli" }).waitFor();
    // Reactions and edits from the CLI show as the CLI shows them (the same timeline rules).
    roost(["react", id, "1", "👍"]);
    roost(["edit", id, "2", "hello from the terminal, edited"]);
    await fay.locator("#messages li.mine .reactions", { hasText: "👍 @cli" }).waitFor();
    await fay.locator("#messages .bubble", { hasText: "hello from the terminal, edited (edited)" }).waitFor();
    assert.match(roost(["history", id]), /hello from the terminal, edited \(edited\)/);
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
});

test("the service worker shows a notification for a push wake-up", { skip }, async () => {
  // Subscribing needs the browser's push service, which this machine cannot reach; the push
  // itself is delivered the way the browser would, through the DevTools protocol.
  const context = await browser.newContext();
  await context.grantPermissions(["notifications"], { origin: server.base });
  const page = await context.newPage();
  await page.goto(server.base);
  await page.evaluate(async () => {
    await navigator.serviceWorker.register("sw.js");
    await navigator.serviceWorker.ready;
  });
  const cdp = await context.newCDPSession(page);
  const registered = new Promise((resolve) => {
    cdp.on("ServiceWorker.workerRegistrationUpdated", ({ registrations }) => {
      const found = registrations.find((registration) => registration.scopeURL === `${server.base}/`);
      if (found !== undefined) {
        resolve(found.registrationId);
      }
    });
  });
  await cdp.send("ServiceWorker.enable");
  const registrationId = await registered;
  await cdp.send("ServiceWorker.deliverPushMessage", { origin: server.base, registrationId, data: '{"type":"wake"}' });
  const shown = await page.waitForFunction(async () => {
    const notifications = await (await navigator.serviceWorker.ready).getNotifications();
    return notifications.length > 0 ? notifications.map((notification) => [notification.title, notification.body, notification.tag]) : false;
  });
  assert.deepEqual(await shown.jsonValue(), [["Roost", "New messages", "roost-wake"]]);
  await context.close();
});
