/**
 * The HTTP API (docs/protocol.md), one typed method per route this SDK uses, over `fetch`.
 * Failures are {@link RoostError}s carrying the server's stable error code.
 */

import { fromBase64Url, toBase64Url } from "./bytes.js";
import { KeyPair } from "./keys.js";
import { authStatement, deviceCertificateStatement } from "./statements.js";

/**
 * A Web Push subscription, in the shape a browser's `PushSubscription.toJSON()` gives: pass that
 * as it is to {@link Api.subscribePush}.
 */
export interface PushSubscriptionJSON {
  endpoint: string;
  expirationTime?: number | null;
  keys: { p256dh: string; auth: string };
}

/** The calling device's push subscription, as the server has it. */
export interface PushStatus {
  subscribed: boolean;
  endpoint?: string;
  created_at?: number;
}

/** A refused or failed request: the HTTP status and the server's stable code. */
export class RoostError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "RoostError";
  }
}

/** A device's session. */
export interface Session {
  token: string;
  user_id: string;
  device_id: string;
  expires_at: number;
}

/** A connection to one server, with a session token once logged in. */
export class Api {
  token: string | undefined;

  constructor(readonly base: string) {
    this.base = base.replace(/\/+$/, "");
  }

  /** A request; the parsed JSON answer, or a {@link RoostError}. */
  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = {};
    if (body !== undefined) {
      headers["content-type"] = "application/json";
    }
    if (this.token !== undefined) {
      headers["authorization"] = `Bearer ${this.token}`;
    }
    const init: RequestInit = { method, headers };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
    }
    const response = await fetch(`${this.base}${path}`, init);
    const text = await response.text();
    if (!response.ok) {
      let code = "unknown";
      let message = `HTTP ${response.status}`;
      try {
        const parsed = JSON.parse(text) as { error?: { code?: string; message?: string } };
        code = parsed.error?.code ?? code;
        message = parsed.error?.message ?? message;
      } catch {
        // Not a JSON error (a proxy's page): keep the status.
      }
      throw new RoostError(response.status, code, message);
    }
    return (text === "" ? null : JSON.parse(text)) as T;
  }

  /** Registers a new user whose identity key is `identity`, with `device` as its first device. */
  async register(identity: KeyPair, device: KeyPair, deviceName?: string): Promise<void> {
    const certificate = await identity.sign(deviceCertificateStatement(identity.id, device.id));
    const body: Record<string, unknown> = {
      identity_key: identity.id,
      device_id: device.id,
      device_certificate: toBase64Url(certificate),
    };
    if (deviceName !== undefined) {
      body["device_name"] = deviceName;
    }
    await this.call("POST", "/v1/users", body);
  }

  /** Authenticates `device` (challenge, then session) and keeps the token for later calls. */
  async login(device: KeyPair): Promise<Session> {
    const challenge = await this.call<{ challenge: string; server_name: string }>("POST", "/v1/auth/challenge", {
      device_id: device.id,
    });
    const statement = authStatement(challenge.server_name, device.id, fromBase64Url(challenge.challenge));
    const session = await this.call<Session>("POST", "/v1/auth/session", {
      device_id: device.id,
      challenge: challenge.challenge,
      signature: toBase64Url(await device.sign(statement)),
    });
    this.token = session.token;
    return session;
  }

  /** The session of the token in use. */
  async whoami(): Promise<{ user_id: string; device_id: string; handle?: string; expires_at: number }> {
    return this.call("GET", "/v1/auth/session");
  }

  /** Ends the session; the token stops working at once (and the device's push subscription is gone). */
  async logout(): Promise<void> {
    await this.call("DELETE", "/v1/auth/session");
    this.token = undefined;
  }

  /**
   * The server's VAPID public key (65 bytes): what `pushManager.subscribe({ userVisibleOnly: true,
   * applicationServerKey })` takes in a browser.
   */
  async pushServerKey(): Promise<Uint8Array> {
    const key = await this.call<{ vapid_public_key: string }>("GET", "/v1/push/server-key");
    return fromBase64Url(key.vapid_public_key);
  }

  /**
   * Registers this device's Web Push subscription (replacing any earlier one): while the device
   * holds no socket, whatever arrives for it sends one wake-up there, `{"type":"wake"}`, until it
   * connects or syncs again.
   */
  async subscribePush(subscription: PushSubscriptionJSON): Promise<PushStatus> {
    const { endpoint, keys } = subscription;
    return this.call("PUT", "/v1/push/subscription", { endpoint, keys });
  }

  /** This device's push subscription. */
  async pushStatus(): Promise<PushStatus> {
    return this.call("GET", "/v1/push/subscription");
  }

  /** Removes this device's push subscription. */
  async unsubscribePush(): Promise<void> {
    await this.call("DELETE", "/v1/push/subscription");
  }
}
