/**
 * The Roost web chat app: one device per browser profile, its state in IndexedDB, everything
 * through the TypeScript SDK. The page talks to the server it was loaded from (roostd serving
 * it with `[web] dir`), or to `?server=https://...` (that server must allow this page's origin in
 * `[cors]`). `?profile=NAME` keeps a separate device in the same browser.
 */

import {
  Client,
  type ConversationSummary,
  type Event,
  IndexedDbStore,
  type Message,
  type PushSubscriptionJSON,
  RoostError,
  type Stream,
  itemText,
  timeline,
} from "../../sdk/src/index.js";

const params = new URLSearchParams(location.search);
const server = params.get("server") ?? location.origin;
const profile = params.get("profile") ?? "roost";

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const found = document.getElementById(id);
  if (found === null) {
    throw new Error(`#${id} is missing`);
  }
  return found as T;
};

let store: IndexedDbStore;
let client: Client;
let stream: Stream | undefined;
let summaries: ConversationSummary[] = [];
let current: string | undefined;
const names = new Map<string, string>();
const typing = new Map<string, Map<string, number>>();
let typingSent = 0;

function say(text: string, where = "status"): void {
  $(where).textContent = text;
}

function failure(error: unknown): string {
  if (error instanceof RoostError) {
    return `${error.message} (${error.code})`;
  }
  return error instanceof Error ? error.message : String(error);
}

/** Runs a UI action, showing what went wrong instead of losing it. */
function act(work: () => Promise<void>, where = "status"): void {
  say("", where);
  work().catch((error: unknown) => say(failure(error), where));
}

/** How a user is shown: `@handle` once learned, else the start of the id. */
function nameOf(userId: string): string {
  if (userId === client.userId) {
    return "you";
  }
  return names.get(userId) ?? userId.slice(0, 8);
}

async function learnNames(users: Iterable<string>): Promise<void> {
  for (const user of users) {
    if (names.has(user) || user === client.userId) {
      continue;
    }
    try {
      const list = await client.devices(user);
      names.set(user, list.handle === undefined ? user.slice(0, 8) : `@${list.handle}`);
    } catch {
      names.set(user, user.slice(0, 8));
    }
  }
}

function titleOf(summary: ConversationSummary): string {
  if (summary.kind === "note_to_self") {
    return "Note to self";
  }
  const others = summary.members
    .filter((member) => member.user_id !== client.userId)
    .map((member) => nameOf(member.user_id))
    .sort();
  return summary.kind === "group" ? `Group: ${others.join(", ")}` : others.join(", ");
}

// ---- Start ----------------------------------------------------------------------------------

async function start(): Promise<void> {
  store = await IndexedDbStore.open(profile);
  if (await Client.exists(store)) {
    client = await Client.open(store);
    await client.connect();
    await enter();
    return;
  }
  $("setup").classList.remove("hidden");
}

$("register-form").addEventListener("submit", (event) => {
  event.preventDefault();
  act(async () => {
    const handle = $<HTMLInputElement>("register-handle").value.trim().replace(/^@/, "");
    client = await Client.register(store, server);
    if (handle !== "") {
      await client.claimHandle(handle);
    }
    await enter();
  }, "setup-status");
});

$("link-start").addEventListener("click", () => {
  act(async () => {
    const code = await Client.startLink(store, server);
    $("link-code").textContent = code;
    $("link-wait").classList.remove("hidden");
    for (;;) {
      const linked = await Client.finishLink(store);
      if (linked !== undefined) {
        client = linked;
        await enter();
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 1500));
    }
  }, "setup-status");
});

async function enter(): Promise<void> {
  $("setup").classList.add("hidden");
  $("main").classList.remove("hidden");
  const me = await client.devices(client.userId);
  $("me").textContent = me.handle === undefined ? client.userId.slice(0, 8) : `@${me.handle}`;
  $("approve-form").classList.toggle("hidden", !client.holdsIdentity);
  await renewPush();
  stream = client.listen(onEvent, (code) => say(`disconnected (${code}); reload to connect again`));
  await stream.ready;
  await refresh();
}

// ---- Events ---------------------------------------------------------------------------------

