-- Attachments: encrypted files uploaded for one conversation. The bytes live in a directory or
-- an object store; a row says how many of them are durably written (`received`) and, with the
-- SHA-256 state after them, lets an upload resume after a cut connection.
CREATE TABLE attachments (
    id              BLOB PRIMARY KEY,
    conversation_id BLOB NOT NULL,
    uploader_user   BLOB NOT NULL,
    uploader_device BLOB NOT NULL,
    length          INTEGER NOT NULL,
    sha256          BLOB NOT NULL,
    chunk_bytes     INTEGER NOT NULL,
    received        INTEGER NOT NULL,
    hash_state      BLOB NOT NULL,
    completed_at    INTEGER,
    completed_seq   INTEGER,
    created_at      INTEGER NOT NULL
);
CREATE INDEX attachments_by_conversation ON attachments(conversation_id);

-- Which devices fetched an attachment's last byte (burn-on-read deletes it once all have).
CREATE TABLE attachment_fetches (
    attachment_id BLOB NOT NULL,
    device_id     BLOB NOT NULL,
    PRIMARY KEY (attachment_id, device_id)
) WITHOUT ROWID;

-- Bytes each user announced per UTC day (days since the Unix epoch), for the daily quota.
CREATE TABLE attachment_usage (
    user_id BLOB NOT NULL,
    day     INTEGER NOT NULL,
    bytes   INTEGER NOT NULL,
    PRIMARY KEY (user_id, day)
) WITHOUT ROWID;
