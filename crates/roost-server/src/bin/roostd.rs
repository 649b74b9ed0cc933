//! `roostd`: parse configuration, then hand over to `roost_server::serve`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use roost_server::clock::SystemClock;
use roost_server::config::{Config, FlagOverrides, LogFormat, RegistrationPolicy};
use roost_server::services::{Context, Services};

/// mimalloc instead of the system allocator: under load the server allocates and frees a few
/// small buffers per request and per frame, and glibc's malloc spent a large share of the
/// server's processor time on them (the profile is in docs/benchmark-log.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Roost server: end-to-end encrypted messaging relay (HTTP and WebSocket on one port).
#[derive(Parser)]
#[command(name = "roostd", version)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, env = "ROOST_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long, global = true)]
    listen: Option<std::net::SocketAddr>,
    /// Server name that clients sign into authentication (default localhost).
    #[arg(long, global = true)]
    server_name: Option<String>,
    /// Data directory of the embedded store (default ./roost-data).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Database URL (sqlite:...), overriding the data directory's database.
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Registration policy: open or invite-only.
    #[arg(long, global = true, value_parser = parse_policy)]
    registration: Option<RegistrationPolicy>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Print the effective configuration, secrets redacted.
    Config,
    /// Print the OpenAPI document.
    Openapi,
    /// Copy every account, device, key, handle, conversation, log, position and queue of a
    /// SQLite database into an empty PostgreSQL database, and verify the counts. Stop roostd
    /// on the source first.
    MigrateStore {
        /// The SQLite database, e.g. sqlite://roost-data/roost.db
        #[arg(long)]
        from: String,
        /// The PostgreSQL database, e.g. postgres://roost@db.internal/roost (must be empty)
        #[arg(long)]
        to: String,
    },
    /// Administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create single-use invite codes and print them, one per line.
    Invite {
        /// How many codes.
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
}

fn parse_policy(text: &str) -> Result<RegistrationPolicy, String> {
    match text {
        "open" => Ok(RegistrationPolicy::Open),
        "invite-only" | "invite_only" => Ok(RegistrationPolicy::InviteOnly),
        other => Err(format!("expected open or invite-only, not {other:?}")),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("roostd: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("roostd: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let flags = FlagOverrides {
        listen: cli.listen,
        server_name: cli.server_name,
        data_dir: cli.data_dir,
        database_url: cli.database_url,
        registration: cli.registration,
    };
    let config = Config::load(cli.config.as_deref(), &flags)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Config => {
            print!("{}", config.to_redacted_toml());
            Ok(())
        }
        Command::Openapi => {
            println!("{}", roost_server::http::openapi_json());
            Ok(())
        }
        Command::MigrateStore { from, to } => {
            let report = roost_server::migrate_store(&from, &to, &config).await?;
            for (table, rows) in &report.tables {
                println!("{table:<22} {rows:>10} rows copied and verified");
            }
            println!("done: the PostgreSQL database holds everything; point database_url at it");
            Ok(())
        }
        Command::Admin { command: AdminCommand::Invite { count } } => {
            anyhow::ensure!((1..=1000).contains(&count), "--count must be between 1 and 1000");
            let store = roost_server::open_store(&config).await?;
            let services = Services::new(Context::new(store, Arc::new(SystemClock), config));
            for code in services.accounts.create_invites(count).await? {
                println!("{code}");
            }
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(config.log_format);
    let listener = roost_server::listener::bind(config.listen).with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(config = ?config, "starting");
    #[cfg(unix)]
    if config.tls.cert_path.is_none() {
        // With TLS, SIGHUP reloads the certificate; without, it must not stop the server
        // (its default action), since `systemctl reload` sends it.
        tokio::spawn(log_hangups());
    }
    roost_server::serve(listener, config, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Answers SIGHUP with a log line: there is nothing to reload without TLS.
#[cfg(unix)]
async fn log_hangups() {
    if let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: nothing to reload (no [tls] configured)");
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
