//! `throughput`: open-loop senders post opaque ciphertext over HTTP to direct conversations whose
//! receivers are connected by WebSocket; reports accepted and delivered messages per second and
//! send→receive latency percentiles.
//!
//! Each message carries its send time (nanoseconds since the run started) in its first 8 bytes,
//! so the receiver measures latency from the pushed frame alone. Load does not need real MLS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, stream};
use hdrhistogram::Histogram;
use roost_proto::{ConversationId, bytes};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::client;
use crate::sender::Sender;

/// The server and the sender/receiver pairs to prepare on it (the throughput and receivers modes).
#[derive(clap::Args)]
pub struct PairsArgs {
    /// Base URL of the running server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Sender/receiver pairs (one direct conversation each).
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
    /// Base URLs of other instances (sharing the server's database) to hold the receivers'
    /// sockets on instead, spread over them in turn: sends then cross instances to reach them.
    #[arg(long = "receivers-at", value_name = "URL")]
    pub receivers_at: Vec<String>,
}

impl PairsArgs {
    /// The WebSocket endpoints that hold the receivers' sockets.
    pub(crate) fn receiver_sockets(&self) -> Vec<String> {
        if self.receivers_at.is_empty() {
            vec![client::ws_url(&self.server)]
        } else {
            self.receivers_at.iter().map(|base| client::ws_url(base)).collect()
        }
    }
}

/// Arguments of the throughput mode.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: PairsArgs,
    /// Target rate over all senders, messages per second (open loop).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Ciphertext size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Most requests in flight at once.
    #[arg(long, default_value_t = 512)]
    pub max_in_flight: usize,
    /// How the senders send: an HTTP request per message, or `send` frames over each sender's
    /// own WebSocket.
    #[arg(long, value_enum, default_value_t = Over::Http)]
    pub over: Over,
    /// The server's process id: when given, the report splits the processor time of the load
    /// between the server, PostgreSQL (every process named `postgres`) and this load generator.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// How the senders send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Over {
    /// `POST /v1/conversations/{id}/messages` over HTTP/1.1 keep-alive connections.
    Http,
    /// `send` frames over the sender's WebSocket, answered by `sent` frames.
    Websocket,
}

impl Over {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Websocket => "websocket",
        }
    }
}

/// What the throughput mode measured.
pub struct Report {
    /// The offered rate, messages per second.
    pub target_rate: u64,
    /// Seconds of load.
    pub duration: u64,
    /// Seconds the sends actually took: longer than `duration` when the server could not keep
    /// up (every scheduled message is sent, at most `max_in_flight` at a time).
    pub load_secs: f64,
    /// Sender/receiver pairs.
    pub pairs: usize,
    /// Other instances holding the receivers' sockets (0: the senders' server).
    pub receiver_instances: usize,
    /// How the senders sent.
    pub over: Over,
    /// Ciphertext size in bytes.
    pub size: usize,
    /// Messages acknowledged per second of load.
    pub accepted_per_s: f64,
    /// Messages pushed to the receivers' sockets per second of load.
    pub delivered_per_s: f64,
    /// Sends refused or failed.
    pub errors: u64,
    /// Send→socket latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub p999_ms: f64,
    /// Milliseconds from sending every pair's first message at once, before the measurement,
    /// until the last of them arrived: the cost of starting many conversations together.
    pub first_message_ms: f64,
    /// Processor seconds used from the first send until the last delivery, when the server's
    /// process id was given.
    pub cpu: Option<crate::cpu::Sample>,
}

impl Report {
    /// Microseconds of processor time per accepted message: (server, PostgreSQL, load generator).
    pub fn cpu_per_message_us(&self) -> Option<(f64, f64, f64)> {
        let cpu = self.cpu?;
        let messages = self.accepted_per_s * self.load_secs;
        (messages > 0.0).then(|| {
            let us = |seconds: f64| seconds * 1e6 / messages;
            (us(cpu.server), us(cpu.postgres), us(cpu.bench))
        })
    }
}

impl crate::Summary for Report {
    fn summary(&self) -> String {
        format!(
            "throughput: target {} msg/s for {} s (sent in {:.1} s) over {} pairs ({}{}), {} B each: accepted {:.0} msg/s, delivered {:.0} msg/s, {} errors; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
            self.target_rate,
            self.duration,
            self.load_secs,
            self.pairs,
            self.over.name(),
            match self.receiver_instances {
                0 => String::new(),
                n => format!(", receivers on {n} other instance{}", if n == 1 { "" } else { "s" }),
            },
            self.size,
            self.accepted_per_s,
            self.delivered_per_s,
            self.errors,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms
        ) + &format!("; first messages of all pairs at once {:.1} ms", self.first_message_ms)
            + &self
            .cpu_per_message_us()
            .map(|(server, postgres, bench)| {
                format!("; CPU per message: server {server:.1} µs, PostgreSQL {postgres:.1} µs, load generator {bench:.1} µs")
            })
            .unwrap_or_default()
    }

