//! [`roost_store::PushStore`] on PostgreSQL: the shared implementation, on the one pool.

use crate::PostgresStore;

roost_store::sql_push_store!(PostgresStore, pool, pool);
