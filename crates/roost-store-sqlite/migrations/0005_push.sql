-- Web Push subscriptions: at most one per device, gone with the device's revocation.
CREATE TABLE push_subscriptions (
    device_id  BLOB PRIMARY KEY,
    user_id    BLOB NOT NULL,
    endpoint   TEXT NOT NULL,
    p256dh     BLOB NOT NULL,
    auth       BLOB NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Keys the server makes once and keeps (the VAPID key that signs push requests).
CREATE TABLE server_keys (
    name   TEXT PRIMARY KEY,
    secret BLOB NOT NULL
) WITHOUT ROWID;