    fn json(&self) -> serde_json::Value {
        json!({"mode": "throughput", "target_rate": self.target_rate, "duration_s": self.duration,
               "load_s": (self.load_secs * 10.0).round() / 10.0, "pairs": self.pairs, "over": self.over.name(),
               "receiver_instances": self.receiver_instances,
               "size": self.size, "accepted_per_s": self.accepted_per_s.round(),
               "delivered_per_s": self.delivered_per_s.round(), "errors": self.errors,
               "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "p999_ms": self.p999_ms,
               "first_message_ms": (self.first_message_ms * 10.0).round() / 10.0,
               "cpu_us_per_message": self.cpu_per_message_us().map(|(server, postgres, bench)| json!({
                   "server": (server * 10.0).round() / 10.0, "postgres": (postgres * 10.0).round() / 10.0,
                   "load_generator": (bench * 10.0).round() / 10.0}))})
    }
}

/// A sender and a receiver sharing a direct conversation.
pub(crate) struct Pair {
    /// `Bearer <sender's token>`, ready to send.
    pub(crate) authorization: hyper::header::HeaderValue,
    /// The sender's token, for its own WebSocket.
    pub(crate) sender_token: String,
    /// Their direct conversation.
    pub(crate) conversation_id: ConversationId,
    pub(crate) receiver_token: String,
    /// The conversation's messages endpoint (path only), parsed once.
    pub(crate) messages_path: hyper::Uri,
}

/// Runs the mode and prints a summary and a JSON line.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    crate::print(&report);
    Ok(())
}

/// Prepares the pairs, runs the load and collects what arrived.
pub async fn measure(args: &Args) -> anyhow::Result<Report> {
    if args.size < 8 {
        bail!("--size must be at least 8 bytes");
    }
    let server = &args.target.server;
    let pairs = prepare_pairs(server, args.target.pairs).await?;

    let started = Instant::now();
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3)?));
    let delivered = Arc::new(AtomicU64::new(0));
    let ws_base = client::ws_url(server);
    let receivers = {
        let (histogram, delivered) = (histogram.clone(), delivered.clone());
        spawn_receivers(&args.target.receiver_sockets(), &pairs, started, move |text, now_ns| {
            let Some(sent_ns) = sent_at(text) else { return };
            delivered.fetch_add(1, Ordering::Relaxed);
            let _ = lock(&histogram).record(now_ns.saturating_sub(sent_ns).max(1_000));
        })
        .await?
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let sender = Arc::new(Sender::new(server)?);
    let first_message = first_messages(&sender, &pairs, started, &delivered).await?;
    // The measurement starts with every pair's conversation in use.
    lock(&histogram).reset();
    delivered.store(0, Ordering::Relaxed);
    let accepted = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(args.max_in_flight));
    let frame_senders = match args.over {
        Over::Http => Vec::new(),
        Over::Websocket => {
            let answers = Answers { accepted: accepted.clone(), errors: errors.clone(), in_flight: in_flight.clone() };
            open_senders(&ws_base, &pairs, &answers).await?
        }
    };
    let total = args.rate * args.duration;
    let progress = client::progress(usize::try_from(total).unwrap_or(usize::MAX), "sent · {msg}");
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut payload = vec![0u8; args.size];
    let load_started = Instant::now();
    let cpu_before = crate::cpu::Sample::now(args.server_pid);
    for i in 0..total {
        // Open loop: each send is due at its own time, whether or not earlier ones finished.
        let due = load_started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
        let pair = &pairs[(i as usize) % pairs.len()];
        let sent_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        payload[..8].copy_from_slice(&sent_ns.to_be_bytes());
        if let Some(frames) = frame_senders.get((i as usize) % pairs.len()) {
            // Answered by a `sent` (or `send_failed`) frame, which gives the slot back.
            permit.forget();
            let frame = format!(
                r#"{{"type":"send","conversation_id":"{}","client_message_id":"b{i}","epoch":1,"ciphertext":"{}"}}"#,
                pair.conversation_id,
                bytes::encode(&payload)
            );
            if frames.send(frame).is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
                in_flight.add_permits(1);
            }
            if i % 100 == 0 {
                progress.set_position(i);
                progress.set_message(format!("{} delivered", delivered.load(Ordering::Relaxed)));
            }
            continue;
        }
        let body = format!(r#"{{"client_message_id":"b{i}","epoch":1,"ciphertext":"{}"}}"#, bytes::encode(&payload));
        let (sender, path, authorization) = (sender.clone(), pair.messages_path.clone(), pair.authorization.clone());
        let (accepted, errors) = (accepted.clone(), errors.clone());
        tokio::spawn(async move {
            match sender.post(&path, &authorization, body.into()).await {
                Ok(status) if status.is_success() => accepted.fetch_add(1, Ordering::Relaxed),
                _ => errors.fetch_add(1, Ordering::Relaxed),
            };
            drop(permit);
        });
        if i % 100 == 0 {
            progress.set_position(i);
            progress.set_message(format!("{} delivered", delivered.load(Ordering::Relaxed)));
        }
    }
    let _ = in_flight.acquire_many(u32::try_from(args.max_in_flight).unwrap_or(u32::MAX)).await;
    let load_secs = load_started.elapsed().as_secs_f64();
    // Let the last pushes arrive.
    let deadline = Instant::now() + Duration::from_secs(5);
    while delivered.load(Ordering::Relaxed) < accepted.load(Ordering::Relaxed) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu = args.server_pid.map(|_| crate::cpu::Sample::now(args.server_pid).since(cpu_before));
    progress.finish_and_clear();
    for receiver in receivers {
        receiver.abort();
    }

    let histogram = lock(&histogram);
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1e6;
    Ok(Report {
        target_rate: args.rate,
        duration: args.duration,
        load_secs,
        pairs: args.target.pairs,
        receiver_instances: args.target.receivers_at.len(),
        over: args.over,
        size: args.size,
        accepted_per_s: accepted.load(Ordering::Relaxed) as f64 / load_secs,
        delivered_per_s: delivered.load(Ordering::Relaxed) as f64 / load_secs,
        errors: errors.load(Ordering::Relaxed),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        first_message_ms: first_message,
        cpu,
    })
}

