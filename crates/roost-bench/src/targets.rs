//! `targets`: every performance target (docs/benchmarks.md) in one run, each against a fresh `roostd` the bench
//! starts itself, reported as the ratio of what was measured to what the target asks. With
//! `--database-url` the servers run on PostgreSQL and the PostgreSQL targets are measured.

use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::Summary;
use crate::server::{Launch, Roostd, remove_data_dir};
use crate::throughput::Over;
use crate::{ceiling, connections, durability, fanout, throughput};

/// Arguments of the targets mode.
#[derive(clap::Args)]
pub struct Args {
    /// The roostd binary to start (once per target, on an emptied data directory).
    #[arg(long, default_value = "./target/release/roostd")]
    roostd: PathBuf,
    /// Data directory for those servers (wiped before each).
    #[arg(long, default_value = "/tmp/roost-targets-data")]
    data_dir: PathBuf,
    /// Loopback port for those servers.
    #[arg(long, default_value_t = 18090)]
    port: u16,
    /// Seconds of load in the throughput and latency runs.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Idle sockets for the connections target. Default: 100,000, or as many as this machine's
    /// file-descriptor limit allows (each socket takes a descriptor in the server and another in
    /// the bench), whichever is smaller.
    #[arg(long)]
    connections: Option<usize>,
    /// Run the servers on this PostgreSQL database and measure the PostgreSQL targets
    /// (throughput, latency, durability). Its current schema is emptied before each server.
    #[arg(long)]
    database_url: Option<String>,
}

/// The targets' figures (docs/benchmarks.md lists them).
const THROUGHPUT_MSGS_PER_S: f64 = 30_000.0;
/// Offered in the throughput runs: a fifth above the target, so the rate measured is what the
/// server sustains (offering exactly the target can only measure a little under it, since the
/// rate counts until the last answer arrived).
const THROUGHPUT_OFFERED: u64 = 36_000;
const LATENCY_RATE: u64 = 5_000;
const LATENCY_P99_MS: f64 = 5.0;
const CONNECTIONS: usize = 100_000;
const BYTES_PER_CONNECTION: f64 = 4096.0;
const GROUP_USERS: usize = 1_500;
const GROUP_P99_MS: f64 = 200.0;
const POSTGRES_MSGS_PER_S: f64 = 13_000.0;
/// A fifth above the PostgreSQL target, as for SQLite.
const POSTGRES_OFFERED: u64 = 15_600;
const POSTGRES_P99_MS: f64 = 10.0;

/// One target's outcome.
struct Outcome {
    target: &'static str,
    measured: String,
    /// measured ÷ target: at least 1 meets an "at least" target, at most 1 an "under" target.
    ratio: Option<f64>,
    met: bool,
    note: String,
}

impl Outcome {
    fn json(&self) -> Value {
        json!({"target": self.target, "measured": self.measured, "ratio": self.ratio.map(|r| (r * 1000.0).round() / 1000.0),
               "met": self.met, "note": self.note})
    }
}

/// Runs every target in turn, prints each mode's own lines as it finishes, then the table of
/// ratios and one JSON line with all of them.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let launch = Launch {
        binary: args.roostd.clone(),
        data_dir: args.data_dir.clone(),
        port: args.port,
        database_url: args.database_url.clone(),
    };
    let outcomes = match &args.database_url {
        Some(url) => postgres_targets(&args, &launch, url).await?,
        None => sqlite_targets(&args, &launch).await?,
    };
    remove_data_dir(&args.data_dir)?;

    println!("\nPerformance targets (ratio = measured ÷ target):");
    for outcome in &outcomes {
        let ratio = outcome.ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
        let verdict = if outcome.met { "met" } else { "NOT MET" };
        let note = if outcome.note.is_empty() { String::new() } else { format!(" ({})", outcome.note) };
        println!("  {verdict:<8} {ratio:>6}  {}: {}{note}", outcome.target, outcome.measured);
    }
    println!("{}", json!({"mode": "targets", "results": outcomes.iter().map(Outcome::json).collect::<Vec<_>>()}));
    Ok(())
}

