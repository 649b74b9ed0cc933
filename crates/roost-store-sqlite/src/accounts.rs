//! `AccountStore` for SQLite.

use async_trait::async_trait;
use roost_proto::{DeviceId, Handle, UserId};
use roost_store::{
    AccountStore, ChallengeRecord, ClaimedPackage, DeviceRecord, KeyPackageStock, LinkRecord, NewDevice,
    NewLinkRequest, SessionRecord, StoreError, StoreResult, timed,
};
use sqlx::{Row, SqliteConnection};

use crate::SqliteStore;
use crate::codec::{corrupt, device_id_at, device_record, link_record, user_id_at};

#[async_trait]
impl AccountStore for SqliteStore {
    async fn register_user(&self, device: NewDevice, invite_hash: Option<[u8; 32]>) -> StoreResult<()> {
        timed("register_user", async {
            let mut tx = self.writer.begin().await?;
            if exists(&mut tx, "SELECT 1 FROM users WHERE id = $1", device.user_id.as_bytes()).await? {
                return Err(StoreError::UserExists);
            }
            if exists(&mut tx, "SELECT 1 FROM devices WHERE id = $1", device.id.as_bytes()).await? {
                return Err(StoreError::DeviceExists);
            }
            if let Some(hash) = invite_hash {
                let used = sqlx::query("UPDATE invites SET used_by = $1 WHERE code_hash = $2 AND used_by IS NULL")
                    .bind(device.user_id.as_bytes().as_slice())
                    .bind(hash.as_slice())
                    .execute(&mut *tx)
                    .await?;
                if used.rows_affected() != 1 {
                    return Err(StoreError::InviteInvalid);
                }
            }
            sqlx::query("INSERT INTO users (id, created_at) VALUES ($1, $2)")
                .bind(device.user_id.as_bytes().as_slice())
                .bind(device.created_at)
                .execute(&mut *tx)
                .await?;
            insert_device(&mut tx, &device).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn create_invites(&self, hashes: &[[u8; 32]], now: i64) -> StoreResult<()> {
        timed("create_invites", async {
            let mut tx = self.writer.begin().await?;
            for hash in hashes {
                sqlx::query("INSERT INTO invites (code_hash, created_at) VALUES ($1, $2)")
                    .bind(hash.as_slice())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn user_exists(&self, user: &UserId) -> StoreResult<bool> {
        timed("user_exists", async {
            let mut conn = self.reader.acquire().await?;
            exists(&mut conn, "SELECT 1 FROM users WHERE id = $1", user.as_bytes()).await
        })
        .await
    }

    async fn add_device(&self, device: NewDevice, max_devices: u32) -> StoreResult<()> {
        timed("add_device", async {
            let mut tx = self.writer.begin().await?;
            add_device_in(&mut tx, &device, max_devices).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn device(&self, device: &DeviceId) -> StoreResult<Option<DeviceRecord>> {
        timed("device", async {
            let row =
                sqlx::query("SELECT id, user_id, certificate, name, created_at, revoked_at FROM devices WHERE id = $1")
                    .bind(device.as_bytes().as_slice())
                    .fetch_optional(&self.reader)
                    .await?;
            row.as_ref().map(device_record).transpose()
        })
        .await
    }

    async fn active_devices(&self, user: &UserId) -> StoreResult<Vec<DeviceRecord>> {
        timed("active_devices", async {
            let rows = sqlx::query(
                "SELECT id, user_id, certificate, name, created_at, revoked_at FROM devices \
                 WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at, rowid",
            )
            .bind(user.as_bytes().as_slice())
            .fetch_all(&self.reader)
            .await?;
            rows.iter().map(device_record).collect()
        })
        .await
    }

    async fn revoke_device(&self, user: &UserId, device: &DeviceId, now: i64) -> StoreResult<bool> {
        timed("revoke_device", async {
            let mut tx = self.writer.begin().await?;
            let row = sqlx::query("SELECT revoked_at FROM devices WHERE id = $1 AND user_id = $2")
                .bind(device.as_bytes().as_slice())
                .bind(user.as_bytes().as_slice())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
                return Ok(false);
            }
            let id = device.as_bytes().as_slice();
            sqlx::query("UPDATE devices SET revoked_at = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            // Everything that belongs to the device alone goes with it: sessions, KeyPackages, its
            // push subscription, its queue and its conversation positions (its user stays a
            // member through its other devices, if any).
            for sql in [
                "DELETE FROM sessions WHERE device_id = $1",
                "DELETE FROM key_packages WHERE device_id = $1",
                "DELETE FROM push_subscriptions WHERE device_id = $1",
                "DELETE FROM device_queue WHERE device_id = $1",
                "DELETE FROM conversation_devices WHERE device_id = $1",
            ] {
                sqlx::query(sql).bind(id).execute(&mut *tx).await?;
            }
            sqlx::query(
                "DELETE FROM conversation_users WHERE user_id = $1 AND NOT EXISTS (SELECT 1 FROM conversation_devices d \
                 WHERE d.conversation_id = conversation_users.conversation_id AND d.user_id = $1 AND d.removed_seq IS NULL)",
            )
            .bind(user.as_bytes().as_slice())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn create_link_request(&self, link: NewLinkRequest, now: i64) -> StoreResult<()> {
        timed("create_link_request", async {
            let mut tx = self.writer.begin().await?;
            if exists(&mut tx, "SELECT 1 FROM devices WHERE id = $1", link.device_id.as_bytes()).await? {
                return Err(StoreError::DeviceExists);
            }
            let live = sqlx::query("SELECT 1 FROM link_requests WHERE code = $1 AND expires_at > $2")
                .bind(&link.code)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
            if live.is_some() {
                return Err(StoreError::LinkPending);
            }
            sqlx::query("DELETE FROM link_requests WHERE code = $1").bind(&link.code).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO link_requests (code, device_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                .bind(&link.code)
                .bind(link.device_id.as_bytes().as_slice())
                .bind(now)
                .bind(link.expires_at)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn link_request(&self, code: &str, now: i64) -> StoreResult<Option<LinkRecord>> {
        timed("link_request", async {
            let row = sqlx::query(
                "SELECT code, device_id, expires_at, user_id, certificate FROM link_requests \
                 WHERE code = $1 AND expires_at > $2",
            )
            .bind(code)
            .bind(now)
            .fetch_optional(&self.reader)
            .await?;
            row.as_ref().map(link_record).transpose()
        })
        .await
    }

    async fn approve_link_request(&self, code: &str, device: NewDevice, max_devices: u32, now: i64) -> StoreResult<()> {
        timed("approve_link_request", async {
            let mut tx = self.writer.begin().await?;
            let row = sqlx::query(
                "SELECT code, device_id, expires_at, user_id, certificate FROM link_requests \
                 WHERE code = $1 AND expires_at > $2",
            )
            .bind(code)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
            let link = link_record(&row)?;
            if link.approved.is_some() {
                return Err(StoreError::LinkAlreadyApproved);
            }
            if link.device_id != device.id {
                return Err(StoreError::NotFound);
            }
            add_device_in(&mut tx, &device, max_devices).await?;
            sqlx::query("UPDATE link_requests SET user_id = $1, certificate = $2 WHERE code = $3")
                .bind(device.user_id.as_bytes().as_slice())
                .bind(device.certificate.as_slice())
                .bind(code)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn claim_handle(&self, user: &UserId, handle: &Handle, now: i64) -> StoreResult<()> {
        timed("claim_handle", async {
            let mut tx = self.writer.begin().await?;
            let holder = sqlx::query("SELECT user_id FROM handles WHERE handle = $1")
                .bind(handle.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = holder {
                return if user_id_at(&row, "user_id")? == *user { Ok(()) } else { Err(StoreError::HandleTaken) };
            }
            sqlx::query("DELETE FROM handles WHERE user_id = $1")
                .bind(user.as_bytes().as_slice())
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO handles (handle, user_id, claimed_at) VALUES ($1, $2, $3)")
                .bind(handle.as_str())
                .bind(user.as_bytes().as_slice())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn release_handle(&self, user: &UserId, handle: &Handle) -> StoreResult<bool> {
        timed("release_handle", async {
            let done = sqlx::query("DELETE FROM handles WHERE handle = $1 AND user_id = $2")
                .bind(handle.as_str())
                .bind(user.as_bytes().as_slice())
                .execute(&self.writer)
                .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn resolve_handle(&self, handle: &Handle) -> StoreResult<Option<UserId>> {
        timed("resolve_handle", async {
            let row = sqlx::query("SELECT user_id FROM handles WHERE handle = $1")
                .bind(handle.as_str())
                .fetch_optional(&self.reader)
                .await?;
            row.map(|row| user_id_at(&row, "user_id")).transpose()
        })
        .await
    }

    async fn handle_of(&self, user: &UserId) -> StoreResult<Option<Handle>> {
        timed("handle_of", async {
            let row = sqlx::query("SELECT handle FROM handles WHERE user_id = $1")
                .bind(user.as_bytes().as_slice())
                .fetch_optional(&self.reader)
                .await?;
            let Some(row) = row else { return Ok(None) };
            let text: String = row.try_get("handle")?;
            text.parse().map(Some).map_err(|_| corrupt("handles.handle"))
        })
        .await
    }

    async fn insert_challenge(&self, challenge: &[u8], device: &DeviceId, expires_at: i64) -> StoreResult<()> {
        timed("insert_challenge", async {
            sqlx::query("INSERT INTO challenges (challenge, device_id, expires_at) VALUES ($1, $2, $3)")
                .bind(challenge)
                .bind(device.as_bytes().as_slice())
                .bind(expires_at)
                .execute(&self.writer)
                .await?;
            Ok(())
        })
        .await
    }

    async fn challenge(&self, challenge: &[u8]) -> StoreResult<Option<ChallengeRecord>> {
        timed("challenge", async {
            let row = sqlx::query("SELECT device_id, expires_at, used_at FROM challenges WHERE challenge = $1")
                .bind(challenge)
                .fetch_optional(&self.reader)
                .await?;
            let Some(row) = row else { return Ok(None) };
            Ok(Some(ChallengeRecord {
                device_id: device_id_at(&row, "device_id")?,
                expires_at: row.try_get("expires_at")?,
                used: row.try_get::<Option<i64>, _>("used_at")?.is_some(),
            }))
        })
        .await
    }

    async fn consume_challenge(&self, challenge: &[u8], now: i64) -> StoreResult<bool> {
        timed("consume_challenge", async {
            let done = sqlx::query("UPDATE challenges SET used_at = $1 WHERE challenge = $2 AND used_at IS NULL")
                .bind(now)
                .bind(challenge)
                .execute(&self.writer)
                .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn create_session(&self, session: SessionRecord) -> StoreResult<()> {
        timed("create_session", async {
            sqlx::query(
                "INSERT INTO sessions (token_hash, device_id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(session.token_hash.as_slice())
            .bind(session.device_id.as_bytes().as_slice())
            .bind(session.user_id.as_bytes().as_slice())
            .bind(session.created_at)
            .bind(session.expires_at)
            .execute(&self.writer)
            .await?;
            Ok(())
        })
        .await
    }

    async fn session(&self, token_hash: &[u8; 32]) -> StoreResult<Option<SessionRecord>> {
        timed("session", async {
            let row = sqlx::query(
                "SELECT token_hash, device_id, user_id, created_at, expires_at FROM sessions WHERE token_hash = $1",
            )
            .bind(token_hash.as_slice())
            .fetch_optional(&self.reader)
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
        .await
    }

    async fn delete_session(&self, token_hash: &[u8; 32]) -> StoreResult<bool> {
        timed("delete_session", async {
            let done = sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
                .bind(token_hash.as_slice())
                .execute(&self.writer)
                .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn add_key_packages(
        &self,
        device: &DeviceId,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        cap: u32,
        now: i64,
    ) -> StoreResult<KeyPackageStock> {
        timed("add_key_packages", async {
            let id = device.as_bytes().as_slice();
            let mut tx = self.writer.begin().await?;
            let stock = stock_in(&mut tx, device).await?;
            let incoming = u32::try_from(one_time.len()).unwrap_or(u32::MAX);
            if stock.one_time.saturating_add(incoming) > cap {
                return Err(StoreError::KeyPackageLimitReached);
            }
            for data in &one_time {
                sqlx::query(
                    "INSERT INTO key_packages (device_id, last_resort, data, created_at) VALUES ($1, FALSE, $2, $3)",
                )
                .bind(id)
                .bind(data.as_slice())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            if let Some(data) = &last_resort {
                sqlx::query("DELETE FROM key_packages WHERE device_id = $1 AND last_resort = TRUE")
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
            let stock = stock_in(&mut tx, device).await?;
            tx.commit().await?;
            Ok(stock)
        })
        .await
    }

    async fn key_package_stock(&self, device: &DeviceId) -> StoreResult<KeyPackageStock> {
        timed("key_package_stock", async {
            let mut conn = self.reader.acquire().await?;
            stock_in(&mut conn, device).await
        })
        .await
    }

    async fn claim_key_package(&self, device: &DeviceId) -> StoreResult<Option<ClaimedPackage>> {
        timed("claim_key_package", async {
            let id = device.as_bytes().as_slice();
            // One statement on the single writer connection: the select and the delete cannot
            // interleave with another claim.
            let taken = sqlx::query(
                "DELETE FROM key_packages WHERE id = (SELECT id FROM key_packages \
                 WHERE device_id = $1 AND last_resort = FALSE ORDER BY id LIMIT 1) RETURNING data",
            )
            .bind(id)
            .fetch_optional(&self.writer)
            .await?;
            if let Some(row) = taken {
                return Ok(Some(ClaimedPackage { data: row.try_get("data")?, last_resort: false }));
            }
            let fallback = sqlx::query(
                "SELECT data FROM key_packages WHERE device_id = $1 AND last_resort = TRUE ORDER BY id DESC LIMIT 1",
            )
            .bind(id)
            .fetch_optional(&self.writer)
            .await?;
            fallback.map(|row| Ok(ClaimedPackage { data: row.try_get("data")?, last_resort: true })).transpose()
        })
        .await
    }

    async fn prune_expired(&self, now: i64, challenge_grace_ms: i64) -> StoreResult<u64> {
        timed("prune_expired", async {
            let mut tx = self.writer.begin().await?;
            let mut pruned = 0;
            pruned += sqlx::query("DELETE FROM challenges WHERE expires_at <= $1")
                .bind(now.saturating_sub(challenge_grace_ms))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            pruned += sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            pruned += sqlx::query("DELETE FROM link_requests WHERE expires_at <= $1")
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(pruned)
        })
        .await
    }
}

async fn exists(conn: &mut SqliteConnection, sql: &'static str, key: &[u8; 32]) -> StoreResult<bool> {
    Ok(sqlx::query(sql).bind(key.as_slice()).fetch_optional(conn).await?.is_some())
}

async fn insert_device(conn: &mut SqliteConnection, device: &NewDevice) -> StoreResult<()> {
    sqlx::query("INSERT INTO devices (id, user_id, certificate, name, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(device.id.as_bytes().as_slice())
        .bind(device.user_id.as_bytes().as_slice())
        .bind(device.certificate.as_slice())
        .bind(device.name.as_deref())
        .bind(device.created_at)
        .execute(conn)
        .await?;
    Ok(())
}

async fn add_device_in(conn: &mut SqliteConnection, device: &NewDevice, max_devices: u32) -> StoreResult<()> {
    if !exists(conn, "SELECT 1 FROM users WHERE id = $1", device.user_id.as_bytes()).await? {
        return Err(StoreError::NotFound);
    }
    if exists(conn, "SELECT 1 FROM devices WHERE id = $1", device.id.as_bytes()).await? {
        return Err(StoreError::DeviceExists);
    }
    let active: i64 = sqlx::query("SELECT COUNT(*) AS n FROM devices WHERE user_id = $1 AND revoked_at IS NULL")
        .bind(device.user_id.as_bytes().as_slice())
        .fetch_one(&mut *conn)
        .await?
        .try_get("n")?;
    if active >= i64::from(max_devices) {
        return Err(StoreError::DeviceLimitReached);
    }
    insert_device(conn, device).await
}

async fn stock_in(conn: &mut SqliteConnection, device: &DeviceId) -> StoreResult<KeyPackageStock> {
    let row = sqlx::query(
        "SELECT COALESCE(SUM(CASE WHEN last_resort THEN 0 ELSE 1 END), 0) AS one_time, \
         COALESCE(SUM(CASE WHEN last_resort THEN 1 ELSE 0 END), 0) AS last_resort \
         FROM key_packages WHERE device_id = $1",
    )
    .bind(device.as_bytes().as_slice())
    .fetch_one(conn)
    .await?;
    let one_time: i64 = row.try_get("one_time")?;
    let last_resort: i64 = row.try_get("last_resort")?;
    Ok(KeyPackageStock { one_time: u32::try_from(one_time).unwrap_or(u32::MAX), last_resort: last_resort > 0 })
}