/// Sends every pair's first message at once and waits until each arrived (at most 10 s).
/// Returns the slowest one's send→socket time, milliseconds.
///
/// Outside the measurement: a new conversation's first messages find the server's caches cold
/// (the sender's session, the conversation's member list), and the load's pairs all begin in
/// the same instant, so without this the percentiles would mix that start with the steady
/// state they are meant to show. The report gives the start as a figure of its own.
async fn first_messages(
    sender: &Arc<Sender>,
    pairs: &[Pair],
    started: Instant,
    delivered: &AtomicU64,
) -> anyhow::Result<f64> {
    let begun = Instant::now();
    let sends = pairs.iter().enumerate().map(|(n, pair)| {
        let mut payload = vec![0u8; 16];
        let sent_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        payload[..8].copy_from_slice(&sent_ns.to_be_bytes());
        let body =
            format!(r#"{{"client_message_id":"first{n}","epoch":1,"ciphertext":"{}"}}"#, bytes::encode(&payload));
        sender.post(&pair.messages_path, &pair.authorization, body.into())
    });
    for status in futures::future::join_all(sends).await {
        let status = status?;
        if !status.is_success() {
            bail!("a pair's first message was refused: {status}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered.load(Ordering::Relaxed) < pairs.len() as u64 {
        if Instant::now() > deadline {
            bail!("the pairs' first messages did not all arrive within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(begun.elapsed().as_secs_f64() * 1e3)
}

/// Where the answers to `send` frames are counted.
struct Answers {
    accepted: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    /// Each answer gives one in-flight slot back.
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// Opens every sender's own WebSocket: a task writes the frames handed to it, another counts
/// the answers. Returns where to hand each pair's frames.
async fn open_senders(
    ws_base: &str,
    pairs: &[Pair],
    answers: &Answers,
) -> anyhow::Result<Vec<tokio::sync::mpsc::UnboundedSender<String>>> {
    use futures::SinkExt as _;

    let mut senders = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let (mut write, mut read) = client::open_socket(ws_base, &pair.sender_token).await?.split();
        let (frames, mut queued) = tokio::sync::mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(frame) = queued.recv().await {
                if write.send(Message::Text(frame.into())).await.is_err() {
                    break;
                }
            }
        });
        let (accepted, errors, in_flight) =
            (answers.accepted.clone(), answers.errors.clone(), answers.in_flight.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = read.next().await {
                let Message::Text(text) = message else { continue };
                if text.starts_with(r#"{"type":"sent""#) {
                    accepted.fetch_add(1, Ordering::Relaxed);
                } else if text.starts_with(r#"{"type":"send_failed""#) || text.starts_with(r#"{"type":"error""#) {
                    errors.fetch_add(1, Ordering::Relaxed);
                } else {
                    continue;
                }
                in_flight.add_permits(1);
            }
        });
        senders.push(frames);
    }
    Ok(senders)
}

/// Registers `count` sender/receiver pairs, each with a direct conversation.
/// Connects every pair's receiver, to the endpoints of `ws_bases` in turn, and hands each text
/// frame it gets to `on_text`, with the nanoseconds since `started` at which it arrived.
/// Returns the receivers' tasks.
pub(crate) async fn spawn_receivers(
    ws_bases: &[String],
    pairs: &[Pair],
    started: Instant,
    on_text: impl Fn(&str, u64) + Clone + Send + 'static,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut receivers = Vec::with_capacity(pairs.len());
    for (pair, ws_base) in pairs.iter().zip(ws_bases.iter().cycle()) {
        let mut socket = client::open_socket(ws_base, &pair.receiver_token).await?;
        let on_text = on_text.clone();
        receivers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message {
                    on_text(&text, u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
                }
            }
        }));
    }
    Ok(receivers)
}