function onEvent(event: Event): void {
  switch (event.type) {
    case "message":
      typing.get(event.message.conversationId)?.delete(event.message.senderUser);
      if (event.message.conversationId === current) {
        void renderMessages(current).catch((error: unknown) => say(failure(error)));
        showTyping();
      }
      scheduleRefresh();
      break;
    case "typing": {
      const now = typing.get(event.conversationId) ?? new Map<string, number>();
      if (event.active) {
        now.set(event.userId, Date.now());
      } else {
        now.delete(event.userId);
      }
      typing.set(event.conversationId, now);
      showTyping();
      break;
    }
    case "read_receipt": {
      const summary = summaries.find((found) => found.conversation_id === event.conversationId);
      const member = summary?.members.find((found) => found.user_id === event.userId);
      if (member !== undefined) {
        member.read_seq = Math.max(member.read_seq, event.seq);
        showReceipts();
      }
      break;
    }
    case "rejected":
      say(`could not accept something: ${event.reason}`);
      break;
    case "presence":
    case "ephemeral":
    case "keys_replenished":
      break;
    default:
      scheduleRefresh();
  }
}

let refreshing: Promise<void> | undefined;
let refreshAgain = false;

/** Refreshes the list and the open conversation, at most one refresh at a time. */
function scheduleRefresh(): void {
  if (refreshing !== undefined) {
    refreshAgain = true;
    return;
  }
  refreshing = refresh()
    .catch((error: unknown) => say(failure(error)))
    .finally(() => {
      refreshing = undefined;
      if (refreshAgain) {
        refreshAgain = false;
        scheduleRefresh();
      }
    });
}

async function refresh(): Promise<void> {
  summaries = await client.listConversations();
  await learnNames(summaries.flatMap((summary) => summary.members.map((member) => member.user_id)));
  const local = await client.conversations();
  const gone = local.filter((found) => !found.active || !summaries.some((summary) => summary.conversation_id === found.conversationId));
  summaries = summaries.filter((summary) => !gone.some((found) => found.conversationId === summary.conversation_id));
  const list = $("conversations");
  list.replaceChildren();
  for (const summary of summaries) {
    const item = document.createElement("li");
    item.dataset["id"] = summary.conversation_id;
    item.classList.toggle("current", summary.conversation_id === current);
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = titleOf(summary);
    item.append(title);
    if (summary.unread > 0 && summary.conversation_id !== current) {
      const badge = document.createElement("span");
      badge.className = "unread";
      badge.textContent = String(summary.unread);
      item.append(badge);
    }
    item.addEventListener("click", () => act(() => open(summary.conversation_id)));
    list.append(item);
  }
  // Conversations this device was removed from stay readable, marked as such.
  for (const left of gone) {
    const item = document.createElement("li");
    item.dataset["id"] = left.conversationId;
    item.classList.add("gone");
    item.textContent = `${left.kind === "direct" ? "Chat" : "Group"} (no longer a member)`;
    item.addEventListener("click", () => act(() => open(left.conversationId)));
    list.append(item);
  }
  if (current !== undefined) {
    await showConversation();
  }
}

// ---- A conversation -------------------------------------------------------------------------

async function open(conversationId: string): Promise<void> {
  current = conversationId;
  await refresh();
}

async function showConversation(): Promise<void> {
  if (current === undefined) {
    return;
  }
  const summary = summaries.find((found) => found.conversation_id === current);
  $("title").textContent = summary === undefined ? "No longer a member" : titleOf(summary);
  $("composer").classList.toggle("hidden", summary === undefined);
  $("members").classList.toggle("hidden", summary === undefined);
  for (const item of $("conversations").children) {
    item.classList.toggle("current", (item as HTMLElement).dataset["id"] === current);
  }
  const history = await renderMessages(current);
  if (summary === undefined) {
    return;
  }
  showMembers(summary);
  showReceipts();
  showTyping();
  const last = history.at(-1);
  if (last !== undefined && summary.read_seq < last.seq) {
    await client.markRead(current, last.seq);
    summary.read_seq = last.seq;
    summary.unread = 0;
    const badge = $("conversations").querySelector(`li[data-id="${current}"] .unread`);
    badge?.remove();
  }
}

