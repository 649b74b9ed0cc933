//! The local store: the account's keys and session, conversations and decrypted history, in one
//! SQLite file (MLS group state lives in its own file, managed by OpenMLS's storage provider).
//!
//! The file holds secret keys: the SDK creates its directory readable by the owner only.

use std::path::Path;
use std::sync::Mutex;

use roost_proto::{ConversationId, DeviceId, UserId};
use rusqlite::{Connection, OptionalExtension, params};
use zeroize::Zeroizing;

use crate::content::Content;
use crate::error::{ClientError, Result};

/// The account on this device.
pub struct AccountRecord {
    /// The server's base URL.
    pub server: String,
    /// The user.
    pub user_id: UserId,
    /// This device.
    pub device_id: DeviceId,
    /// The identity key's secret, if this device holds it.
    pub identity_secret: Option<Zeroizing<[u8; 32]>>,
    /// The device key's secret.
    pub device_secret: Zeroizing<[u8; 32]>,
    /// The device certificate.
    pub certificate: [u8; 64],
    /// The current session token.
    pub token: Option<String>,
}

/// A stored, decrypted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Its sequence number.
    pub seq: u64,
    /// The sender.
    pub sender_user: UserId,
    /// The sending device.
    pub sender_device: DeviceId,
    /// When the server accepted it.
    pub created_at: i64,
    /// What it said.
    pub content: Content,
}

/// The local SQLite store.
pub struct LocalStore {
    connection: Mutex<Connection>,
}

/// The keys of this device's own push subscription, as kept.
pub struct SavedPushKeys {
    /// The endpoint they were made for.
    pub endpoint: String,
    /// The subscriber's secret key.
    pub secret: Zeroizing<Vec<u8>>,
    /// The authentication secret.
    pub auth: Vec<u8>,
}

