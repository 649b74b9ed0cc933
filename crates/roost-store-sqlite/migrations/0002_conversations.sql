-- Conversations (MLS groups), their logs, per-device positions and device queues.
-- A message is one row in `entries` however many devices are members; each member device has
-- one row in `conversation_devices` holding its position.

ALTER TABLE users ADD COLUMN read_receipts BOOLEAN NOT NULL DEFAULT TRUE;

CREATE TABLE conversations (
    id               BLOB PRIMARY KEY,
    kind             TEXT NOT NULL,
    epoch            INTEGER NOT NULL,
    group_info       BLOB NOT NULL,
    last_seq         INTEGER NOT NULL,
    retention        TEXT NOT NULL,
    retention_ttl_ms INTEGER,
    created_at       INTEGER NOT NULL
);

CREATE TABLE conversation_users (
    conversation_id  BLOB NOT NULL REFERENCES conversations(id),
    user_id          BLOB NOT NULL,
    read_seq         INTEGER NOT NULL,
    joined_at        INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX conversation_users_by_user ON conversation_users(user_id);

-- removed_seq: the entry that removed the device; it still receives entries up to that one.
CREATE TABLE conversation_devices (
    conversation_id  BLOB NOT NULL REFERENCES conversations(id),
    device_id        BLOB NOT NULL,
    user_id          BLOB NOT NULL,
    joined_seq       INTEGER NOT NULL,
    acked_seq        INTEGER NOT NULL,
    removed_seq      INTEGER,
    PRIMARY KEY (conversation_id, device_id)
);
CREATE INDEX conversation_devices_by_device ON conversation_devices(device_id, conversation_id);

CREATE TABLE entries (
    conversation_id  BLOB NOT NULL,
    seq              INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    sender_user      BLOB NOT NULL,
    sender_device    BLOB NOT NULL,
    epoch            INTEGER NOT NULL,
    payload          BLOB NOT NULL,
    created_at       INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
CREATE INDEX entries_by_age ON entries(created_at);

-- Idempotency of sends: kept for the server's maximum age even after the entry is pruned.
CREATE TABLE message_ids (
    conversation_id   BLOB NOT NULL,
    sender_device     BLOB NOT NULL,
    client_message_id TEXT NOT NULL,
    seq               INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, sender_device, client_message_id)
);
CREATE INDEX message_ids_by_age ON message_ids(created_at);

-- Large payloads shared by many queue entries (one Welcome for every device a commit adds).
CREATE TABLE queue_blobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    payload          BLOB NOT NULL,
    created_at       INTEGER NOT NULL
);

CREATE TABLE device_queue (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id        BLOB NOT NULL,
    kind             TEXT NOT NULL,
    conversation_id  BLOB,
    seq              INTEGER,
    sender_device    BLOB,
    payload          BLOB,
    blob_id          INTEGER REFERENCES queue_blobs(id),
    created_at       INTEGER NOT NULL
);
CREATE INDEX device_queue_by_device ON device_queue(device_id, id);
CREATE INDEX device_queue_by_age ON device_queue(created_at);
CREATE INDEX device_queue_by_blob ON device_queue(blob_id);