/// The targets of one instance on the embedded store.
async fn sqlite_targets(args: &Args, launch: &Launch) -> anyhow::Result<Vec<Outcome>> {
    let ceiling = measure_ceiling(args, None).await?;
    let mut outcomes = throughput_outcomes(
        launch,
        &ceiling,
        &Throughput {
            offered: THROUGHPUT_OFFERED,
            target: THROUGHPUT_MSGS_PER_S,
            labels: [
                "30,000 durable msg/s accepted and delivered live (sends over HTTP)",
                "30,000 durable msg/s accepted and delivered live (sends over the WebSocket)",
            ],
        },
        args.duration,
    )
    .await?;
    outcomes.push(
        latency_outcome(launch, LATENCY_P99_MS, "p99 send→socket under 5 ms at 5,000 msg/s", args.duration).await?,
    );

    let (count, limited) = connection_count(args.connections)?;
    eprintln!("== connections: {count} idle authenticated sockets");
    let server = Roostd::start_fresh(launch).await?;
    let report = connections::measure(&connections::Args {
        server: server.base().to_owned(),
        server_pid: server.pid(),
        count,
        concurrency: 64,
        hold_secs: 5,
    })
    .await
    .context("connections target")?;
    server.kill();
    crate::print(&report);
    let per_connection = report.bytes_per_connection();
    outcomes.push(Outcome {
        target: "100,000 idle authenticated WebSockets under 4 KiB each",
        measured: format!("{per_connection:.0} bytes each at {count}"),
        ratio: Some(per_connection / BYTES_PER_CONNECTION),
        met: count >= CONNECTIONS && per_connection < BYTES_PER_CONNECTION,
        note: match limited {
            Some(limit) => format!("only {count} sockets: the file-descriptor limit here is {limit}"),
            None if count < CONNECTIONS => format!("only {count} sockets asked for"),
            None => String::new(),
        },
    });

    eprintln!("== fan-out: a {GROUP_USERS}-user group, 3 devices each online");
    let report = with_fresh_server(launch, |base, _| async move {
        fanout::measure(&fanout::Args {
            server: base,
            users: GROUP_USERS - 1,
            devices: 3,
            devices_at: Vec::new(),
            messages: 3,
            size: 7,
            server_pid: None,
        })
        .await
    })
    .await
    .context("fan-out target")?;
    outcomes.push(Outcome {
        target: "1,500-user group (4,500 devices online), p99 under 200 ms",
        measured: format!("p99 {:.1} ms, last device {:.1} ms", report.p99_ms, report.max_ms),
        ratio: Some(report.p99_ms / GROUP_P99_MS),
        met: report.complete && report.p99_ms < GROUP_P99_MS,
        note: if report.complete { String::new() } else { "some device missed a message".to_owned() },
    });

    outcomes.push(durability_outcome(args).await?);
    Ok(outcomes)
}

/// The PostgreSQL targets: client, server and PostgreSQL on this machine.
async fn postgres_targets(args: &Args, launch: &Launch, url: &str) -> anyhow::Result<Vec<Outcome>> {
    let ceiling = measure_ceiling(args, Some(url)).await?;
    let mut outcomes = throughput_outcomes(
        launch,
        &ceiling,
        &Throughput {
            offered: POSTGRES_OFFERED,
            target: POSTGRES_MSGS_PER_S,
            labels: [
                "PostgreSQL: 13,000 durable msg/s delivered live (sends over HTTP)",
                "PostgreSQL: 13,000 durable msg/s delivered live (sends over the WebSocket)",
            ],
        },
        args.duration,
    )
    .await?;
    outcomes.push(
        latency_outcome(
            launch,
            POSTGRES_P99_MS,
            "PostgreSQL: p99 send→socket under 10 ms at 5,000 msg/s",
            args.duration,
        )
        .await?,
    );
    outcomes.push(durability_outcome(args).await?);
    Ok(outcomes)
}

/// The storage ceiling of the store the servers run on, printed as it is measured.
async fn measure_ceiling(args: &Args, database_url: Option<&str>) -> anyhow::Result<ceiling::Report> {
    eprintln!("== storage ceiling: raw inserts of the server's rows");
    let ceiling = ceiling::measure(&ceiling::Args {
        dir: args.data_dir.clone(),
        seconds: 3,
        size: 256,
        database_url: database_url.map(str::to_owned),
    })
    .await
    .context("storage ceiling")?;
    crate::print(&ceiling);
    Ok(ceiling)
}

/// A throughput target: what is offered, the rate to reach, and its two rows' labels (sends
/// over HTTP, then over the WebSocket).
struct Throughput {
    offered: u64,
    target: f64,
    labels: [&'static str; 2],
}

/// The throughput target measured with HTTP sends and with WebSocket sends, each on a fresh
/// server, against the storage ceiling of the same run.
async fn throughput_outcomes(
    launch: &Launch,
    ceiling: &ceiling::Report,
    throughput: &Throughput,
    duration: u64,
) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for (over, label) in [Over::Http, Over::Websocket].into_iter().zip(throughput.labels) {
        let offered = throughput.offered;
        eprintln!("== throughput, sends over {}: {offered} msg/s offered for {duration} s", over.name());
        let report = with_fresh_server(launch, |base, pid| async move {
            throughput::measure(&throughput::Args { over, ..throughput_args(base, pid, offered, duration) }).await
        })
        .await
        .context("throughput target")?;
        let rate = report.accepted_per_s.min(report.delivered_per_s);
        let cpu = report.cpu_per_message_us().map_or_else(String::new, |(server, postgres, bench)| {
            let postgres = if postgres > 0.0 { format!(", PostgreSQL {postgres:.0} µs") } else { String::new() };
            format!("; CPU per message: server {server:.0} µs{postgres}, load generator {bench:.0} µs")
        });
        outcomes.push(Outcome {
            target: label,
            measured: format!("{rate:.0} msg/s, {} errors", report.errors),
            ratio: Some(rate / throughput.target),
            met: rate >= throughput.target && report.errors == 0,
            note: format!(
                "{offered} offered; {:.0}% of the storage ceiling, {:.0} msg/s at 100 per commit{cpu}",
                100.0 * rate / ceiling.best(),
                ceiling.best()
            ),
        });
    }
    Ok(outcomes)
}

