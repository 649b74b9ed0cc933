-- The Roost schema on PostgreSQL. Ids and keys are raw BYTEA (32-byte keys, 16-byte
-- conversation ids); times are Unix milliseconds in BIGINT.

CREATE TABLE users (
    id            BYTEA PRIMARY KEY,
    created_at    BIGINT NOT NULL,
    read_receipts BOOLEAN NOT NULL DEFAULT TRUE
);

-- Revoked devices stay as tombstones so a revoked key can never be registered again.
-- `ordinal` orders devices created in the same millisecond by insertion.
CREATE TABLE devices (
    id          BYTEA PRIMARY KEY,
    user_id     BYTEA NOT NULL REFERENCES users(id),
    certificate BYTEA NOT NULL,
    name        TEXT,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT,
    ordinal     BIGINT GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX devices_by_user ON devices(user_id, created_at, ordinal);

CREATE TABLE handles (
    handle      TEXT PRIMARY KEY,
    user_id     BYTEA NOT NULL UNIQUE REFERENCES users(id),
    claimed_at  BIGINT NOT NULL
);

CREATE TABLE invites (
    code_hash   BYTEA PRIMARY KEY,
    created_at  BIGINT NOT NULL,
    used_by     BYTEA
);

CREATE TABLE challenges (
    challenge   BYTEA PRIMARY KEY,
    device_id   BYTEA NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE INDEX challenges_by_expiry ON challenges(expires_at);

CREATE TABLE sessions (
    token_hash  BYTEA PRIMARY KEY,
    device_id   BYTEA NOT NULL REFERENCES devices(id),
    user_id     BYTEA NOT NULL REFERENCES users(id),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX sessions_by_device ON sessions(device_id);
CREATE INDEX sessions_by_expiry ON sessions(expires_at);

CREATE TABLE link_requests (
    code        TEXT PRIMARY KEY,
    device_id   BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    user_id     BYTEA,
    certificate BYTEA
);

CREATE TABLE key_packages (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   BYTEA NOT NULL REFERENCES devices(id),
    last_resort BOOLEAN NOT NULL,
    data        BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX key_packages_by_device ON key_packages(device_id, last_resort, id);

-- A conversation's row is its lock: every change of its log or membership takes it FOR UPDATE
-- first. Its head (epoch, last_seq) changes with every send; the free space left on each page
-- lets PostgreSQL update it in place (a HOT update) instead of adding index entries each time.
CREATE TABLE conversations (
    id               BYTEA PRIMARY KEY,
    kind             TEXT NOT NULL,
    epoch            BIGINT NOT NULL,
    group_info       BYTEA NOT NULL,
    last_seq         BIGINT NOT NULL,
    retention        TEXT NOT NULL,
    retention_ttl_ms BIGINT,
    created_at       BIGINT NOT NULL
) WITH (fillfactor = 50);

CREATE TABLE conversation_users (
    conversation_id  BYTEA NOT NULL REFERENCES conversations(id),
    user_id          BYTEA NOT NULL,
    read_seq         BIGINT NOT NULL,
    joined_at        BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX conversation_users_by_user ON conversation_users(user_id);

-- removed_seq: the entry that removed the device; it still receives entries up to that one.
CREATE TABLE conversation_devices (
    conversation_id  BYTEA NOT NULL REFERENCES conversations(id),
    device_id        BYTEA NOT NULL,
    user_id          BYTEA NOT NULL,
    joined_seq       BIGINT NOT NULL,
    acked_seq        BIGINT NOT NULL,
    removed_seq      BIGINT,
    PRIMARY KEY (conversation_id, device_id)
) WITH (fillfactor = 80);
CREATE INDEX conversation_devices_by_device ON conversation_devices(device_id, conversation_id);

CREATE TABLE entries (
    conversation_id  BYTEA NOT NULL,
    seq              BIGINT NOT NULL,
    kind             TEXT NOT NULL,
    sender_user      BYTEA NOT NULL,
    sender_device    BYTEA NOT NULL,
    epoch            BIGINT NOT NULL,
    payload          BYTEA NOT NULL,
    created_at       BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
CREATE INDEX entries_by_age ON entries(created_at);

-- Idempotency of sends, kept for the server's maximum age even after the entry is pruned. The
-- key leads with the client message id: ids that start with the send time (as the roost
-- client's do) then land on the last pages of the index rather than one page per conversation.
CREATE TABLE message_ids (
    client_message_id TEXT NOT NULL,
    sender_device     BYTEA NOT NULL,
    conversation_id   BYTEA NOT NULL,
    seq               BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    PRIMARY KEY (client_message_id, sender_device, conversation_id)
);
CREATE INDEX message_ids_by_age ON message_ids(created_at);

-- Large payloads shared by many queue entries (one Welcome for every device a commit adds).
CREATE TABLE queue_blobs (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload     BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Each device's queue is numbered by its own counter. Taking the next number locks the
-- device's counter row until the transaction ends, so a device's queue entries become visible
-- in the order of their ids (a global sequence would let a later id commit before an earlier
-- one, and a reader that moved past the later id would never see the earlier).
CREATE TABLE queue_heads (
    device_id   BYTEA PRIMARY KEY,
    last_id     BIGINT NOT NULL
);

CREATE TABLE device_queue (
    device_id        BYTEA NOT NULL,
    id               BIGINT NOT NULL,
    kind             TEXT NOT NULL,
    conversation_id  BYTEA,
    seq              BIGINT,
    sender_device    BYTEA,
    payload          BYTEA,
    blob_id          BIGINT REFERENCES queue_blobs(id),
    created_at       BIGINT NOT NULL,
    PRIMARY KEY (device_id, id)
);
CREATE INDEX device_queue_by_age ON device_queue(created_at);
CREATE INDEX device_queue_by_blob ON device_queue(blob_id);
