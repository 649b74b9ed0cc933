//! `receivers`: the receiving half of the throughput mode, for a load generator of your own.
//!
//! Prepares sender/receiver pairs as the throughput mode does, writes each sender's messages
//! endpoint and bearer token to a file (one `path<TAB>token` line per pair), then holds every
//! receiver's WebSocket and counts the entries pushed to them. Another tool (wrk, say, with
//! `crates/roost-bench/wrk/send.lua`) posts to those endpoints meanwhile; this mode reports how
//! many messages reached the receivers' sockets and at what rate, so "delivered live" is checked
//! independently of the load generator that sent them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use crate::client;
use crate::throughput::prepare_pairs;

/// Arguments of the receivers mode.
#[derive(clap::Args)]
pub struct Args {
    /// Base URL of the running server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Sender/receiver pairs (one direct conversation each).
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
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
    let pairs = prepare_pairs(&args.server, args.pairs).await?;
    let started = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    // Nanoseconds since `started` of the first and the last entry.
    let span = Arc::new(Mutex::new(None::<(u64, u64)>));
    let ws_base = format!("{}/v1/ws", args.server.replacen("http", "ws", 1));
    let mut receivers = Vec::new();
    for pair in &pairs {
        let mut socket = client::open_socket(&ws_base, &pair.receiver_token).await?;
        let (delivered, span) = (delivered.clone(), span.clone());
        receivers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                let Message::Text(text) = message else { continue };
                if !text.starts_with(r#"{"type":"entry""#) {
                    continue;
                }
                let now = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                delivered.fetch_add(1, Ordering::Relaxed);
                let mut span = span.lock().await;
                // Tasks may take the lock out of the order they read the clock in.
                *span = Some(span.map_or((now, now), |(first, last)| (first.min(now), last.max(now))));
            }
        }));
    }
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
    let span_secs = span.lock().await.map_or(0.0, |(first, last)| last.saturating_sub(first) as f64 / 1e9);
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
