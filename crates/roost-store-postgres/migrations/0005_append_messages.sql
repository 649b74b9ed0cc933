-- The group commit of messages in one call: a batch costs the database one statement, with its
-- implicit transaction and commit, and the appender one round trip, where a transaction of
-- separate statements cost five.
--
-- Takes the batch's messages as parallel arrays in the order they were sent and returns one row
-- per message, by its position from 1: 'appended' with its new sequence number, 'duplicate' with
-- the sequence number and time of the earlier message with its client message id,
-- 'not_found', 'not_a_member', or 'stale_epoch' with the conversation's current epoch. Each
-- message is decided as if sent alone, in order: the conversation exists, the sender is a
-- current member device, a retried id returns its original result (also when the original is
-- earlier in the same batch, and whatever the epoch is now), and the epoch is the current one;
-- accepted messages take the next sequence numbers of their conversation.
--
-- An id recorded where none should be (no writer of Roost records one without the
-- conversation's lock) fails the call on the unique index, and the caller starts over.
--
-- Every table is read by key, one lookup per message; the settings make those the plan (index
-- lookups in nested loops), planned once per connection rather than for each batch, whatever
-- the tables' sizes were when the connection first called: a plan chosen by cost on a new,
-- nearly empty database would scan whole tables once they have grown.
CREATE FUNCTION roost_append_messages(
    p_conversation  BYTEA[],
    p_sender_user   BYTEA[],
    p_sender_device BYTEA[],
    p_client_id     TEXT[],
    p_epoch         BIGINT[],
    p_payload       BYTEA[],
    p_created_at    BIGINT[],
    p_kind          TEXT
) RETURNS TABLE (message BIGINT, result TEXT, result_seq BIGINT, result_at BIGINT, current_epoch BIGINT)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
BEGIN
    -- Lock the batch's conversations, in id order as every writer does: until the commit no
    -- other transaction appends to them or changes their membership.
    PERFORM 1 FROM conversations WHERE id = ANY (p_conversation) ORDER BY id FOR NO KEY UPDATE;
    -- A statement of this function reads with a snapshot taken when it starts, after the locks
    -- were granted: it sees every earlier append and membership change of these conversations,
    -- from any process.
    RETURN QUERY
    WITH checked AS (
        SELECT s.*, c.id IS NOT NULL AS known, c.epoch AS head_epoch, c.last_seq AS head_seq,
               d.device_id IS NOT NULL AND d.removed_seq IS NULL AS active,
               m.seq AS earlier_seq, m.created_at AS earlier_at
        FROM unnest(p_conversation, p_sender_user, p_sender_device, p_client_id, p_epoch, p_payload, p_created_at)
             WITH ORDINALITY AS s(conversation_id, sender_user, sender_device, client_id, epoch, payload, created_at, n)
        LEFT JOIN conversations c ON c.id = s.conversation_id
        LEFT JOIN conversation_devices d ON d.conversation_id = s.conversation_id AND d.device_id = s.sender_device
        LEFT JOIN message_ids m ON m.client_message_id = s.client_id AND m.sender_device = s.sender_device
                               AND m.conversation_id = s.conversation_id
    ), firsts AS (
        -- Of the messages with one id that pass every check, the first is stored and the ones
        -- after it are its retries.
        SELECT *, min(n) FILTER (WHERE known AND active AND earlier_seq IS NULL AND epoch = head_epoch)
                      OVER (PARTITION BY conversation_id, sender_device, client_id) AS first_n
        FROM checked
    ), numbered AS (
        SELECT *, coalesce(n = first_n, false) AS stored,
               head_seq + count(*) FILTER (WHERE n = first_n) OVER (PARTITION BY conversation_id ORDER BY n) AS seq
        FROM firsts
    ), decided AS (
        SELECT *, max(seq) FILTER (WHERE stored) OVER same_id AS original_seq,
                  max(created_at) FILTER (WHERE stored) OVER same_id AS original_at
        FROM numbered
        WINDOW same_id AS (PARTITION BY conversation_id, sender_device, client_id)
    ), entries_written AS (
        INSERT INTO entries (conversation_id, seq, kind, sender_user, sender_device, epoch, payload, created_at)
        SELECT conversation_id, seq, p_kind, sender_user, sender_device, epoch, payload, created_at
        FROM decided WHERE stored
    ), ids_written AS (
        INSERT INTO message_ids (client_message_id, sender_device, conversation_id, seq, created_at)
        SELECT client_id, sender_device, conversation_id, seq, created_at FROM decided WHERE stored
    ), heads_moved AS (
        UPDATE conversations c SET last_seq = moved.last_seq
        FROM (SELECT conversation_id, max(seq) AS last_seq FROM decided WHERE stored GROUP BY conversation_id) moved
        WHERE c.id = moved.conversation_id
    )
    SELECT d.n,
           CASE WHEN NOT d.known THEN 'not_found'
                WHEN NOT d.active THEN 'not_a_member'
                WHEN d.earlier_seq IS NOT NULL THEN 'duplicate'
                WHEN d.stored THEN 'appended'
                WHEN d.first_n < d.n THEN 'duplicate'
                ELSE 'stale_epoch' END,
           CASE WHEN d.earlier_seq IS NOT NULL THEN d.earlier_seq WHEN d.stored THEN d.seq ELSE d.original_seq END,
           CASE WHEN d.earlier_seq IS NOT NULL THEN d.earlier_at WHEN d.stored THEN d.created_at ELSE d.original_at END,
           d.head_epoch
    FROM decided d
    ORDER BY d.n;
END
$$;