/// Locks a mutex held only for a moment, never across an await.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) async fn prepare_pairs(server: &str, count: usize) -> anyhow::Result<Vec<Pair>> {
    let http = reqwest::Client::new();
    eprintln!("preparing {count} pairs…");
    stream::iter(0..count)
        .map(|_| prepare_pair(&http, server))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()
        .context("preparing pairs (raise the server's registration, challenge and send rate limits)")
}

async fn prepare_pair(http: &reqwest::Client, base: &str) -> anyhow::Result<Pair> {
    let sender = client::register_and_login(http, base).await?;
    let receiver = client::register_and_login(http, base).await?;
    let conversation = ConversationId::from_bytes(rand::random());
    let body = json!({"conversation_id": conversation, "kind": "direct", "epoch": 1, "group_info": "AA",
                      "members": [receiver.device_id], "welcome": "AA", "retention": {"policy": "ttl", "ttl_secs": 3600}});
    let response = http.post(format!("{base}/v1/conversations")).bearer_auth(&sender.token).json(&body).send().await?;
    if !response.status().is_success() {
        bail!("creating a conversation: {}", response.status());
    }
    let authorization = hyper::header::HeaderValue::from_str(&format!("Bearer {}", sender.token))?;
    let messages_path = format!("/v1/conversations/{conversation}/messages").parse()?;
    Ok(Pair {
        authorization,
        sender_token: sender.token,
        conversation_id: conversation,
        receiver_token: receiver.token,
        messages_path,
    })
}

/// The send time (nanoseconds since the run started) carried in the first 8 bytes of an `entry`
/// frame's payload. Reads only what it needs: the receivers must stay cheap, since the load
/// generator shares the machine with the server.
fn sent_at(frame: &str) -> Option<u64> {
    if !frame.starts_with(r#"{"type":"entry""#) {
        return None;
    }
    const KEY: &str = r#""payload":""#;
    let start = frame.find(KEY)? + KEY.len();
    // 12 base64 characters hold the first 9 bytes.
    let head = bytes::decode(frame.get(start..start + 12)?).ok()?;
    Some(u64::from_be_bytes(head.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_time_is_read_from_an_entry_frame() {
        let mut payload = vec![7u8; 40];
        payload[..8].copy_from_slice(&123_456_789u64.to_be_bytes());
        // Encoded exactly as the server encodes it.
        let entry = roost_proto::conversation::Entry {
            conversation_id: ConversationId::from_bytes([1; 16]),
            seq: 1,
            kind: roost_proto::conversation::EntryKind::Message,
            sender_user: roost_proto::UserId::from_bytes([2; 32]),
            sender_device: roost_proto::DeviceId::from_bytes([3; 32]),
            epoch: 1,
            payload: payload.into(),
            created_at: 0,
        };
        let frame = serde_json::to_string(&roost_proto::socket::ServerFrame::Entry(entry)).unwrap();
        assert_eq!(sent_at(&frame), Some(123_456_789));
        assert_eq!(sent_at(r#"{"type":"queue_empty"}"#), None);
    }
}
