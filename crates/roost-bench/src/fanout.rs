//! `fanout`: one message to a large group whose every device is online; how long until every
//! device has it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, stream};
use hdrhistogram::Histogram;
use roost_proto::{ConversationId, bytes};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use crate::{client, connections};

/// Arguments of the fan-out mode.
#[derive(clap::Args)]
pub struct Args {
    /// Base URL of the running server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Users in the group besides the sender (1,499 + the sender = the 1,500-user maximum).
    #[arg(long, default_value_t = 1499)]
    pub users: usize,
    /// Devices per user, all online.
    #[arg(long, default_value_t = 3)]
    pub devices: usize,
    /// Base URLs of instances (sharing the server's database) to hold the devices' sockets,
    /// spread over them in turn; by default the server holds them all.
    #[arg(long = "devices-at", value_name = "URL")]
    pub devices_at: Vec<String>,
    /// Messages to send, one after another, each measured on its own.
    #[arg(long, default_value_t = 3)]
    pub messages: usize,
    /// Ciphertext size of each message, bytes.
    #[arg(long, default_value_t = 7)]
    pub size: usize,
    /// Process id of the server: if given, its resident memory is read before the first message
    /// and after the last, to show what delivering them left behind.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// What the fan-out mode measured.
pub struct Report {
    /// Users in the group besides the sender.
    pub users: usize,
    /// Devices per user.
    pub devices: usize,
    /// Instances holding the devices' sockets.
    pub instances: usize,
    /// Messages sent.
    pub messages: usize,
    /// Whether every online device got every message.
    pub complete: bool,
    /// Send→device delivery percentiles over all devices and messages, milliseconds.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// The slowest device of the slowest message, milliseconds.
    pub max_ms: f64,
    /// Ciphertext size of each message, bytes.
    pub size: usize,
    /// The server's resident memory before the first message and after the last, if asked.
    pub rss: Option<(u64, u64)>,
}

impl crate::Summary for Report {
    fn summary(&self) -> String {
        let memory = match self.rss {
            Some((before, after)) => format!(
                "; server RSS {:.1} MiB before the first message, {:.1} MiB after the last",
                before as f64 / 1048576.0,
                after as f64 / 1048576.0
            ),
            None => String::new(),
        };
        format!(
            "fanout: {} users x {} devices = {} online devices on {} instance(s), {} messages of {} B: every device got each message: {}; \
             delivery p50 {:.1} ms, p99 {:.1} ms, max (last device) {:.1} ms{memory}",
            self.users,
            self.devices,
            self.users * self.devices,
            self.instances,
            self.messages,
            self.size,
            self.complete,
            self.p50_ms,
            self.p99_ms,
            self.max_ms
        )
    }

    fn json(&self) -> Value {
        json!({"mode": "fanout", "devices": self.users * self.devices, "instances": self.instances, "messages": self.messages,
               "size": self.size, "complete": self.complete, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
               "max_ms": self.max_ms, "rss_before_bytes": self.rss.map(|r| r.0), "rss_after_bytes": self.rss.map(|r| r.1)})
    }
}

/// Runs the mode and prints a summary and a JSON line.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    crate::print(&report);
    Ok(())
}

/// Prepares the users and the group, connects every device and times each message.
pub async fn measure(args: &Args) -> anyhow::Result<Report> {
    let http = reqwest::Client::new();
    let prepared = Instant::now();
    eprintln!("registering {} users with {} devices each…", args.users, args.devices);
    let sender = client::register_and_login(&http, &args.server).await?;
    let bar = client::progress(args.users, "users registered");
    let members: Vec<client::Device> = stream::iter(0..args.users)
        .map(|_| client::register_user(&http, &args.server, args.devices))
        .buffer_unordered(32)
        .inspect(|_| bar.inc(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()
        .context("preparing users (raise the server's registration, challenge and link rate limits)")?
        .into_iter()
        .flatten()
        .collect();
    bar.finish_and_clear();
    let conversation = ConversationId::from_bytes(rand::random());
    let ids: Vec<_> = members.iter().map(|d| d.device_id).collect();
    let body = json!({"conversation_id": conversation, "kind": "group", "epoch": 1, "group_info": "AA",
                      "members": ids, "welcome": "AA"});
    let created =
        http.post(format!("{}/v1/conversations", args.server)).bearer_auth(&sender.token).json(&body).send().await?;
    if !created.status().is_success() {
        bail!("creating the group: {} {}", created.status(), created.text().await.unwrap_or_default());
    }
    eprintln!("prepared {} devices in {:.1} s; connecting…", members.len(), prepared.elapsed().as_secs_f64());

    // Every device online and drained before the first message.
    let instances = if args.devices_at.is_empty() { std::slice::from_ref(&args.server) } else { &args.devices_at[..] };
    let ws: Vec<String> = instances.iter().map(|base| client::ws_url(base)).collect();
    let bar = client::progress(members.len(), "devices online");
    let sockets: Vec<_> = stream::iter(members.iter().zip(ws.iter().cycle()))
        .map(|(device, ws)| client::open_socket(ws, &device.token))
        .buffer_unordered(64)
        .inspect(|_| bar.inc(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    bar.finish_and_clear();
    let arrivals: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            let arrivals = arrivals.clone();
            tokio::spawn(async move {
                while let Some(Ok(message)) = socket.next().await {
                    let Message::Text(text) = message else { continue };
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                    if frame["type"] == "entry" {
                        let seq = frame["seq"].as_u64().unwrap_or(0);
                        arrivals.lock().await.push((seq, Instant::now()));
                    }
                }
            })
        })
        .collect();

    let expected = members.len();
    let mut all_ms = Vec::new();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    // Let the connection burst settle before reading the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = args.server_pid.map(connections::resident_bytes).transpose()?;
    let ciphertext = bytes::encode(&vec![0x5a_u8; args.size]);
    for n in 0..args.messages {
        let sent = Instant::now();
        let body = json!({"client_message_id": format!("fanout-{n}"), "epoch": 1, "ciphertext": ciphertext});
        let reply: Value = http
            .post(format!("{}/v1/conversations/{conversation}/messages", args.server))
            .bearer_auth(&sender.token)
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        let seq = reply["seq"].as_u64().context("no sequence number")?;
        let deadline = sent + Duration::from_secs(30);
        loop {
            let arrived: Vec<Instant> =
                arrivals.lock().await.iter().filter(|(s, _)| *s == seq).map(|(_, at)| *at).collect();
            if arrived.len() >= expected || Instant::now() > deadline {
                for at in &arrived {
                    let _ =
                        histogram.record(u64::try_from(at.duration_since(sent).as_micros()).unwrap_or(u64::MAX).max(1));
                }
                let last = arrived.iter().max().map_or(f64::NAN, |at| at.duration_since(sent).as_secs_f64() * 1000.0);
                eprintln!("message {n}: {} of {expected} devices, last after {last:.1} ms", arrived.len());
                all_ms.push((arrived.len(), last));
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let rss_after = args.server_pid.map(connections::resident_bytes).transpose()?;
    for reader in readers {
        reader.abort();
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let complete = all_ms.iter().all(|(n, _)| *n == expected);
    let worst = all_ms.iter().map(|(_, last)| *last).fold(0.0_f64, f64::max);
    Ok(Report {
        users: args.users,
        instances: args.devices_at.len().max(1),
        devices: args.devices,
        messages: args.messages,
        complete,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: worst,
        size: args.size,
        rss: rss_before.zip(rss_after),
    })
}
