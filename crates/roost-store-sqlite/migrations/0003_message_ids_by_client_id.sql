-- The idempotency key leads with the client message id instead of the conversation.
--
-- Client message ids that start with the send time (as the roost client's do) then arrive in
-- nearly ascending order across every device and conversation, so new keys land on the last
-- pages of the key instead of one page per conversation and device: a commit of many messages
-- dirties a few pages of it rather than one per message. Lookups always give all three columns,
-- so the order of the key does not change what is found. The rows are small and only ever found
-- by their key, so the table is the key itself (no separate rowid table).

CREATE TABLE message_ids_by_client_id (
    client_message_id TEXT NOT NULL,
    sender_device     BLOB NOT NULL,
    conversation_id   BLOB NOT NULL,
    seq               INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    PRIMARY KEY (client_message_id, sender_device, conversation_id)
) WITHOUT ROWID;

INSERT INTO message_ids_by_client_id (client_message_id, sender_device, conversation_id, seq, created_at)
SELECT client_message_id, sender_device, conversation_id, seq, created_at FROM message_ids;

DROP TABLE message_ids;
ALTER TABLE message_ids_by_client_id RENAME TO message_ids;
CREATE INDEX message_ids_by_age ON message_ids(created_at);
