/**
 * Node-only parts of the SDK (import `@roost/sdk/node`): a {@link FileStore} that keeps a
 * device's state in one file.
 */

import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from "node:fs";

import { fromBase64Url, toBase64Url } from "./bytes.js";
import type { StateStore, Write } from "./store.js";

/**
 * A device's state in one JSON file, written whole to a temporary file, synced and renamed over
 * the old one at every batch, so a crash leaves the old state or the new one. Meant for a
 * device's state (keys, groups, a history of moderate size), not for a large archive.
 */
export class FileStore implements StateStore {
  private readonly entries = new Map<string, Uint8Array>();

  private constructor(readonly path: string) {}

  /** Opens the file at `path`, or starts empty where there is none. */
  static open(path: string): FileStore {
    const store = new FileStore(path);
    let text: string | undefined;
    try {
      text = readFileSync(path, "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") {
        throw error;
      }
    }
    if (text !== undefined) {
      for (const [key, value] of Object.entries(JSON.parse(text) as Record<string, string>)) {
        store.entries.set(key, fromBase64Url(value));
      }
    }
    return store;
  }

  async get(key: string): Promise<Uint8Array | undefined> {
    return this.entries.get(key)?.slice();
  }

  async write(batch: Write[]): Promise<void> {
    const next = new Map(this.entries);
    for (const [key, value] of batch) {
      if (value === undefined) {
        next.delete(key);
      } else {
        next.set(key, value.slice());
      }
    }
    const text = JSON.stringify(Object.fromEntries([...next].map(([key, value]) => [key, toBase64Url(value)])));
    const temporary = `${this.path}.tmp`;
    const fd = openSync(temporary, "w", 0o600);
    try {
      writeSync(fd, text);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temporary, this.path);
    this.entries.clear();
    for (const [key, value] of next) {
      this.entries.set(key, value);
    }
  }

  async keys(prefix: string): Promise<string[]> {
    return [...this.entries.keys()].filter((key) => key.startsWith(prefix)).sort();
  }
}