function showMembers(summary: ConversationSummary): void {
  const list = $("member-list");
  list.replaceChildren();
  const isGroup = summary.kind === "group";
  for (const member of summary.members) {
    const item = document.createElement("li");
    item.dataset["user"] = member.user_id;
    item.textContent = nameOf(member.user_id);
    if (member.user_id !== client.userId) {
      const safety = document.createElement("button");
      safety.type = "button";
      safety.className = "safety";
      safety.textContent = "Safety number";
      safety.addEventListener("click", () =>
        act(async () => {
          $("safety").textContent = `Safety number with ${nameOf(member.user_id)}:\n${await client.safetyNumber(member.user_id)}`;
        }),
      );
      item.append(" ", safety);
      if (isGroup) {
        const remove = document.createElement("button");
        remove.type = "button";
        remove.className = "remove";
        remove.textContent = "Remove";
        remove.addEventListener("click", () =>
          act(async () => {
            await client.removeUsers(summary.conversation_id, [member.user_id]);
            await refresh();
          }),
        );
        item.append(" ", remove);
      }
    }
    list.append(item);
  }
  $("add-form").classList.toggle("hidden", !isGroup);
  $("safety").textContent = "";
}

/**
 * Shows a conversation's messages as people read them (edits, deletions, reactions, polls and
 * display names applied by the SDK's timeline); returns the kept history.
 */
async function renderMessages(conversationId: string): Promise<Message[]> {
  const history = await client.history(conversationId);
  if (conversationId !== current) {
    return history;
  }
  const shown = timeline(history);
  const list = $("messages");
  list.replaceChildren();
  for (const entry of shown.items) {
    const item = document.createElement("li");
    item.dataset["seq"] = String(entry.seq);
    const mine = entry.senderUser === client.userId;
    item.classList.toggle("mine", mine);
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = shown.displayNames.get(entry.senderUser) ?? nameOf(entry.senderUser);
    item.append(who);
    if (entry.quote !== undefined) {
      const quote = document.createElement("div");
      quote.className = "quote";
      quote.textContent = `${nameOf(entry.quote.senderUser)}: ${entry.quote.text}`;
      item.append(quote);
    }
    const bubble = document.createElement("span");
    bubble.className = "bubble";
    bubble.textContent = itemText(entry);
    item.append(bubble);
    if (entry.reactions.size > 0) {
      const reactions = document.createElement("div");
      reactions.className = "reactions";
      reactions.textContent = [...entry.reactions]
        .map(([emoji, users]) => `${emoji} ${users.map(nameOf).join(", ")}`)
        .join("  ");
      item.append(reactions);
    }
    if (mine) {
      const status = document.createElement("span");
      status.className = "status";
      item.append(status);
    }
    list.append(item);
  }
  list.lastElementChild?.scrollIntoView({ block: "end" });
  showReceipts();
  return history;
}

/** Own messages show who has read them (from members' read positions and live receipts). */
function showReceipts(): void {
  const summary = summaries.find((found) => found.conversation_id === current);
  if (summary === undefined) {
    return;
  }
  const others = summary.members.filter((member) => member.user_id !== client.userId);
  for (const item of $("messages").querySelectorAll<HTMLElement>("li.mine")) {
    const seq = Number(item.dataset["seq"]);
    const readers = others.filter((member) => member.read_seq >= seq).map((member) => nameOf(member.user_id));
    const status = item.querySelector(".status");
    if (status !== null) {
      status.textContent = readers.length === 0 ? "sent" : `read by ${readers.join(", ")}`;
    }
  }
}

/** "@ben is typing…" while a typing frame is fresh (senders repeat it every few seconds). */
function showTyping(): void {
  const now = Date.now();
  const who = [...(typing.get(current ?? "") ?? new Map<string, number>())]
    .filter(([, since]) => now - since < 6000)
    .map(([user]) => nameOf(user));
  $("typing").textContent = who.length === 0 ? "" : `${who.join(", ")} ${who.length === 1 ? "is" : "are"} typing…`;
}
setInterval(showTyping, 1000);

