//! `push`: what push notifications cost the send path. Open-loop senders post to direct
//! conversations whose receivers are all offline, in rounds of two phases: one with no receiver
//! subscribed, one with every receiver subscribed to a push service this mode plays on 127.0.0.1
//! (it answers 201 and counts). Alternating the phases over `--rounds` keeps a drift of the
//! machine (a slower disk, a growing database) from passing for the cost of push. Each receiver
//! syncs every `--sync-every-ms` in both phases, as a woken device would, which is what lets the
//! next message wake it again. Reports each phase's accepted messages per second and send
//! acknowledgement latency (medians over the rounds), their ratios, and the wake-ups the push
//! service received per second.
//!
//! The server must allow plain-http push endpoints on loopback: start it with
//! `ROOST_PUSH__ALLOW_HTTP_LOOPBACK=true`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use roost_proto::bytes;
use serde_json::json;

use crate::sender::Sender;
use crate::throughput::{Pair, lock, prepare_pairs};

/// Arguments of the push mode.
#[derive(clap::Args)]
pub struct Args {
    /// Base URL of the running server (started with ROOST_PUSH__ALLOW_HTTP_LOOPBACK=true).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Sender/receiver pairs (one direct conversation each); every receiver is offline.
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
    /// Target rate over all senders, messages per second (open loop).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of load per phase.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Rounds of the two phases.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// How often each receiver syncs, in milliseconds (in both phases).
    #[arg(long, default_value_t = 500)]
    pub sync_every_ms: u64,
    /// Most requests in flight at once.
    #[arg(long, default_value_t = 512)]
    pub max_in_flight: usize,
}

/// One phase's figures.
struct Phase {
    accepted_per_s: f64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    wake_ups: u64,
    load_secs: f64,
}

/// What the push mode measured: each round's phases and their medians.
pub struct Report {
    rate: u64,
    pairs: usize,
    rounds: Vec<(Phase, Phase)>,
    without: Phase,
    with: Phase,
}

/// The median of each figure over the phases.
fn median(phases: &[&Phase]) -> Phase {
    let mid = |figure: fn(&Phase) -> f64| {
        let mut values: Vec<f64> = phases.iter().map(|p| figure(p)).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or_default()
    };
    Phase {
        accepted_per_s: mid(|p| p.accepted_per_s),
        errors: phases.iter().map(|p| p.errors).sum(),
        p50_ms: mid(|p| p.p50_ms),
        p99_ms: mid(|p| p.p99_ms),
        wake_ups: phases.iter().map(|p| p.wake_ups).sum(),
        load_secs: phases.iter().map(|p| p.load_secs).sum(),
    }
}

impl crate::Summary for Report {
    fn summary(&self) -> String {
        let (without, with) = (&self.without, &self.with);
        let p99s = |pick: fn(&(Phase, Phase)) -> &Phase| {
            self.rounds.iter().map(|round| format!("{:.2}", pick(round).p99_ms)).collect::<Vec<_>>().join("/")
        };
        format!(
            "push: {} msg/s to {} offline receivers, {} rounds (medians); without push: accepted {:.0} msg/s, ack p50 {:.2} ms, \
             p99 {:.2} ms ({} ms), {} errors; every receiver subscribed: accepted {:.0} msg/s ({:.2}×), ack p50 {:.2} ms, \
             p99 {:.2} ms ({} ms; {:.2}×), {} errors, {} wake-ups delivered ({:.0}/s)",
            self.rate,
            self.pairs,
            self.rounds.len(),
            without.accepted_per_s,
            without.p50_ms,
            without.p99_ms,
            p99s(|round| &round.0),
            without.errors,
            with.accepted_per_s,
            with.accepted_per_s / without.accepted_per_s.max(f64::MIN_POSITIVE),
            with.p50_ms,
            with.p99_ms,
            p99s(|round| &round.1),
            with.p99_ms / without.p99_ms.max(f64::MIN_POSITIVE),
            with.errors,
            with.wake_ups,
            with.wake_ups as f64 / with.load_secs,
        )
    }

    fn json(&self) -> serde_json::Value {
        let phase = |p: &Phase| {
            json!({"accepted_per_s": p.accepted_per_s.round(), "errors": p.errors, "p50_ms": p.p50_ms,
                   "p99_ms": p.p99_ms, "wake_ups": p.wake_ups,
                   "wake_ups_per_s": (p.wake_ups as f64 / p.load_secs).round()})
        };
        json!({"mode": "push", "rate": self.rate, "pairs": self.pairs, "without_push": phase(&self.without),
               "with_push": phase(&self.with),
               "rounds": self.rounds.iter().map(|(without, with)| json!([phase(without), phase(with)])).collect::<Vec<_>>(),
               "throughput_ratio": self.with.accepted_per_s / self.without.accepted_per_s.max(f64::MIN_POSITIVE),
               "p99_ratio": self.with.p99_ms / self.without.p99_ms.max(f64::MIN_POSITIVE)})
    }
}

/// Runs the mode and prints a summary and a JSON line.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    crate::print(&report);
    Ok(())
}

