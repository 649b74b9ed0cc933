//! `durability`: sends under concurrent load, `kill -9`s the server mid-load, restarts it, and
//! repeats; then checks that every message the server acknowledged is stored, with the same
//! sequence number and bytes, and that none is stored twice. Senders behave like real clients:
//! a send that got no answer (the server died under it) is sent again, with the same
//! `client_message_id`, until it is acknowledged, so a message committed just before a kill and
//! sent again after the restart must come back as the same entry, not a second one.

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
    /// Messages stored under more than one sequence number.
    pub duplicated: usize,
    /// Sends answered only by a retry (the first attempt got no answer).
    pub retried: usize,
    /// The sequence number of the first acknowledged message found missing or different.
    pub first_lost: Option<u64>,
}

impl crate::Summary for Report {
    fn summary(&self) -> String {
        format!(
            "durability: {} kill -9 rounds under {} concurrent senders; {} messages acknowledged ({} after a retry), \
             {} stored, {} lost, {} duplicated",
            self.rounds, self.concurrency, self.acknowledged, self.retried, self.stored, self.lost, self.duplicated
        )
    }

    fn json(&self) -> Value {
        json!({"mode": "durability", "rounds": self.rounds, "acknowledged": self.acknowledged,
               "retried": self.retried, "stored": self.stored, "lost": self.lost, "duplicated": self.duplicated})
    }
}

/// Runs the mode and prints a summary and a JSON line; fails if an acknowledged message was lost.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    crate::print(&report);
    if report.lost > 0 {
        bail!("{} acknowledged messages were lost, the first with seq {:?}", report.lost, report.first_lost);
    }
    if report.duplicated > 0 {
        bail!("{} messages were stored more than once", report.duplicated);
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
    let retried = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Messages sent without an answer when their round ended: sent again in the next one.
    let mut unanswered: Vec<u64> = Vec::new();
    let mut next_id = 0u64;
    let sending = Sending { http: http.clone(), base: base.clone(), token: sender.token.clone(), conversation };
    for round in 1..=args.rounds {
        let stop_at = Instant::now() + Duration::from_secs(args.seconds);
        let mut senders = Vec::new();
        for worker in 0..args.concurrency {
            let (sending, acknowledged, retried) = (sending.clone(), acknowledged.clone(), retried.clone());
            let start = next_id + worker as u64 * 1_000_000;
            let carried = unanswered.pop();
            senders.push(tokio::spawn(async move {
                let mut fresh = start..;
                // The message in hand: carried over from the last round, or the next new one.
                let mut current = carried.map(|n| (n, true));
                loop {
                    if Instant::now() >= stop_at {
                        return current.map(|(n, _)| n);
                    }
                    let (n, is_retry) = match current {
                        Some(message) => message,
                        None => (fresh.next().unwrap_or(start), false),
                    };
                    match sending.send(n).await {
                        Some(seq) => {
                            if is_retry {
                                retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            acknowledged.lock().await.push((seq, payload_of(n)));
                            current = None;
                        }
                        None => current = Some((n, true)),
                    }
                }
            }));
        }
        next_id += args.concurrency as u64 * 1_000_000;
        tokio::time::sleep(Duration::from_secs(args.seconds) / 2).await;
        // SIGKILL in the middle of the load: no shutdown, no flush.
        server.kill();
        for sender in senders {
            if let Ok(Some(n)) = sender.await {
                unanswered.push(n);
            }
        }
        if round % 50 == 0 || round == args.rounds || args.rounds <= 20 {
            eprintln!("round {round}: killed with {} messages acknowledged so far", acknowledged.lock().await.len());
        }
        server = Roostd::start(&launch).await?;
    }
    // What never got an answer is sent until it does, as a client would after the last restart.
    for n in unanswered {
        loop {
            if let Some(seq) = sending.send(n).await {
                retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                acknowledged.lock().await.push((seq, payload_of(n)));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let stored = fetch_all(&http, &base, &receiver.token).await?;
    let acknowledged = acknowledged.lock().await;
    let missing: Vec<u64> =
        acknowledged.iter().filter(|(seq, payload)| stored.get(seq) != Some(payload)).map(|(seq, _)| *seq).collect();
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for payload in stored.values() {
        *copies.entry(payload.as_str()).or_default() += 1;
    }
    server.kill();
    Ok(Report {
        rounds: args.rounds,
        concurrency: args.concurrency,
        acknowledged: acknowledged.len(),
        stored: stored.len(),
        lost: missing.len(),
        duplicated: copies.values().filter(|count| **count > 1).count(),
        retried: retried.load(std::sync::atomic::Ordering::Relaxed),
        first_lost: missing.first().copied(),
    })
}

/// The payload of message `n` (base64url, as the server returns it).
fn payload_of(n: u64) -> String {
    bytes::encode(format!("durable-{n}").as_bytes())
}

/// One sender's way to the conversation.
#[derive(Clone)]
struct Sending {
    http: reqwest::Client,
    base: String,
    token: String,
    conversation: ConversationId,
}

impl Sending {
    /// Sends message `n` (client message id `d<n>`); its sequence number once acknowledged,
    /// `None` when there was no usable answer (the server is down or restarting).
    async fn send(&self, n: u64) -> Option<u64> {
        let body = json!({"client_message_id": format!("d{n}"), "epoch": 1, "ciphertext": payload_of(n)});
        let url = format!("{}/v1/conversations/{}/messages", self.base, self.conversation);
        let response = self.http.post(url).bearer_auth(&self.token).json(&body).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json::<Value>().await.ok()?["seq"].as_u64()
    }
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
