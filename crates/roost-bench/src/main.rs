//! `roost-bench`: drives a running `roostd` over real sockets and reports what it measured.
//!
//! Modes:
//! - `attachments`: a large upload and download through roostd over HTTP, each as a share of
//!   the disk's raw sequential write and read speed measured in the same run, with the server's
//!   resident memory sampled throughout.
//! - `ceiling`: a raw SQLite insert loop of the server's rows with its durability settings: what
//!   the disk allows, to compare the server's throughput with.
//! - `connections`: registers and authenticates K devices, opens K idle authenticated WebSockets
//!   and reports the server's resident memory per connection (read from `/proc/PID/status`).
//! - `throughput`: open-loop senders over HTTP, receivers on WebSockets; accepted and delivered
//!   messages per second and send→receive latency percentiles from an HDR histogram.
//! - `durability`: sends under load while `kill -9`ing the server repeatedly, then checks every
//!   acknowledged message is stored with its sequence number and bytes.
//! - `fanout`: a large group (default 1,500 users × 3 devices, all online), one message at a
//!   time; how long until every device has it.
//! - `targets`: every performance target (docs/benchmarks.md) in one run, each against a fresh server the bench
//!   starts itself, reported as ratios of measured to target.
//! - `receivers`: pairs for another load generator: their endpoints and tokens in a file, the
//!   receivers' sockets held, and what reached them reported.

mod attachments;
mod ceiling;
mod client;
mod connections;
mod cpu;
mod durability;
mod fanout;
mod push;
mod receivers;
mod sender;
mod server;
mod targets;
mod throughput;

use clap::{Parser, Subcommand};

/// Load generator and benchmark harness for roostd.
#[derive(Parser)]
#[command(name = "roost-bench", version)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// A large upload and download through roostd, as shares of the disk's raw speed, with the server's memory.
    Attachments(attachments::Args),
    /// Raw SQLite inserts of the server's rows with its durability settings: the storage ceiling.
    Ceiling(ceiling::Args),
    /// Open K idle authenticated WebSockets and report server memory per connection.
    Connections(connections::Args),
    /// Open-loop senders over HTTP, receivers over WebSocket: msgs/s and latency percentiles.
    Throughput(throughput::Args),
    /// Send under load, kill -9 the server repeatedly, then check no acknowledged message was lost.
    Durability(durability::Args),
    /// One message to a large group with every device online: time until every device has it.
    Fanout(fanout::Args),
    /// Sends to offline receivers with and without push subscriptions: the send path's cost and wake-ups per second.
    Push(push::Args),
    /// Every performance target (docs/benchmarks.md) in one run against fresh servers; ratios of measured to target.
    Targets(targets::Args),
    /// Pairs for a load generator of your own: writes the senders' endpoints and tokens to a
    /// file, holds the receivers' WebSockets and reports what reached them.
    Receivers(receivers::Args),
}

/// What a mode measured, as a human summary line and a machine-readable JSON line.
pub trait Summary {
    /// The human summary line.
    fn summary(&self) -> String;
    /// The machine-readable line.
    fn json(&self) -> serde_json::Value;
}

/// Prints a report: its summary, then its JSON line.
pub fn print(report: &impl Summary) {
    println!("{}", report.summary());
    println!("{}", report.json());
}

fn main() -> std::process::ExitCode {
    // The HTTP client's TLS (for https:// servers) uses ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("roost-bench: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.mode {
            Mode::Attachments(args) => attachments::run(args).await,
            Mode::Ceiling(args) => ceiling::run(args).await,
            Mode::Connections(args) => connections::run(args).await,
            Mode::Throughput(args) => throughput::run(args).await,
            Mode::Durability(args) => durability::run(args).await,
            Mode::Fanout(args) => fanout::run(args).await,
            Mode::Push(args) => push::run(args).await,
            Mode::Targets(args) => targets::run(args).await,
            Mode::Receivers(args) => receivers::run(args).await,
        }
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("roost-bench: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