async fn measure(args: &Args) -> anyhow::Result<Report> {
    let pairs = prepare_pairs(&args.server, args.pairs).await?;
    let (sink, wake_ups) = start_push_service().await?;
    let syncing = Arc::new(AtomicBool::new(true));
    let syncers = start_syncing(&args.server, &pairs, Duration::from_millis(args.sync_every_ms.max(1)), &syncing);

    let mut rounds = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds.max(1) {
        eprintln!("round {round}: no receiver subscribed…");
        subscribe_all(&args.server, &pairs, None).await?;
        let without = load(args, &pairs, &wake_ups).await?;
        eprintln!("round {round}: every receiver subscribed…");
        subscribe_all(&args.server, &pairs, Some(&sink)).await?;
        let with = load(args, &pairs, &wake_ups).await?;
        if with.wake_ups == 0 {
            bail!(
                "the push service received no wake-up: is the server started with ROOST_PUSH__ALLOW_HTTP_LOOPBACK=true?"
            );
        }
        rounds.push((without, with));
    }
    syncing.store(false, Ordering::Relaxed);
    for syncer in syncers {
        syncer.abort();
    }
    let without = median(&rounds.iter().map(|round| &round.0).collect::<Vec<_>>());
    let with = median(&rounds.iter().map(|round| &round.1).collect::<Vec<_>>());
    Ok(Report { rate: args.rate, pairs: args.pairs, rounds, without, with })
}

/// One phase of open-loop sends; the latency is each send's acknowledgement.
async fn load(args: &Args, pairs: &[Pair], wake_ups: &Arc<AtomicU64>) -> anyhow::Result<Phase> {
    let sender = Arc::new(Sender::new(&args.server)?);
    let histogram = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3)?));
    let (accepted, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(args.max_in_flight));
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let wake_ups_before = wake_ups.load(Ordering::Relaxed);
    let started = Instant::now();
    let nonce: u64 = rand::random();
    for i in 0..args.rate * args.duration {
        tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
        let pair = &pairs[(i as usize) % pairs.len()];
        let body =
            format!(r#"{{"client_message_id":"p{nonce}-{i}","epoch":1,"ciphertext":"{}"}}"#, bytes::encode(&[7; 256]));
        let (sender, path, authorization) = (sender.clone(), pair.messages_path.clone(), pair.authorization.clone());
        let (accepted, errors, histogram) = (accepted.clone(), errors.clone(), histogram.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            match sender.post(&path, &authorization, body.into()).await {
                Ok(status) if status.is_success() => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let _ = lock(&histogram).record(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        });
    }
    let _ = in_flight.acquire_many(u32::try_from(args.max_in_flight).unwrap_or(u32::MAX)).await;
    let load_secs = started.elapsed().as_secs_f64();
    // Wake-ups still on their way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let histogram = lock(&histogram);
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1e6;
    Ok(Phase {
        accepted_per_s: accepted.load(Ordering::Relaxed) as f64 / load_secs,
        errors: errors.load(Ordering::Relaxed),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        wake_ups: wake_ups.load(Ordering::Relaxed) - wake_ups_before,
        load_secs,
    })
}

/// The push service: accepts every push with 201 and counts them. Returns its base URL.
async fn start_push_service() -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let count = Arc::new(AtomicU64::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let counted = counted.clone();
                    async move {
                        let _ = request.into_body().collect().await;
                        counted.fetch_add(1, Ordering::Relaxed);
                        let mut response = Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = StatusCode::CREATED;
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok((base, count))
}

/// Subscribes every receiver at the push service `sink` (one endpoint each; the service decrypts
/// nothing, so one valid P-256 point serves as every receiver's key), or unsubscribes them.
async fn subscribe_all(server: &str, pairs: &[Pair], sink: Option<&str>) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let url = format!("{server}/v1/push/subscription");
    for (n, pair) in pairs.iter().enumerate() {
        let request = match sink {
            Some(sink) => http.put(&url).json(&json!({"endpoint": format!("{sink}/push/{n}"),
                "keys": {"p256dh": bytes::encode(&P256_GENERATOR), "auth": bytes::encode(&[n as u8; 16])}})),
            None => http.delete(&url),
        };
        let response = request.bearer_auth(&pair.receiver_token).send().await?;
        if !response.status().is_success() {
            bail!("subscribing a receiver: {} {}", response.status(), response.text().await.unwrap_or_default());
        }
    }
    Ok(())
}

/// Has every receiver sync (one entry a page) every `every` while `on` holds.
fn start_syncing(
    server: &str,
    pairs: &[Pair],
    every: Duration,
    on: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let http = reqwest::Client::new();
    pairs
        .iter()
        .map(|pair| {
            let (http, url, token, on) =
                (http.clone(), format!("{server}/v1/sync?limit=1"), pair.receiver_token.clone(), on.clone());
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                while on.load(Ordering::Relaxed) {
                    ticks.tick().await;
                    let _ = http.get(&url).bearer_auth(&token).send().await;
                }
            })
        })
        .collect()
}

/// The P-256 generator, uncompressed: a valid public key.
const P256_GENERATOR: [u8; 65] = [
    0x04, 0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40, 0xf2, 0x77, 0x03,
    0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96, 0x4f, 0xe3, 0x42, 0xe2, 0xfe,
    0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e, 0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce,
    0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51, 0xf5,
];
