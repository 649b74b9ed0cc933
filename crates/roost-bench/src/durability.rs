//! `durability`: sends under concurrent load, `kill -9`s the server mid-load, restarts it, and
//! repeats; then checks that every message the server acknowledged is stored, with the same
//! sequence number and bytes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use roost_proto::{ConversationId, bytes};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::client;
use crate::server::{Launch, Roostd};

/// Arguments of the durability mode.
#[derive(clap::Args)]
pub struct Args {
    /// The roostd binary to start and kill.
    #[arg(long, default_value = "./target/release/roostd")]
    pub roostd: PathBuf,
    /// Data directory for that server (wiped at the start).
    #[arg(long, default_value = "/tmp/roost-durability-data")]
    pub data_dir: PathBuf,
    /// Port to run it on.
    #[arg(long, default_value_t = 18080)]
    pub port: u16,
    /// How many times to kill the server.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds of load before each kill.
    #[arg(long, default_value_t = 2)]
    pub seconds: u64,
    /// Concurrent senders.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Run the server on this PostgreSQL database (its current schema is emptied first)
    /// instead of SQLite in the data directory.
    #[arg(long)]
    pub database_url: Option<String>,
}

/// What the durability mode measured.
pub struct Report {
    /// Kill -9 rounds.
    pub rounds: usize,
    /// Concurrent senders.
    pub concurrency: usize,
    /// Messages the server acknowledged with a sequence number.
    pub acknowledged: usize,
    /// Messages stored at the end.
    pub stored: usize,
    /// Acknowledged messages missing or different at the end.
    pub lost: usize,
    /// The sequence number of the first acknowledged message found missing or different.
    pub first_lost: Option<u64>,
}

impl crate::Summary for Report {
    fn summary(&self) -> String {
        format!(
            "durability: {} kill -9 rounds under {} concurrent senders; {} messages acknowledged, {} stored, {} lost",
            self.rounds, self.concurrency, self.acknowledged, self.stored, self.lost
        )
    }

    fn json(&self) -> Value {
        json!({"mode": "durability", "rounds": self.rounds, "acknowledged": self.acknowledged,
               "stored": self.stored, "lost": self.lost})
    }
}

/// Runs the mode and prints a summary and a JSON line; fails if an acknowledged message was lost.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    crate::print(&report);
    if report.lost > 0 {
        bail!("{} acknowledged messages were lost, the first with seq {:?}", report.lost, report.first_lost);
    }
    Ok(())
}

/// Runs the rounds against a server it starts on a wiped data directory.
pub async fn measure(args: &Args) -> anyhow::Result<Report> {
    let launch = Launch {
        binary: args.roostd.clone(),
        data_dir: args.data_dir.clone(),
        port: args.port,
        database_url: args.database_url.clone(),
    };
    let mut server = Roostd::start_fresh(&launch).await?;
    let base = server.base().to_owned();
    let http = reqwest::Client::new();
    let sender = client::register_and_login(&http, &base).await?;
    let receiver = client::register_and_login(&http, &base).await?;
    let conversation = ConversationId::from_bytes(rand::random());
    let body = json!({"conversation_id": conversation, "kind": "direct", "epoch": 1, "group_info": "AA",
                      "members": [receiver.device_id], "welcome": "AA", "retention": {"policy": "ttl", "ttl_secs": 86400}});
    let created = http.post(format!("{base}/v1/conversations")).bearer_auth(&sender.token).json(&body).send().await?;
    if !created.status().is_success() {
        bail!("creating the conversation: {}", created.status());
    }

    let acknowledged: Arc<Mutex<Vec<(u64, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut next_id = 0u64;
    for round in 1..=args.rounds {
        let stop_at = Instant::now() + Duration::from_secs(args.seconds);
        let mut senders = Vec::new();
        for worker in 0..args.concurrency {
            let (http, base, token, acknowledged) =
                (http.clone(), base.clone(), sender.token.clone(), acknowledged.clone());
            let start = next_id + worker as u64 * 1_000_000;
            senders.push(tokio::spawn(async move {
                for n in start.. {
                    if Instant::now() >= stop_at {
                        break;
                    }
                    let payload = bytes::encode(format!("durable-{n}").as_bytes());
                    let body = json!({"client_message_id": format!("d{n}"), "epoch": 1, "ciphertext": payload});
                    let url = format!("{base}/v1/conversations/{conversation}/messages");
                    let Ok(response) = http.post(url).bearer_auth(&token).json(&body).send().await else { continue };
                    if !response.status().is_success() {
                        continue;
                    }
                    let Ok(reply) = response.json::<Value>().await else { continue };
                    if let Some(seq) = reply["seq"].as_u64() {
                        acknowledged.lock().await.push((seq, payload));
                    }
                }
            }));
        }
        next_id += args.concurrency as u64 * 1_000_000;
        tokio::time::sleep(Duration::from_secs(args.seconds) / 2).await;
        // SIGKILL in the middle of the load: no shutdown, no flush.
        server.kill();
        for sender in senders {
            let _ = sender.await;
        }
        eprintln!("round {round}: killed with {} messages acknowledged so far", acknowledged.lock().await.len());
        server = Roostd::start(&launch).await?;
    }

    let stored = fetch_all(&http, &base, &receiver.token).await?;
    let acknowledged = acknowledged.lock().await;
    let missing: Vec<u64> =
        acknowledged.iter().filter(|(seq, payload)| stored.get(seq) != Some(payload)).map(|(seq, _)| *seq).collect();
    server.kill();
    Ok(Report {
        rounds: args.rounds,
        concurrency: args.concurrency,
        acknowledged: acknowledged.len(),
        stored: stored.len(),
        lost: missing.len(),
        first_lost: missing.first().copied(),
    })
}

/// Every stored entry of the receiver, by sequence number (payload as base64url).
async fn fetch_all(http: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<HashMap<u64, String>> {
    let mut stored = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{base}/v1/sync?limit=1000&cursor={c}"),
            None => format!("{base}/v1/sync?limit=1000"),
        };
        let page: Value = http.get(url).bearer_auth(token).send().await?.json().await?;
        for entry in page["entries"].as_array().map(Vec::as_slice).unwrap_or_default() {
            if let (Some(seq), Some(payload)) = (entry["seq"].as_u64(), entry["payload"].as_str()) {
                stored.insert(seq, payload.to_owned());
            }
        }
        match page["cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(stored),
        }
    }
}
