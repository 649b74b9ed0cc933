//! A real `roostd` on `127.0.0.1:0`, over a [`TestDatabase`], run in the test's runtime.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use roost_server::clock::{Clock, ManualClock, SystemClock};
use roost_server::config::Config;
use roost_server::services::Services;
use tokio::sync::oneshot;

use crate::{Backend, TestDatabase};

/// A running server. Dropping it leaves the server running until the test's runtime ends;
/// [`TestServer::stop`] stops it gracefully and hands its database back.
pub struct TestServer {
    /// The running server's services, for driving background work (pruning) directly.
    pub services: Services,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The configuration it runs with.
    pub config: Config,
    manual_clock: Option<Arc<ManualClock>>,
    database: Option<TestDatabase>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A change to a test server's configuration.
type Adjust = Box<dyn FnOnce(&mut Config)>;

/// What to start: see [`TestServer::on`].
pub struct Launch {
    backend: Backend,
    manual_clock: Option<i64>,
    adjust: Vec<Adjust>,
}

impl Launch {
    /// Runs the server on a clock that stands at `start_ms` and moves only when told
    /// ([`TestServer::clock`]); by default it runs on the system clock.
    pub fn manual_clock(mut self, start_ms: i64) -> Self {
        self.manual_clock = Some(start_ms);
        self
    }

    /// Changes the configuration before the server starts.
    pub fn configure(mut self, adjust: impl FnOnce(&mut Config) + 'static) -> Self {
        self.adjust.push(Box::new(adjust));
        self
    }

    /// Creates a fresh database and starts the server on it, or returns `None` (after a notice)
    /// when the backend is not available here.
    pub async fn start(self) -> Option<TestServer> {
        let database = TestDatabase::create(self.backend).await?;
        let mut config = config_for(&database);
        for adjust in self.adjust {
            adjust(&mut config);
        }
        let clock = self.manual_clock.map(|start| Arc::new(ManualClock::new(start)));
        Some(TestServer::start_on(database, config, clock).await)
    }
}

/// The configuration tests start from: the database's location, a small connection pool (tests
/// run side by side against one PostgreSQL server), and rate limits far above what a test
/// reaches unless it is about them.
pub fn config_for(database: &TestDatabase) -> Config {
    let mut config =
        Config { data_dir: database.data_dir().to_path_buf(), server_name: "roost.test".into(), ..Config::default() };
    if database.backend() == Backend::Postgres {
        config.database_url = Some(database.url());
        config.postgres.max_connections = 4;
    }
    let rates = &mut config.rate_limits;
    rates.registrations_per_address = 10_000;
    rates.challenges_per_address = 10_000;
    rates.links_per_address = 10_000;
    rates.key_claims_per_requester = 10_000;
    rates.key_claims_per_pair = 10_000;
    rates.sends_per_device = 100_000;
    config
}

impl TestServer {
    /// A server to start on `backend`.
    pub fn on(backend: Backend) -> Launch {
        Launch { backend, manual_clock: None, adjust: Vec::new() }
    }

    /// Starts a server on an existing database (as after [`TestServer::stop`]) with `config`,
    /// on `clock` if given and the system clock otherwise.
    pub async fn start_on(database: TestDatabase, config: Config, clock: Option<Arc<ManualClock>>) -> Self {
        let mut server = Self::serve(config, clock).await;
        server.database = Some(database);
        server
    }

    /// Another server on this one's database, as a second `roostd` process behind a load
    /// balancer would be: the same store, nothing else shared (its own caches, hub, limits).
    pub async fn another(&self) -> Self {
        self.another_with(|_| {}).await
    }

    /// Another server on this one's database, with its configuration changed (a Redis reached
    /// another way, say).
    pub async fn another_with(&self, adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = self.config.clone();
        adjust(&mut config);
        Self::serve(config, self.manual_clock.clone()).await
    }

    async fn serve(config: Config, manual_clock: Option<Arc<ManualClock>>) -> Self {
        let listener = roost_server::listener::bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let clock: Arc<dyn Clock> = match &manual_clock {
            Some(clock) => clock.clone(),
            None => Arc::new(SystemClock),
        };
        let store = roost_server::open_store(&config).await.expect("open store");
        let mut server = roost_server::Server::new(config.clone(), store, clock);
        server.connect_bus().await.expect("connect to Redis");
        let services = server.services().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .expect("server ran");
        });
        Self { services, base, config, manual_clock, database: None, stop: Some(stop), task: Some(task) }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The server's manual clock.
    ///
    /// # Panics
    /// When the server runs on the system clock.
    pub fn clock(&self) -> &ManualClock {
        self.manual_clock.as_deref().expect("the server was started with a manual clock")
    }

    /// The database it runs on.
    ///
    /// # Panics
    /// For a server made by [`TestServer::another`] (the first server holds the database).
    pub fn database(&self) -> &TestDatabase {
        self.database.as_ref().expect("the first server holds the database")
    }

    /// The backend it runs on.
    pub fn backend(&self) -> Backend {
        if self.config.database_url.is_some() { Backend::Postgres } else { Backend::Sqlite }
    }

    /// Stops the server, waits for it to finish in-flight work, and hands back its database.
    ///
    /// # Panics
    /// For a server made by [`TestServer::another`]: use [`TestServer::halt`].
    pub async fn stop(self) -> TestDatabase {
        self.halt().await.expect("the first server holds the database")
    }

    /// Stops the server and waits for it to finish in-flight work; its store (connections
    /// included) is closed once this returns. Hands back the database if it holds it.
    pub async fn halt(mut self) -> Option<TestDatabase> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
        self.database.take()
    }
}

/// Sends every server's logs in this process, at the most verbose level, to one file and
/// returns its path: tests search it for what must never be logged. (One subscriber serves the
/// whole process, so under `cargo test`, where tests share a process, the file holds the logs of
/// every test's servers; a search of it covers at least the calling test's.)
pub fn capture_logs() -> &'static Path {
    static LOG: OnceLock<PathBuf> = OnceLock::new();
    LOG.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("roost-test-{}.log", std::process::id()));
        let file = std::fs::File::create(&path).expect("create the log file");
        let _ = tracing_subscriber::fmt()
            .with_env_filter("trace")
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .try_init();
        path
    })
}
