//! `AccountStore` for PostgreSQL.

use async_trait::async_trait;
use roost_proto::{DeviceId, Handle, UserId};
use roost_store::{
    AccountStore, ChallengeRecord, ClaimedPackage, DeviceRecord, KeyPackageStock, LinkRecord, NewDevice,
    NewLinkRequest, SessionRecord, StoreError, StoreResult,
};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Row};

use crate::PostgresStore;
use crate::codec::{DEVICE_COLUMNS, LINK_COLUMNS, corrupt, device_id_at, device_record, link_record, user_id_at};
use crate::run::{Work, read, transaction};

#[async_trait]
impl AccountStore for PostgresStore {
    async fn register_user(&self, device: NewDevice, invite_hash: Option<[u8; 32]>) -> StoreResult<()> {
        transaction!(self.pool, "register_user", |tx| {
            // ON CONFLICT: a racing registration of the same key waits for the first to commit,
            // then inserts nothing and is refused.
            let user = sqlx::query("INSERT INTO users (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
                .bind(device.user_id.as_bytes().as_slice())
                .bind(device.created_at)
                .execute(&mut *tx)
                .await?;
            if user.rows_affected() != 1 {
                return Err(StoreError::UserExists.into());
            }
            if !insert_device(tx, &device).await? {
                return Err(StoreError::DeviceExists.into());
            }
            if let Some(hash) = invite_hash {
                // Row-locking and re-checked after a wait: of racing registrations one uses it.
                let used = sqlx::query("UPDATE invites SET used_by = $1 WHERE code_hash = $2 AND used_by IS NULL")
                    .bind(device.user_id.as_bytes().as_slice())
                    .bind(hash.as_slice())
                    .execute(&mut *tx)
                    .await?;
                if used.rows_affected() != 1 {
                    return Err(StoreError::InviteInvalid.into());
                }
            }
            Ok(())
        })
    }

    async fn create_invites(&self, hashes: &[[u8; 32]], now: i64) -> StoreResult<()> {
        let hashes: Vec<Vec<u8>> = hashes.iter().map(|hash| hash.to_vec()).collect();
        transaction!(self.pool, "create_invites", |tx| {
            sqlx::query(
                "INSERT INTO invites (code_hash, created_at) SELECT h, $2 FROM unnest($1::bytea[]) AS t(h) \
                 ON CONFLICT (code_hash) DO NOTHING",
            )
            .bind(&hashes)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
    }

    async fn user_exists(&self, user: &UserId) -> StoreResult<bool> {
        read!(self.pool, "user_exists", |conn| {
            exists(conn, "SELECT 1 FROM users WHERE id = $1", user.as_bytes()).await
        })
    }

    async fn add_device(&self, device: NewDevice, max_devices: u32) -> StoreResult<()> {
        transaction!(self.pool, "add_device", |tx| { add_device_in(tx, &device, max_devices).await })
    }

    async fn device(&self, device: &DeviceId) -> StoreResult<Option<DeviceRecord>> {
        read!(self.pool, "device", |conn| {
            let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1");
            let row = sqlx::query(AssertSqlSafe(sql)).bind(device.as_bytes().as_slice()).fetch_optional(conn).await?;
            Ok(row.as_ref().map(device_record).transpose()?)
        })
    }

    async fn active_devices(&self, user: &UserId) -> StoreResult<Vec<DeviceRecord>> {
        read!(self.pool, "active_devices", |conn| {
            let sql = format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 AND revoked_at IS NULL \
                 ORDER BY created_at, ordinal"
            );
            let rows = sqlx::query(AssertSqlSafe(sql)).bind(user.as_bytes().as_slice()).fetch_all(conn).await?;
            Ok(rows.iter().map(device_record).collect::<StoreResult<_>>()?)
        })
    }

    async fn revoke_device(&self, user: &UserId, device: &DeviceId, now: i64) -> StoreResult<bool> {
        transaction!(self.pool, "revoke_device", |tx| {
            let id = device.as_bytes().as_slice();
            let row = sqlx::query("SELECT revoked_at FROM devices WHERE id = $1 AND user_id = $2")
                .bind(id)
                .bind(user.as_bytes().as_slice())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
                return Ok(false);
            }
            // Membership changes under the conversations' locks, taken before the member rows
            // as every commit takes them.
            sqlx::query(
                "SELECT c.id FROM conversations c JOIN conversation_devices d ON d.conversation_id = c.id \
                 WHERE d.device_id = $1 ORDER BY c.id FOR NO KEY UPDATE OF c",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            // Everything that belongs to the device alone goes with it: its conversation
            // positions, sessions, KeyPackages, push subscription and queue (its user stays a
            // member through its other devices, if any).
            sqlx::query("DELETE FROM conversation_devices WHERE device_id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query(
                "DELETE FROM conversation_users cu WHERE cu.user_id = $1 AND NOT EXISTS (SELECT 1 FROM \
                 conversation_devices d WHERE d.conversation_id = cu.conversation_id AND d.user_id = $1 \
                 AND d.removed_seq IS NULL)",
            )
            .bind(user.as_bytes().as_slice())
            .execute(&mut *tx)
            .await?;
            let revoked = sqlx::query("UPDATE devices SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if revoked.rows_affected() != 1 {
                // A racing revocation committed first; what it removed is removed.
                return Ok(false);
            }
            for sql in [
                "DELETE FROM sessions WHERE device_id = $1",
                "DELETE FROM key_packages WHERE device_id = $1",
                "DELETE FROM push_subscriptions WHERE device_id = $1",
                "DELETE FROM device_queue WHERE device_id = $1",
            ] {
                sqlx::query(sql).bind(id).execute(&mut *tx).await?;
            }
            Ok(true)
        })
    }

    async fn create_link_request(&self, link: NewLinkRequest, now: i64) -> StoreResult<()> {
        transaction!(self.pool, "create_link_request", |tx| {
            if exists(tx, "SELECT 1 FROM devices WHERE id = $1", link.device_id.as_bytes()).await? {
                return Err(StoreError::DeviceExists.into());
            }
            // One statement takes the code if it is free or its request has lapsed; a live
            // request keeps it (no row is written, and the caller is refused).
            let taken = sqlx::query(
                "INSERT INTO link_requests AS l (code, device_id, created_at, expires_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (code) DO UPDATE SET device_id = EXCLUDED.device_id, created_at = EXCLUDED.created_at, \
                 expires_at = EXCLUDED.expires_at, user_id = NULL, certificate = NULL WHERE l.expires_at <= $3",
            )
            .bind(&link.code)
            .bind(link.device_id.as_bytes().as_slice())
            .bind(now)
            .bind(link.expires_at)
            .execute(&mut *tx)
            .await?;
            if taken.rows_affected() != 1 {
                return Err(StoreError::LinkPending.into());
            }
            Ok(())
        })
    }

    async fn link_request(&self, code: &str, now: i64) -> StoreResult<Option<LinkRecord>> {
        read!(self.pool, "link_request", |conn| {
            let sql = format!("SELECT {LINK_COLUMNS} FROM link_requests WHERE code = $1 AND expires_at > $2");
            let row = sqlx::query(AssertSqlSafe(sql)).bind(code).bind(now).fetch_optional(conn).await?;
            Ok(row.as_ref().map(link_record).transpose()?)
        })
    }

    async fn approve_link_request(&self, code: &str, device: NewDevice, max_devices: u32, now: i64) -> StoreResult<()> {
        transaction!(self.pool, "approve_link_request", |tx| {
            // Locked: of racing approvals, the second sees the first's.
            let sql =
                format!("SELECT {LINK_COLUMNS} FROM link_requests WHERE code = $1 AND expires_at > $2 FOR UPDATE");
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(code)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            let link = link_record(&row)?;
            if link.approved.is_some() {
                return Err(StoreError::LinkAlreadyApproved.into());
            }
            if link.device_id != device.id {
                return Err(StoreError::NotFound.into());
            }
            add_device_in(tx, &device, max_devices).await?;
            sqlx::query("UPDATE link_requests SET user_id = $1, certificate = $2 WHERE code = $3")
                .bind(device.user_id.as_bytes().as_slice())
                .bind(device.certificate.as_slice())
                .bind(code)
                .execute(&mut *tx)
                .await?;
            Ok(())
        })
    }

    async fn claim_handle(&self, user: &UserId, handle: &Handle, now: i64) -> StoreResult<()> {
        transaction!(self.pool, "claim_handle", |tx| {
            lock_user(tx, user).await?;
            let holder = sqlx::query("SELECT user_id FROM handles WHERE handle = $1")
                .bind(handle.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = holder {
                return if user_id_at(&row, "user_id")? == *user {
                    Ok(())
                } else {
                    Err(StoreError::HandleTaken.into())
                };
            }
            sqlx::query("DELETE FROM handles WHERE user_id = $1")
                .bind(user.as_bytes().as_slice())
                .execute(&mut *tx)
                .await?;
            // Another user's claim of the same handle may commit between the look-up and here.
            let claimed = sqlx::query(
                "INSERT INTO handles (handle, user_id, claimed_at) VALUES ($1, $2, $3) ON CONFLICT (handle) DO NOTHING",
            )
            .bind(handle.as_str())
            .bind(user.as_bytes().as_slice())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if claimed.rows_affected() != 1 {
                return Err(StoreError::HandleTaken.into());
            }
            Ok(())
        })
    }

    async fn release_handle(&self, user: &UserId, handle: &Handle) -> StoreResult<bool> {
        read!(self.pool, "release_handle", |conn| {
            let done = sqlx::query("DELETE FROM handles WHERE handle = $1 AND user_id = $2")
                .bind(handle.as_str())
                .bind(user.as_bytes().as_slice())
                .execute(conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    async fn resolve_handle(&self, handle: &Handle) -> StoreResult<Option<UserId>> {
        read!(self.pool, "resolve_handle", |conn| {
            let row = sqlx::query("SELECT user_id FROM handles WHERE handle = $1")
                .bind(handle.as_str())
                .fetch_optional(conn)
                .await?;
            Ok(row.map(|row| user_id_at(&row, "user_id")).transpose()?)
        })
    }

    async fn handle_of(&self, user: &UserId) -> StoreResult<Option<Handle>> {
        read!(self.pool, "handle_of", |conn| {
            let row = sqlx::query("SELECT handle FROM handles WHERE user_id = $1")
                .bind(user.as_bytes().as_slice())
                .fetch_optional(conn)
                .await?;
            let Some(row) = row else { return Ok(None) };
            let text: String = row.try_get("handle")?;
            Ok(Some(text.parse().map_err(|_| corrupt("handles.handle"))?))
        })
    }

    async fn insert_challenge(&self, challenge: &[u8], device: &DeviceId, expires_at: i64) -> StoreResult<()> {
        read!(self.pool, "insert_challenge", |conn| {
            sqlx::query("INSERT INTO challenges (challenge, device_id, expires_at) VALUES ($1, $2, $3)")
                .bind(challenge)
                .bind(device.as_bytes().as_slice())
                .bind(expires_at)
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    async fn challenge(&self, challenge: &[u8]) -> StoreResult<Option<ChallengeRecord>> {
        read!(self.pool, "challenge", |conn| {
            let row = sqlx::query("SELECT device_id, expires_at, used_at FROM challenges WHERE challenge = $1")
                .bind(challenge)
                .fetch_optional(conn)
                .await?;
            let Some(row) = row else { return Ok(None) };
            Ok(Some(ChallengeRecord {
                device_id: device_id_at(&row, "device_id")?,
                expires_at: row.try_get("expires_at")?,
                used: row.try_get::<Option<i64>, _>("used_at")?.is_some(),
            }))
        })
    }

    async fn consume_challenge(&self, challenge: &[u8], now: i64) -> StoreResult<bool> {
        read!(self.pool, "consume_challenge", |conn| {
            // Conditional and row-locking: of racing answers, exactly one changes the row.
            let done = sqlx::query("UPDATE challenges SET used_at = $1 WHERE challenge = $2 AND used_at IS NULL")
                .bind(now)
                .bind(challenge)
                .execute(conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    async fn create_session(&self, session: SessionRecord) -> StoreResult<()> {
        read!(self.pool, "create_session", |conn| {
            sqlx::query(
                "INSERT INTO sessions (token_hash, device_id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(session.token_hash.as_slice())
            .bind(session.device_id.as_bytes().as_slice())
            .bind(session.user_id.as_bytes().as_slice())
            .bind(session.created_at)
            .bind(session.expires_at)
            .execute(conn)
            .await?;
            Ok(())
        })
    }

    async fn session(&self, token_hash: &[u8; 32]) -> StoreResult<Option<SessionRecord>> {
        read!(self.pool, "session", |conn| {
            let row =
                sqlx::query("SELECT device_id, user_id, created_at, expires_at FROM sessions WHERE token_hash = $1")
                    .bind(token_hash.as_slice())
                    .fetch_optional(conn)
                    .await?;
            let Some(row) = row else { return Ok(None) };
            Ok(Some(SessionRecord {
                token_hash: *token_hash,
                device_id: device_id_at(&row, "device_id")?,
                user_id: user_id_at(&row, "user_id")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
            }))
        })
    }

    async fn delete_session(&self, token_hash: &[u8; 32]) -> StoreResult<bool> {
        read!(self.pool, "delete_session", |conn| {
            let done = sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
                .bind(token_hash.as_slice())
                .execute(conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    async fn add_key_packages(
        &self,
        device: &DeviceId,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        cap: u32,
        now: i64,
    ) -> StoreResult<KeyPackageStock> {
        transaction!(self.pool, "add_key_packages", |tx| {
            let id = device.as_bytes().as_slice();
            // The device's row serializes its uploads, so two cannot both pass the cap check.
            let locked = sqlx::query("SELECT 1 FROM devices WHERE id = $1 FOR NO KEY UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            if locked.is_none() {
                return Err(StoreError::NotFound.into());
            }
            let stock = stock_in(tx, device).await?;
            let incoming = u32::try_from(one_time.len()).unwrap_or(u32::MAX);
            if stock.one_time.saturating_add(incoming) > cap {
                return Err(StoreError::KeyPackageLimitReached.into());
            }
            // In upload order, so claims hand them out oldest first.
            sqlx::query(
                "INSERT INTO key_packages (device_id, last_resort, data, created_at) \
                 SELECT $1, FALSE, t.data, $3 FROM unnest($2::bytea[]) WITH ORDINALITY AS t(data, n) ORDER BY t.n",
            )
            .bind(id)
            .bind(&one_time)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if let Some(data) = &last_resort {
                sqlx::query("DELETE FROM key_packages WHERE device_id = $1 AND last_resort")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO key_packages (device_id, last_resort, data, created_at) VALUES ($1, TRUE, $2, $3)",
                )
                .bind(id)
                .bind(data.as_slice())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            stock_in(tx, device).await
        })
    }

    async fn key_package_stock(&self, device: &DeviceId) -> StoreResult<KeyPackageStock> {
        read!(self.pool, "key_package_stock", |conn| { stock_in(conn, device).await })
    }

    async fn claim_key_package(&self, device: &DeviceId) -> StoreResult<Option<ClaimedPackage>> {
        read!(self.pool, "claim_key_package", |conn| {
            let id = device.as_bytes().as_slice();
            // SKIP LOCKED: a racing claim takes the next package instead of waiting for this one
            // and then finding it gone; no package is handed out twice, and none is skipped
            // while unclaimed ones remain unlocked.
            let taken = sqlx::query(
                "DELETE FROM key_packages WHERE id = (SELECT id FROM key_packages \
                 WHERE device_id = $1 AND NOT last_resort ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING data",
            )
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(row) = taken {
                return Ok(Some(ClaimedPackage { data: row.try_get("data")?, last_resort: false }));
            }
            let fallback = sqlx::query(
                "SELECT data FROM key_packages WHERE device_id = $1 AND last_resort ORDER BY id DESC LIMIT 1",
            )
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            Ok(fallback
                .map(|row| row.try_get("data").map(|data| ClaimedPackage { data, last_resort: true }))
                .transpose()?)
        })
    }

    async fn prune_expired(&self, now: i64, challenge_grace_ms: i64) -> StoreResult<u64> {
        transaction!(self.pool, "prune_expired", |tx| {
            let mut pruned = 0;
            for (sql, cutoff) in [
                ("DELETE FROM challenges WHERE expires_at <= $1", now.saturating_sub(challenge_grace_ms)),
                ("DELETE FROM sessions WHERE expires_at <= $1", now),
                ("DELETE FROM link_requests WHERE expires_at <= $1", now),
            ] {
                pruned += sqlx::query(sql).bind(cutoff).execute(&mut *tx).await?.rows_affected();
            }
            Ok(pruned)
        })
    }
}

async fn exists(conn: &mut PgConnection, sql: &'static str, key: &[u8; 32]) -> Work<bool> {
    Ok(sqlx::query(sql).bind(key.as_slice()).fetch_optional(conn).await?.is_some())
}

/// Inserts a device; false when its key is taken (by a live device or a revoked one).
async fn insert_device(conn: &mut PgConnection, device: &NewDevice) -> Work<bool> {
    let done = sqlx::query(
        "INSERT INTO devices (id, user_id, certificate, name, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(device.id.as_bytes().as_slice())
    .bind(device.user_id.as_bytes().as_slice())
    .bind(device.certificate.as_slice())
    .bind(device.name.as_deref())
    .bind(device.created_at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Locks a user's row for the rest of the transaction (its device list and handle change one
/// transaction at a time). `NO KEY UPDATE` leaves rows that merely reference the user (a new
/// session) free to be written meanwhile.
async fn lock_user(conn: &mut PgConnection, user: &UserId) -> Work<()> {
    let locked = sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE")
        .bind(user.as_bytes().as_slice())
        .fetch_optional(conn)
        .await?;
    if locked.is_none() {
        return Err(StoreError::NotFound.into());
    }
    Ok(())
}

async fn add_device_in(conn: &mut PgConnection, device: &NewDevice, max_devices: u32) -> Work<()> {
    lock_user(conn, &device.user_id).await?;
    if exists(conn, "SELECT 1 FROM devices WHERE id = $1", device.id.as_bytes()).await? {
        return Err(StoreError::DeviceExists.into());
    }
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM devices WHERE user_id = $1 AND revoked_at IS NULL")
        .bind(device.user_id.as_bytes().as_slice())
        .fetch_one(&mut *conn)
        .await?;
    if active >= i64::from(max_devices) {
        return Err(StoreError::DeviceLimitReached.into());
    }
    if !insert_device(conn, device).await? {
        return Err(StoreError::DeviceExists.into());
    }
    Ok(())
}

async fn stock_in(conn: &mut PgConnection, device: &DeviceId) -> Work<KeyPackageStock> {
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE NOT last_resort) AS one_time, count(*) FILTER (WHERE last_resort) AS last_resort \
         FROM key_packages WHERE device_id = $1",
    )
    .bind(device.as_bytes().as_slice())
    .fetch_one(conn)
    .await?;
    let one_time: i64 = row.try_get("one_time")?;
    let last_resort: i64 = row.try_get("last_resort")?;
    Ok(KeyPackageStock { one_time: u32::try_from(one_time).unwrap_or(u32::MAX), last_resort: last_resort > 0 })
}
