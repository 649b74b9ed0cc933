//! [`roost_store::AttachmentStore`] on SQLite: the shared implementation, on the writer and
//! reader pools.

use crate::SqliteStore;

roost_store::sql_attachment_store!(SqliteStore, writer, reader);
