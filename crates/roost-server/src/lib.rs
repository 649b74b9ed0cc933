//! `roostd`, the Roost server, as a library.
//!
//! [`serve`] runs the server on a bound listener until a shutdown future completes; the `roostd`
//! binary only parses configuration and calls it, and tests call it on `127.0.0.1:0`.
#![deny(missing_docs)]

pub mod attachments;
pub mod bus;
pub mod clock;
pub mod config;
pub mod error;
pub mod gateway;
pub mod http;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod push;
pub mod ratelimit;
pub mod services;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use roost_store::{Store, StoreError};
use roost_store_postgres::{ImportReport, PostgresStore};
use roost_store_sqlite::SqliteStore;
use tokio::net::TcpListener;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, DatabaseBackend, DatabaseLocation, redact_url};
use crate::http::AppState;
use crate::services::{Context, Services};

/// How often expired challenges, sessions and link requests are pruned.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(30);
/// How long shutdown waits for WebSockets to close.
const SOCKET_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The store could not be opened or migrated.
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    /// Redis could not be reached.
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    /// The database URL names a backend roostd does not have.
    #[error("unsupported database URL {0:?}: use sqlite:// or postgres://")]
    UnsupportedDatabase(String),
    /// `migrate-store` was given URLs it cannot copy between.
    #[error("migrate-store: {0}")]
    MigrateStore(String),
    /// The TLS certificate or key could not be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Accepting connections failed.
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the store the configuration names: the one place a backend is chosen. No URL means
/// the embedded SQLite file under `data_dir`; otherwise the URL's scheme decides.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServeError> {
    match config.database_location() {
        DatabaseLocation::SqliteFile(path) => Ok(Arc::new(SqliteStore::open(&path).await?)),
        DatabaseLocation::Url(url) => match DatabaseBackend::of(&url) {
            Some(DatabaseBackend::Sqlite) => Ok(Arc::new(SqliteStore::open_url(&url).await?)),
            Some(DatabaseBackend::Postgres) => {
                Ok(Arc::new(PostgresStore::connect(&url, &config.postgres.pool_settings()).await?))
            }
            None => Err(ServeError::UnsupportedDatabase(config.redacted().database_url.unwrap_or(url))),
        },
    }
}

/// Copies everything of the SQLite database at `from` into the empty PostgreSQL database at `to`
/// and verifies every table's row count (`roostd migrate-store`). The source is brought to the
/// current schema first, as starting roostd on it would; the target is migrated, then filled in
/// one transaction, so a failure leaves it empty.
pub async fn migrate_store(from: &str, to: &str, config: &Config) -> Result<ImportReport, ServeError> {
    if DatabaseBackend::of(from) != Some(DatabaseBackend::Sqlite) {
        return Err(ServeError::MigrateStore(format!("--from must be a sqlite:// URL, not {:?}", redact_url(from))));
    }
    if DatabaseBackend::of(to) != Some(DatabaseBackend::Postgres) {
        return Err(ServeError::MigrateStore(format!("--to must be a postgres:// URL, not {:?}", redact_url(to))));
    }
    let source = SqliteStore::open_existing_url(from).await?;
    source.close().await;
    let target = PostgresStore::connect(to, &config.postgres.pool_settings()).await?;
    let report = target.import_sqlite(from).await;
    target.close().await;
    report.map_err(|err| {
        ServeError::MigrateStore(match err {
            StoreError::Backend(message) => message,
            other => other.to_string(),
        })
    })
}

/// Serves Roost on `listener` with the store the configuration names, until `shutdown`
/// completes; then stops accepting and finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store = open_store(&config).await?;
    let mut server = Server::new(config, store, Arc::new(SystemClock));
    server.connect_bus().await?;
    server.serve(listener, shutdown).await
}

/// A server assembled from its parts but not yet serving: tests keep its [`Services`] to drive
/// background work (pruning) on an injected clock.
pub struct Server {
    services: Services,
    bus: Option<Arc<bus::RedisBus>>,
}

impl Server {
    /// Assembles the services over a store and a clock.
    pub fn new(config: Config, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { services: Services::new(Context::new(store, clock, config)), bus: None }
    }

    /// Connects to the other instances over Redis when `redis_url` is set (a no-op otherwise).
    pub async fn connect_bus(&mut self) -> Result<(), ServeError> {
        if let Some(url) = self.services.ctx.config.redis_url.clone() {
            let bus = bus::RedisBus::connect(&url, &self.services.hub, &self.services.ctx).await?;
            self.services.hub.set_bus(bus.clone());
            self.services.ctx.limits.share(bus.clone());
            self.bus = Some(bus);
        }
        Ok(())
    }