/// The latency target at 5,000 msg/s (HTTP sends) on a fresh server.
async fn latency_outcome(launch: &Launch, p99_ms: f64, label: &'static str, duration: u64) -> anyhow::Result<Outcome> {
    eprintln!("== latency: {LATENCY_RATE} msg/s for {duration} s");
    let report = with_fresh_server(launch, |base, pid| async move {
        throughput::measure(&throughput_args(base, pid, LATENCY_RATE, duration)).await
    })
    .await
    .context("latency target")?;
    let kept_up = report.delivered_per_s >= 0.99 * LATENCY_RATE as f64 && report.errors == 0;
    Ok(Outcome {
        target: label,
        measured: format!("p99 {:.2} ms (p50 {:.2}, p99.9 {:.2})", report.p99_ms, report.p50_ms, report.p999_ms),
        ratio: Some(report.p99_ms / p99_ms),
        met: report.p99_ms < p99_ms && kept_up,
        note: if kept_up { String::new() } else { format!("delivered only {:.0} msg/s", report.delivered_per_s) },
    })
}

/// Five kill -9 rounds under load, on the store the arguments name.
async fn durability_outcome(args: &Args) -> anyhow::Result<Outcome> {
    eprintln!("== durability: 5 kill -9 rounds under load");
    let report = durability::measure(&durability::Args {
        roostd: args.roostd.clone(),
        data_dir: args.data_dir.clone(),
        port: args.port,
        rounds: 5,
        seconds: 2,
        concurrency: 32,
        database_url: args.database_url.clone(),
    })
    .await
    .context("durability target")?;
    crate::print(&report);
    Ok(Outcome {
        target: if args.database_url.is_some() {
            "PostgreSQL: zero acknowledged messages lost over repeated kill -9"
        } else {
            "zero acknowledged messages lost over repeated kill -9"
        },
        measured: format!(
            "{} lost of {} acknowledged, {} duplicated",
            report.lost, report.acknowledged, report.duplicated
        ),
        ratio: None,
        met: report.lost == 0 && report.duplicated == 0 && report.acknowledged > 0,
        note: String::new(),
    })
}

/// Starts a fresh server, runs `measure` against its base URL and process id, prints the mode's
/// own lines and stops the server.
async fn with_fresh_server<R, F, Fut>(launch: &Launch, measure: F) -> anyhow::Result<R>
where
    R: Summary,
    F: FnOnce(String, u32) -> Fut,
    Fut: Future<Output = anyhow::Result<R>>,
{
    let server = Roostd::start_fresh(launch).await?;
    let report = measure(server.base().to_owned(), server.pid()).await?;
    server.kill();
    crate::print(&report);
    Ok(report)
}

fn throughput_args(server: String, pid: u32, rate: u64, duration: u64) -> throughput::Args {
    let target = throughput::PairsArgs { server, pairs: 50, receivers_at: Vec::new() };
    throughput::Args { target, rate, duration, size: 256, max_in_flight: 512, over: Over::Http, server_pid: Some(pid) }
}

/// How many sockets the connections target opens, and the descriptor limit if it is what
/// capped the number.
fn connection_count(asked: Option<usize>) -> anyhow::Result<(usize, Option<u64>)> {
    if let Some(count) = asked {
        return Ok((count, None));
    }
    let limit = open_files_limit()?;
    // Headroom for the server's database files, listener and HTTP clients.
    let fits = usize::try_from(limit.saturating_sub(2_000)).unwrap_or(usize::MAX);
    Ok(if fits < CONNECTIONS { (fits, Some(limit)) } else { (CONNECTIONS, None) })
}

/// The soft limit on open files of this process (the server it starts inherits it), from
/// `/proc/self/limits` (Linux).
fn open_files_limit() -> anyhow::Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    soft_open_files(&limits)
}

fn soft_open_files(limits: &str) -> anyhow::Result<u64> {
    let line = limits.lines().find(|line| line.starts_with("Max open files")).context("no open-files line")?;
    let soft = line.trim_start_matches("Max open files").split_whitespace().next().context("open-files value")?;
    Ok(if soft == "unlimited" { u64::MAX } else { soft.parse()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_open_files_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95702                95702                processes \n\
                      Max open files            20000                40000                files     \n";
        assert_eq!(soft_open_files(limits).unwrap(), 20_000);
        let unlimited = "Max open files            unlimited            unlimited            files\n";
        assert_eq!(soft_open_files(unlimited).unwrap(), u64::MAX);
        assert!(soft_open_files("Max processes 10 10 processes\n").is_err());
    }
}
