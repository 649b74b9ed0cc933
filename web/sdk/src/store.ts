/**
 * Where a device keeps its state: its keys, its MLS groups, the messages it decrypted and how far
 * it got in each conversation. A {@link StateStore} is a map from keys to bytes whose writes come
 * in atomic batches, so a message and the group state that decrypted it are kept together or
 * not at all (and a crash in between leaves the entry unacknowledged, to come again).
 *
 * Three stores come with the SDK: {@link MemoryStore} (tests, throwaway sessions),
 * {@link IndexedDbStore} (browsers) and `FileStore` (Node, from `@roost/sdk/node`).
 */

/** One write of a batch: bytes to keep under a key, or `undefined` to delete it. */
export type Write = [key: string, value: Uint8Array | undefined];

/** A device's storage. */
export interface StateStore {
  get(key: string): Promise<Uint8Array | undefined>;
  /** Applies every write or none. */
  write(batch: Write[]): Promise<void>;
  /** The keys that start with `prefix`, in ascending order. */
  keys(prefix: string): Promise<string[]>;
}

/** A store in memory: gone with the process. */
export class MemoryStore implements StateStore {
  readonly entries = new Map<string, Uint8Array>();

  async get(key: string): Promise<Uint8Array | undefined> {
    return this.entries.get(key)?.slice();
  }

  async write(batch: Write[]): Promise<void> {
    for (const [key, value] of batch) {
      if (value === undefined) {
        this.entries.delete(key);
      } else {
        this.entries.set(key, value.slice());
      }
    }
  }

  async keys(prefix: string): Promise<string[]> {
    return [...this.entries.keys()].filter((key) => key.startsWith(prefix)).sort();
  }
}

/** A store in the browser's IndexedDB: one database per device state, one object store in it. */
export class IndexedDbStore implements StateStore {
  private constructor(private readonly db: IDBDatabase) {}

  static readonly OBJECTS = "state";

  /** Opens (or creates) the database `name`. */
  static async open(name = "roost"): Promise<IndexedDbStore> {
    const request = indexedDB.open(name, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(IndexedDbStore.OBJECTS);
    return new IndexedDbStore(await done(request));
  }

  async get(key: string): Promise<Uint8Array | undefined> {
    const objects = this.db.transaction(IndexedDbStore.OBJECTS, "readonly").objectStore(IndexedDbStore.OBJECTS);
    const value = (await done(objects.get(key))) as Uint8Array | undefined;
    return value === undefined ? undefined : new Uint8Array(value);
  }

  async write(batch: Write[]): Promise<void> {
    // One transaction: IndexedDB commits all of it or, on any failure, none.
    const transaction = this.db.transaction(IndexedDbStore.OBJECTS, "readwrite", { durability: "strict" });
    const objects = transaction.objectStore(IndexedDbStore.OBJECTS);
    for (const [key, value] of batch) {
      if (value === undefined) {
        objects.delete(key);
      } else {
        objects.put(value, key);
      }
    }
    await new Promise<void>((resolve, reject) => {
      transaction.oncomplete = () => resolve();
      transaction.onerror = () => reject(transaction.error ?? new Error("IndexedDB write failed"));
      transaction.onabort = () => reject(transaction.error ?? new Error("IndexedDB write aborted"));
    });
  }

  async keys(prefix: string): Promise<string[]> {
    const objects = this.db.transaction(IndexedDbStore.OBJECTS, "readonly").objectStore(IndexedDbStore.OBJECTS);
    // Every key that starts with `prefix` sorts between it and it followed by the highest char.
    const range = IDBKeyRange.bound(prefix, `${prefix}\uffff`);
    const keys = (await done(objects.getAllKeys(range))) as string[];
    return keys.sort();
  }

  close(): void {
    this.db.close();
  }
}

function done<T>(request: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error ?? new Error("IndexedDB request failed"));
  });
}
