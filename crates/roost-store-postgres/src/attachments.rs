//! [`roost_store::AttachmentStore`] on PostgreSQL: the shared implementation, on the one pool.

use crate::PostgresStore;

roost_store::sql_attachment_store!(PostgresStore, pool, pool);