// ---- Actions --------------------------------------------------------------------------------

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $<HTMLInputElement>("text");
  const text = input.value;
  if (current === undefined || text.trim() === "") {
    return;
  }
  const conversationId = current;
  input.value = "";
  typingSent = 0;
  stream?.typing(conversationId, false);
  act(async () => {
    await client.sendText(conversationId, text);
    await renderMessages(conversationId);
  });
});

$("text").addEventListener("input", () => {
  // Typing frames are repeated at most every 3 seconds while the user types.
  if (current !== undefined && Date.now() - typingSent > 3000) {
    typingSent = Date.now();
    stream?.typing(current, true);
  }
});

async function users(text: string): Promise<string[]> {
  const named = text
    .split(/[\s,]+/)
    .map((part) => part.trim())
    .filter((part) => part !== "");
  const found: string[] = [];
  for (const who of named) {
    found.push(await client.resolve(who.startsWith("@") || who.length === 43 ? who : `@${who}`));
  }
  return found;
}

$("dm-form").addEventListener("submit", (event) => {
  event.preventDefault();
  act(async () => {
    const [user] = await users($<HTMLInputElement>("dm-user").value);
    if (user === undefined) {
      return;
    }
    const id = (await client.directWith(user)) ?? (await client.createConversation("direct", [user]));
    $<HTMLInputElement>("dm-user").value = "";
    await open(id);
  });
});

$("group-form").addEventListener("submit", (event) => {
  event.preventDefault();
  act(async () => {
    const members = await users($<HTMLInputElement>("group-users").value);
    const id = await client.createConversation("group", members);
    $<HTMLInputElement>("group-users").value = "";
    await open(id);
  });
});

$("add-form").addEventListener("submit", (event) => {
  event.preventDefault();
  act(async () => {
    if (current === undefined) {
      return;
    }
    await client.addUsers(current, await users($<HTMLInputElement>("add-user").value));
    $<HTMLInputElement>("add-user").value = "";
    await refresh();
  });
});

$("leave").addEventListener("click", () => {
  act(async () => {
    if (current !== undefined) {
      await client.leave(current);
      await refresh();
    }
  });
});

$("approve-form").addEventListener("submit", (event) => {
  event.preventDefault();
  act(async () => {
    const code = $<HTMLInputElement>("approve-code").value;
    await client.approveLink(code, "linked from the web");
    $<HTMLInputElement>("approve-code").value = "";
    say("approved: the new device joins your conversations as soon as it is ready");
    // The new device uploads its KeyPackages only once it sees the approval: add it to every
    // conversation as soon as it can be (for up to two minutes).
    for (let i = 0; i < 60; i++) {
      const done = await client.upkeep();
      if (done?.type === "devices_updated" && done.added > 0) {
        say("the new device is in your conversations");
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  });
});

// ---- Push notifications ---------------------------------------------------------------------

/**
 * Subscribes this browser to Web Push through the service worker (`sw.js`), which shows a
 * notification for each wake-up roostd sends while the app has no socket open.
 */
$("notify").addEventListener("click", () => {
  act(async () => {
    if (!("serviceWorker" in navigator) || !("PushManager" in window)) {
      throw new Error("this browser cannot receive push notifications");
    }
    if ((await Notification.requestPermission()) !== "granted") {
      throw new Error("notifications are not allowed for this page");
    }
    const registration = await navigator.serviceWorker.register("sw.js");
    await navigator.serviceWorker.ready;
    const applicationServerKey = await client.api.pushServerKey();
    const subscription = await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: applicationServerKey as BufferSource });
    await client.api.subscribePush(subscription.toJSON() as PushSubscriptionJSON);
    say("notifications on: this browser is told when messages arrive while the app is closed");
  });
});

/** Gives roostd this browser's push subscription again (it drops one the push service
 * refuses, and one of a device that logged out), when the browser holds one. */
async function renewPush(): Promise<void> {
  if (!("serviceWorker" in navigator)) {
    return;
  }
  const registration = await navigator.serviceWorker.getRegistration();
  const subscription = await registration?.pushManager.getSubscription();
  if (subscription !== null && subscription !== undefined) {
    await client.api.subscribePush(subscription.toJSON() as PushSubscriptionJSON).catch(() => undefined);
  }
}

start().catch((error: unknown) => say(failure(error), "setup-status"));
