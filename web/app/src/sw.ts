/**
 * The web app's service worker: shows a notification when a Roost wake-up arrives over Web Push.
 * A wake-up says only that something arrived for this device (`{"type":"wake"}`, the same bytes
 * every time: docs/protocol.md, "Wake-ups"); opening the app connects its socket, which brings
 * what it was. Every push shows a notification, as browsers require of `userVisibleOnly`
 * subscriptions; one tag keeps a single notification however many wake-ups come.
 */

/// <reference lib="webworker" />

const worker = self as unknown as ServiceWorkerGlobalScope;

worker.addEventListener("push", (event: PushEvent) => {
  event.waitUntil(
    worker.registration.showNotification("Roost", {
      body: "New messages",
      tag: "roost-wake",
    }),
  );
});

worker.addEventListener("notificationclick", (event: NotificationEvent) => {
  event.notification.close();
  event.waitUntil(
    (async () => {
      const windows = await worker.clients.matchAll({ type: "window", includeUncontrolled: true });
      const open = windows[0];
      if (open !== undefined) {
        await open.focus();
      } else {
        await worker.clients.openWindow(worker.registration.scope);
      }
    })(),
  );
});
