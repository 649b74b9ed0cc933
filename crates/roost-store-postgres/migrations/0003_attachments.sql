-- Attachments: encrypted files uploaded for one conversation. The bytes live in a directory or
-- an object store; a row says how many of them are durably written (`received`) and, with the
-- SHA-256 state after them, lets an upload resume after a cut connection.
CREATE TABLE attachments (
    id              BYTEA PRIMARY KEY,
    conversation_id BYTEA NOT NULL,
    uploader_user   BYTEA NOT NULL,
    uploader_device BYTEA NOT NULL,
    length          BIGINT NOT NULL,
    sha256          BYTEA NOT NULL,
    chunk_bytes     BIGINT NOT NULL,
    received        BIGINT NOT NULL,
    hash_state      BYTEA NOT NULL,
    completed_at    BIGINT,
    completed_seq   BIGINT,
    created_at      BIGINT NOT NULL
);
CREATE INDEX attachments_by_conversation ON attachments(conversation_id);

-- Which devices fetched an attachment's last byte (burn-on-read deletes it once all have).
CREATE TABLE attachment_fetches (
    attachment_id BYTEA NOT NULL,
    device_id     BYTEA NOT NULL,
    PRIMARY KEY (attachment_id, device_id)
);

-- Bytes each user announced per UTC day (days since the Unix epoch), for the daily quota.
CREATE TABLE attachment_usage (
    user_id BYTEA NOT NULL,
    day     BIGINT NOT NULL,
    bytes   BIGINT NOT NULL,
    PRIMARY KEY (user_id, day)
);
