//! `connections`: server memory per idle authenticated WebSocket.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt, stream};
use serde_json::json;

use crate::client;

/// Arguments of the connections mode.
#[derive(clap::Args)]
pub struct Args {
    /// Base URL of the running server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Process id of the server, to read its memory.
    #[arg(long)]
    pub server_pid: u32,
    /// How many idle authenticated connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Concurrent registrations and connection attempts.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds to hold the connections open before the final measurement.
    #[arg(long, default_value_t = 5)]
    pub hold_secs: u64,
}

/// What the connections mode measured.
pub struct Report {
    /// Idle authenticated sockets held open.
    pub count: usize,
    /// Server RSS before the first socket, bytes.
    pub rss_before: u64,
    /// Server RSS with every socket open and idle, bytes.
    pub rss_after: u64,
}

impl Report {
    /// Growth of the server's RSS per connection, bytes.
    pub fn bytes_per_connection(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.count.max(1) as f64
    }
}

impl crate::Summary for Report {
    fn summary(&self) -> String {
        format!(
            "connections: {} idle authenticated sockets; server RSS {:.1} MiB before, {:.1} MiB after; {:.0} bytes ({:.2} KiB) per connection",
            self.count,
            self.rss_before as f64 / 1048576.0,
            self.rss_after as f64 / 1048576.0,
            self.bytes_per_connection(),
            self.bytes_per_connection() / 1024.0
        )
    }

    fn json(&self) -> serde_json::Value {
        json!({"mode": "connections", "count": self.count, "rss_before_bytes": self.rss_before,
               "rss_after_bytes": self.rss_after, "bytes_per_connection": self.bytes_per_connection().round()})
    }
}

/// Runs the mode and prints a summary and a JSON line.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    crate::print(&report);
    Ok(())
}

/// Prepares the devices, opens the sockets and reads the server's memory before and after.
pub async fn measure(args: &Args) -> anyhow::Result<Report> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    eprintln!("registering and authenticating {} devices…", args.count);
    let bar = client::progress(args.count, "devices registered");
    let devices: Vec<client::Device> = stream::iter(0..args.count)
        .map(|_| client::register_and_login(&http, &args.server))
        .buffer_unordered(args.concurrency)
        .inspect(|_| bar.inc(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()
        .context("preparing devices (raise the server's registration and challenge rate limits)")?;
    bar.finish_and_clear();
    eprintln!("prepared in {:.1} s", started.elapsed().as_secs_f64());

    // Let the server settle, then measure the baseline with no socket open.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = resident_bytes(args.server_pid)?;
    let ws_base = client::ws_url(&args.server);
    let opened = Instant::now();
    let bar = client::progress(args.count, "sockets open");
    let sockets: Vec<_> = stream::iter(devices.iter())
        .map(|device| client::open_socket(&ws_base, &device.token))
        .buffer_unordered(args.concurrency)
        .inspect(|_| bar.inc(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    bar.finish_and_clear();
    eprintln!("{} sockets authenticated in {:.1} s", sockets.len(), opened.elapsed().as_secs_f64());

    // Keep every client reading (answering pings) while the server holds them idle.
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| tokio::spawn(async move { while let Some(Ok(_)) = socket.next().await {} }))
        .collect();
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let after = resident_bytes(args.server_pid)?;
    for reader in &readers {
        reader.abort();
    }

    Ok(Report { count: args.count, rss_before: before, rss_after: after })
}

/// Resident set size of a process, from `/proc/PID/status` (Linux).
pub fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).context("no VmRSS line")?;
    let kib: u64 = line.split_whitespace().nth(1).context("VmRSS value")?.parse()?;
    Ok(kib * 1024)
}
