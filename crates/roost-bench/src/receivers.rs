//! `receivers`: the receiving half of the throughput mode, for a load generator of your own.
//!
//! Prepares sender/receiver pairs as the throughput mode does, writes each sender's messages
//! endpoint and bearer token to a file (one `path<TAB>token` line per pair), then holds every
//! receiver's WebSocket and counts the entries pushed to them. Another tool (wrk, say, with
//! `crates/roost-bench/wrk/send.lua`) posts to those endpoints meanwhile; this mode reports how
//! many messages reached the receivers' sockets and at what rate, so "delivered live" is checked
//! independently of the load generator that sent them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::throughput::{PairsArgs, lock, prepare_pairs, spawn_receivers};

/// Arguments of the receivers mode.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: PairsArgs,
    /// Where to write the senders' endpoints and tokens, one `path<TAB>token` line per pair.
    #[arg(long)]
    pub out: PathBuf,
    /// Seconds to hold the receivers' sockets after the file is written.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
}

/// What the receivers got.
pub struct Report {
    /// Sender/receiver pairs.
    pub pairs: usize,
    /// Entries pushed to the receivers' sockets.
    pub delivered: u64,
    /// Seconds from the first entry to the last.
    pub span_secs: f64,
}

impl Report {
    fn rate(&self) -> f64 {
        if self.span_secs > 0.0 { self.delivered as f64 / self.span_secs } else { 0.0 }
    }
}

impl crate::Summary for Report {
    fn summary(&self) -> String {
        format!(
            "receivers: {} receivers got {} entries over {:.1} s from the first to the last: {:.0} msg/s delivered",
            self.pairs,
            self.delivered,
            self.span_secs,
            self.rate()
        )
    }

    fn json(&self) -> Value {
        json!({"mode": "receivers", "pairs": self.pairs, "delivered": self.delivered,
               "span_s": (self.span_secs * 10.0).round() / 10.0, "delivered_per_s": self.rate().round()})
    }
}

/// Runs the mode and prints a summary and a JSON line.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let pairs = prepare_pairs(&args.target.server, args.target.pairs).await?;
    let started = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    // Nanoseconds since `started` of the first and the last entry.
    let span = Arc::new(Mutex::new(None::<(u64, u64)>));
    let receivers = {
        let (delivered, span) = (delivered.clone(), span.clone());
        spawn_receivers(&args.target.receiver_sockets(), &pairs, started, move |text, now| {
            if !text.starts_with(r#"{"type":"entry""#) {
                return;
            }
            delivered.fetch_add(1, Ordering::Relaxed);
            let mut span = lock(&span);
            // Tasks may take the lock out of the order they read the clock in.
            *span = Some(span.map_or((now, now), |(first, last)| (first.min(now), last.max(now))));
        })
        .await?
    };
    let lines: String = pairs
        .iter()
        .map(|pair| Ok(format!("{}\t{}\n", pair.messages_path, pair.authorization.to_str()?)))
        .collect::<anyhow::Result<_>>()?;
    std::fs::write(&args.out, lines).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "{} pairs ready in {}; receivers connected for {} s (Ctrl-C ends early)",
        pairs.len(),
        args.out.display(),
        args.seconds
    );
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(args.seconds)) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    for receiver in receivers {
        receiver.abort();
    }
    let span_secs = lock(&span).map_or(0.0, |(first, last)| last.saturating_sub(first) as f64 / 1e9);
    crate::print(&Report { pairs: pairs.len(), delivered: delivered.load(Ordering::Relaxed), span_secs });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Summary as _;

    #[test]
    fn the_rate_is_over_the_span_of_deliveries() {
        let report = Report { pairs: 2, delivered: 500, span_secs: 2.0 };
        assert_eq!(report.json()["delivered_per_s"], 250.0);
        assert_eq!(Report { pairs: 2, delivered: 0, span_secs: 0.0 }.json()["delivered_per_s"], 0.0);
    }
}
