-- Users, devices, handles, invites, authentication and the key directory.
-- Ids and keys are raw 32-byte BLOBs; times are Unix milliseconds.

CREATE TABLE users (
    id          BLOB PRIMARY KEY,
    created_at  INTEGER NOT NULL
);

-- Revoked devices stay as tombstones so a revoked key can never be registered again.
CREATE TABLE devices (
    id          BLOB PRIMARY KEY,
    user_id     BLOB NOT NULL REFERENCES users(id),
    certificate BLOB NOT NULL,
    name        TEXT,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX devices_by_user ON devices(user_id, created_at);

CREATE TABLE handles (
    handle      TEXT PRIMARY KEY,
    user_id     BLOB NOT NULL UNIQUE REFERENCES users(id),
    claimed_at  INTEGER NOT NULL
);

CREATE TABLE invites (
    code_hash   BLOB PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    used_by     BLOB
);

CREATE TABLE challenges (
    challenge   BLOB PRIMARY KEY,
    device_id   BLOB NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);
CREATE INDEX challenges_by_expiry ON challenges(expires_at);

CREATE TABLE sessions (
    token_hash  BLOB PRIMARY KEY,
    device_id   BLOB NOT NULL REFERENCES devices(id),
    user_id     BLOB NOT NULL REFERENCES users(id),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX sessions_by_device ON sessions(device_id);
CREATE INDEX sessions_by_expiry ON sessions(expires_at);

CREATE TABLE link_requests (
    code        TEXT PRIMARY KEY,
    device_id   BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    user_id     BLOB,
    certificate BLOB
);

CREATE TABLE key_packages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id   BLOB NOT NULL REFERENCES devices(id),
    last_resort BOOLEAN NOT NULL,
    data        BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX key_packages_by_device ON key_packages(device_id, last_resort, id);