impl LocalStore {
    /// Opens (creating) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS account (
                 id INTEGER PRIMARY KEY CHECK (id = 1), server TEXT NOT NULL, user_id BLOB NOT NULL,
                 device_id BLOB NOT NULL, identity_secret BLOB, device_secret BLOB NOT NULL,
                 certificate BLOB NOT NULL, token TEXT);
             CREATE TABLE IF NOT EXISTS pending_link (
                 id INTEGER PRIMARY KEY CHECK (id = 1), server TEXT NOT NULL, device_secret BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS conversations (
                 id BLOB PRIMARY KEY, kind TEXT NOT NULL, processed_seq INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS messages (
                 conversation_id BLOB NOT NULL, seq INTEGER NOT NULL, sender_user BLOB NOT NULL,
                 sender_device BLOB NOT NULL, created_at INTEGER NOT NULL, content TEXT NOT NULL,
                 PRIMARY KEY (conversation_id, seq));
             CREATE TABLE IF NOT EXISTS names (
                 user_id BLOB PRIMARY KEY, handle TEXT, learned_at INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS push_keys (
                 id INTEGER PRIMARY KEY CHECK (id = 1), endpoint TEXT NOT NULL, secret BLOB NOT NULL,
                 auth BLOB NOT NULL);",
        )?;
        Ok(Self { connection: Mutex::new(connection) })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>> {
        self.connection.lock().map_err(|_| ClientError::Store("the store lock is poisoned".into()))
    }

    /// Saves the account (the one row).
    pub fn save_account(&self, account: &AccountRecord) -> Result<()> {
        self.lock()?.execute(
            "INSERT OR REPLACE INTO account (id, server, user_id, device_id, identity_secret, device_secret, certificate, token)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                account.server,
                account.user_id.as_bytes().as_slice(),
                account.device_id.as_bytes().as_slice(),
                account.identity_secret.as_ref().map(|s| s.as_slice()),
                account.device_secret.as_slice(),
                account.certificate.as_slice(),
                account.token
            ],
        )?;
        Ok(())
    }

    /// The account, if one was created here.
    pub fn account(&self) -> Result<Option<AccountRecord>> {
        let connection = self.lock()?;
        let row = connection
            .query_row(
                "SELECT server, user_id, device_id, identity_secret, device_secret, certificate, token FROM account WHERE id = 1",
                [],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, Vec<u8>>(1)?,
                        row.get::<_, Vec<u8>>(2)?,
                        row.get::<_, Option<Vec<u8>>>(3)?,
                        row.get::<_, Vec<u8>>(4)?,
                        row.get::<_, Vec<u8>>(5)?,
                        row.get::<_, Option<String>>(6)?,
                    ))
                },
            )
            .optional()?;
        let Some((server, user, device, identity, secret, certificate, token)) = row else { return Ok(None) };
        let corrupt = || ClientError::Store("the account row is corrupt".into());
        let secret32 = |bytes: Vec<u8>| -> Result<Zeroizing<[u8; 32]>> {
            let mut out = Zeroizing::new([0u8; 32]);
            out.copy_from_slice(bytes.get(..32).filter(|_| bytes.len() == 32).ok_or_else(corrupt)?);
            Ok(out)
        };
        Ok(Some(AccountRecord {
            server,
            user_id: UserId::from_slice(&user).map_err(|_| corrupt())?,
            device_id: DeviceId::from_slice(&device).map_err(|_| corrupt())?,
            identity_secret: identity.map(secret32).transpose()?,
            device_secret: secret32(secret)?,
            certificate: certificate.as_slice().try_into().map_err(|_| corrupt())?,
            token,
        }))
    }

    /// Remembers `user`'s handle (or that it holds none), as learned at `now` (Unix ms).
    pub fn save_handle(&self, user: &UserId, handle: Option<&str>, now: i64) -> Result<()> {
        self.lock()?.execute(
            "INSERT OR REPLACE INTO names (user_id, handle, learned_at) VALUES (?1, ?2, ?3)",
            params![user.as_bytes().as_slice(), handle, now],
        )?;
        Ok(())
    }

    /// What is known of `user`'s handle: `None` if never learned, else the handle (or `None`
    /// if the user held none) and when it was learned.
    pub fn handle(&self, user: &UserId) -> Result<Option<(Option<String>, i64)>> {
        Ok(self
            .lock()?
            .query_row(
                "SELECT handle, learned_at FROM names WHERE user_id = ?1",
                params![user.as_bytes().as_slice()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?)
    }

    /// Keeps the keys of this device's own push subscription (replacing any before).
    pub fn save_push_keys(&self, endpoint: &str, secret: &[u8], auth: &[u8]) -> Result<()> {
        self.lock()?.execute(
            "INSERT OR REPLACE INTO push_keys (id, endpoint, secret, auth) VALUES (1, ?1, ?2, ?3)",
            params![endpoint, secret, auth],
        )?;
        Ok(())
    }

    /// The kept push keys.
    pub fn push_keys(&self) -> Result<Option<SavedPushKeys>> {
        let row: Option<(String, Vec<u8>, Vec<u8>)> = self
            .lock()?
            .query_row("SELECT endpoint, secret, auth FROM push_keys WHERE id = 1", [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()?;
        Ok(row.map(|(endpoint, secret, auth)| SavedPushKeys { endpoint, secret: Zeroizing::new(secret), auth }))
    }

    /// Forgets the push keys.
    pub fn clear_push_keys(&self) -> Result<()> {
        self.lock()?.execute("DELETE FROM push_keys", [])?;
        Ok(())
    }

    /// Remembers a device key waiting for its link to be approved.
    pub fn save_pending_link(&self, server: &str, secret: &[u8; 32]) -> Result<()> {
        self.lock()?.execute(
            "INSERT OR REPLACE INTO pending_link (id, server, device_secret) VALUES (1, ?1, ?2)",
            params![server, secret.as_slice()],
        )?;
        Ok(())
    }

    /// The device key waiting for approval, with its server.
    pub fn pending_link(&self) -> Result<Option<(String, Zeroizing<[u8; 32]>)>> {
        let row: Option<(String, Vec<u8>)> = self
            .lock()?
            .query_row("SELECT server, device_secret FROM pending_link WHERE id = 1", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        let Some((server, bytes)) = row else { return Ok(None) };
        let mut secret = Zeroizing::new([0u8; 32]);
        if bytes.len() != 32 {
            return Err(ClientError::Store("the pending link key is corrupt".into()));
        }
        secret.copy_from_slice(&bytes);
        Ok(Some((server, secret)))
    }

    /// Forgets the pending link (it was approved).
    pub fn clear_pending_link(&self) -> Result<()> {
        self.lock()?.execute("DELETE FROM pending_link", [])?;
        Ok(())
    }

    /// Records a conversation this device is in (idempotent).
    pub fn add_conversation(&self, id: &ConversationId, kind: &str, processed_seq: u64) -> Result<()> {
        self.lock()?.execute(
            "INSERT OR IGNORE INTO conversations (id, kind, processed_seq) VALUES (?1, ?2, ?3)",
            params![id.as_bytes().as_slice(), kind, to_i64(processed_seq)],
        )?;
        Ok(())
    }

    /// The last log entry applied for a conversation, if the device is in it.
    pub fn processed_seq(&self, id: &ConversationId) -> Result<Option<u64>> {
        let seq: Option<i64> = self
            .lock()?
            .query_row(
                "SELECT processed_seq FROM conversations WHERE id = ?1",
                params![id.as_bytes().as_slice()],
                |row| row.get(0),
            )
            .optional()?;
        Ok(seq.map(to_u64))
    }

    /// Records that every log entry up to `seq` was applied.
    pub fn set_processed_seq(&self, id: &ConversationId, seq: u64) -> Result<()> {
        self.lock()?.execute(
            "UPDATE conversations SET processed_seq = MAX(processed_seq, ?1) WHERE id = ?2",
            params![to_i64(seq), id.as_bytes().as_slice()],
        )?;
        Ok(())
    }

    /// Stores a decrypted message and marks its entry applied, in one transaction.
    pub fn store_message(&self, message: &StoredMessage) -> Result<()> {
        let mut connection = self.lock()?;
        let tx = connection.transaction()?;
        insert_message(&tx, message)?;
        tx.execute(
            "UPDATE conversations SET processed_seq = MAX(processed_seq, ?1) WHERE id = ?2",
            params![to_i64(message.seq), message.conversation_id.as_bytes().as_slice()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Stores a message this device sent. Unlike [`LocalStore::store_message`] it does not mark
    /// the log applied up to it: earlier entries from others may still be on their way.
    pub fn store_own_message(&self, message: &StoredMessage) -> Result<()> {
        let connection = self.lock()?;
        insert_message(&connection, message)
    }

    /// A conversation's stored messages, oldest first.
    pub fn messages(&self, id: &ConversationId) -> Result<Vec<StoredMessage>> {
        let connection = self.lock()?;
        let mut statement = connection.prepare(
            "SELECT seq, sender_user, sender_device, created_at, content FROM messages WHERE conversation_id = ?1 ORDER BY seq",
        )?;
        let rows = statement.query_map(params![id.as_bytes().as_slice()], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, Vec<u8>>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, String>(4)?,
            ))
        })?;
        let mut messages = Vec::new();
        for row in rows {
            let (seq, user, device, created_at, content) = row?;
            let corrupt = || ClientError::Store("a stored message is corrupt".into());
            messages.push(StoredMessage {
                conversation_id: *id,
                seq: to_u64(seq),
                sender_user: UserId::from_slice(&user).map_err(|_| corrupt())?,
                sender_device: DeviceId::from_slice(&device).map_err(|_| corrupt())?,
                created_at,
                content: serde_json::from_str(&content).unwrap_or(Content::Unknown { type_name: "stored".into() }),
            });
        }
        Ok(messages)
    }

    /// The conversations this device is in.
    pub fn conversations(&self) -> Result<Vec<(ConversationId, String)>> {
        let connection = self.lock()?;
        let mut statement = connection.prepare("SELECT id, kind FROM conversations ORDER BY id")?;
        let rows = statement.query_map([], |row| Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, kind) = row?;
            let id = ConversationId::from_slice(&id)
                .map_err(|_| ClientError::Store("a conversation id is corrupt".into()))?;
            out.push((id, kind));
        }
        Ok(out)
    }
}

fn insert_message(connection: &Connection, message: &StoredMessage) -> Result<()> {
    // Content types this version cannot serialize back are kept as what it can show.
    let content = serde_json::to_string(&message.content)
        .unwrap_or_else(|_| serde_json::json!({"type": "text", "body": message.content.display()}).to_string());
    connection.execute(
        "INSERT OR IGNORE INTO messages (conversation_id, seq, sender_user, sender_device, created_at, content)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            message.conversation_id.as_bytes().as_slice(),
            to_i64(message.seq),
            message.sender_user.as_bytes().as_slice(),
            message.sender_device.as_bytes().as_slice(),
            message.created_at,
            content
        ],
    )?;
    Ok(())
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