    /// The services, shared with the running server.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Serves until `shutdown` completes; then stops accepting and finishes in-flight requests.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let (services, bus) = (self.services, self.bus);
        let hub = services.hub.clone();
        let on_postgres = services.ctx.config.database_url.as_deref().and_then(DatabaseBackend::of)
            == Some(DatabaseBackend::Postgres);
        let config = &services.ctx.config;
        let bounds = listener::Bounds::of(&config.http);
        let tls = match (&config.tls.cert_path, &config.tls.key_path) {
            (Some(cert), Some(key)) => {
                let certificates = tls::Certificates::load(cert, key)?;
                certificates.watch();
                Some(certificates.acceptor()?)
            }
            _ => None,
        };
        if config.push.enabled {
            // Made at the first start and kept in the store; browsers' subscriptions are bound to it.
            match services.push.vapid().await {
                Ok(vapid) => {
                    tracing::info!(vapid_public_key = %push::base64url(&vapid.public_key()), "push notifications on")
                }
                Err(err) => {
                    tracing::warn!(error = %err, "push notifications cannot be sent until the VAPID key is stored")
                }
            }
        }
        let state = AppState::new(services.clone(), crate::metrics::prometheus());
        let housekeeping = tokio::spawn(housekeeping(services, state.metrics.clone()));
        let app = http::router(state);
        tracing::info!(address = %listener.local_addr()?, "roostd listening");
        if bus.is_some() {
            tracing::info!("instances sharing this database carry live events to each other over Redis");
        } else if on_postgres {
            // Say what a second instance on the same database would not get.
            tracing::info!(
                "on PostgreSQL without Redis: this instance runs alone; other instances on the same database keep \
                 every storage rule, but live delivery, connection caps, presence and caches stay per instance"
            );
        }
        // WebSockets outlive the HTTP server's graceful shutdown, so they are told separately and
        // given a moment to send their close frames.
        let signal_sockets = hub.clone();
        let shutdown = async move {
            shutdown.await;
            signal_sockets.shut_down();
        };
        let served = listener::serve(listener, app, bounds, tls, shutdown).await;
        let deadline = tokio::time::Instant::now() + SOCKET_CLOSE_GRACE;
        while !hub.is_idle() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        housekeeping.abort();
        if let Some(bus) = bus {
            bus.close().await;
        }
        served.map_err(ServeError::Io)
    }
}

/// Periodic work. Every instance forgets idle rate-limit keys and keeps the metrics registry
/// tidy (every 30 s). The work on the shared database runs only on the instance that leads it
/// ([`roost_store::Store::lead_background_work`]): pruning expired authentication state (every
/// 30 s) and conversation entries by retention (every `retention.prune_interval_secs`). An
/// instance asks at each of its ticks, so when the leader is gone another takes over within one
/// interval.
async fn housekeeping(services: Services, metrics: metrics_exporter_prometheus::PrometheusHandle) {
    let mut auth_tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    auth_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let retention_every = Duration::from_secs(services.ctx.config.retention.prune_interval_secs.max(1));
    let mut retention_tick = tokio::time::interval(retention_every);
    retention_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = auth_tick.tick() => {
                if leads_background_work(&services).await
                    && let Err(err) = services.auth.prune().await
                {
                    tracing::warn!(error = %err, "pruning authentication state failed");
                }
                services.ctx.limits.forget_idle();
                metrics.run_upkeep();
            }
            _ = retention_tick.tick() => {
                if leads_background_work(&services).await {
                    match services.conversations.prune().await {
                        Ok(pruned) if pruned > 0 => tracing::debug!(pruned, "pruned conversation entries"),
                        Ok(_) => {}
                        Err(err) => tracing::warn!(error = %err, "retention pruning failed"),
                    }
                    match services.attachments.prune().await {
                        Ok(deleted) if deleted > 0 => tracing::debug!(deleted, "deleted expired attachments"),
                        Ok(_) => {}
                        Err(err) => tracing::warn!(error = %err, "attachment pruning failed"),
                    }
                }
            }
        }
    }
}

/// Whether this instance does the shared background work now; recorded in the context and in
/// `roost_background_leader`.
async fn leads_background_work(services: &Services) -> bool {
    let leads = match services.ctx.store.lead_background_work().await {
        Ok(leads) => leads,
        Err(err) => {
            tracing::warn!(error = %err, "could not tell whether this instance leads the background work");
            false
        }
    };
    let previously = services.ctx.leads_background_work.swap(leads, std::sync::atomic::Ordering::Relaxed);
    if leads != previously {
        tracing::info!(leads, "background work (pruning) {}", if leads { "runs here" } else { "runs elsewhere" });
    }
    ::metrics::gauge!("roost_background_leader").set(if leads { 1.0 } else { 0.0 });
    leads
}
