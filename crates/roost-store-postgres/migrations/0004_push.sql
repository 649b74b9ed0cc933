-- Web Push subscriptions: at most one per device, gone with the device's revocation.
CREATE TABLE push_subscriptions (
    device_id  BYTEA PRIMARY KEY,
    user_id    BYTEA NOT NULL,
    endpoint   TEXT NOT NULL,
    p256dh     BYTEA NOT NULL,
    auth       BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

-- Keys the server makes once and keeps (the VAPID key that signs push requests), the same for
-- every instance.
CREATE TABLE server_keys (
    name   TEXT PRIMARY KEY,
    secret BYTEA NOT NULL
);
