//! `roost-bench`: drives a running `roostd` over real sockets and reports what it measured.
//!
//! Modes so far:
//! - `connections`: registers and authenticates K devices, opens K idle authenticated WebSockets
//!   and reports the server's resident memory per connection (read from `/proc/PID/status`).

mod client;
mod connections;

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
    /// Open K idle authenticated WebSockets and report server memory per connection.
    Connections(connections::Args),
}

fn main() -> std::process::ExitCode {
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
            Mode::Connections(args) => connections::run(args).await,
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
