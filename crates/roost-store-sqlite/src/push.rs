//! [`roost_store::PushStore`] on SQLite: the shared implementation, on the writer and reader
//! pools.

use crate::SqliteStore;

roost_store::sql_push_store!(SqliteStore, writer, reader);
