//! Attachments: a large upload and download through roostd over HTTP, each as a share of this
//! disk's raw sequential write and read speed measured in the same run, with the server's
//! resident memory sampled throughout.
//!
//! The raw speeds: a file of the same size written in 1 MiB blocks and synced, then read back
//! after its pages were dropped from the page cache (`posix_fadvise(DONTNEED)`). The download
//! reads the server's file the same way when `--server-data-dir` names the server's data
//! directory (its attachment files are dropped from the cache first); without it, the download
//! may be served from memory.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use roost_proto::{ConversationId, bytes};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::Summary;
use crate::connections::resident_bytes;

/// Bytes written or read per block.
const BLOCK: usize = 1024 * 1024;

#[derive(clap::Args)]
pub struct Args {
    /// Base URL of the running server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Process id of the server, to sample its memory.
    #[arg(long)]
    pub server_pid: u32,
    /// The file's size in MiB.
    #[arg(long, default_value_t = 100)]
    pub size_mib: usize,
    /// A directory on the disk the server stores attachments on, for the raw speed.
    #[arg(long, default_value = ".")]
    pub scratch_dir: PathBuf,
    /// The server's data directory: its attachment files are dropped from the page cache before
    /// the download, so the download reads the disk as the raw read does.
    #[arg(long)]
    pub server_data_dir: Option<PathBuf>,
}

/// What the attachments mode measured.
pub struct Report {
    bytes: u64,
    raw_write: f64,
    raw_read: f64,
    upload: f64,
    download: f64,
    rss_before: u64,
    rss_peak_upload: u64,
    rss_peak_download: u64,
    cache_dropped: bool,
}

fn mib_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64().max(1e-9)
}

impl Summary for Report {
    fn summary(&self) -> String {
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        format!(
            "attachments: {:.0} MiB; upload {:.0} MiB/s = {:.2} of raw write {:.0} MiB/s; download {:.0} MiB/s = {:.2} \
             of raw read {:.0} MiB/s{}; server RSS {:.1} MiB before, peak {:.1} MiB uploading, {:.1} MiB downloading",
            mib(self.bytes),
            self.upload,
            self.upload / self.raw_write,
            self.raw_write,
            self.download,
            self.download / self.raw_read,
            self.raw_read,
            if self.cache_dropped { "" } else { " (server's file possibly cached)" },
            mib(self.rss_before),
            mib(self.rss_peak_upload),
            mib(self.rss_peak_download),
        )
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "mode": "attachments",
            "bytes": self.bytes,
            "raw_write_mib_s": self.raw_write,
            "raw_read_mib_s": self.raw_read,
            "upload_mib_s": self.upload,
            "download_mib_s": self.download,
            "upload_share_of_raw": self.upload / self.raw_write,
            "download_share_of_raw": self.download / self.raw_read,
            "rss_before": self.rss_before,
            "rss_peak_upload": self.rss_peak_upload,
            "rss_peak_download": self.rss_peak_download,
            "server_cache_dropped": self.cache_dropped,
        })
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    crate::print(&measure(&args).await?);
    Ok(())
}

pub async fn measure(args: &Args) -> anyhow::Result<Report> {
    let size = args.size_mib * BLOCK;
    let (raw_write, raw_read) = raw_speeds(&args.scratch_dir, size)?;
    let http = reqwest::Client::new();
    let base = args.server.trim_end_matches('/');
    let device = crate::client::register_and_login(&http, base).await?;
    let conversation = ConversationId::from_bytes(rand::random());
    let created = http
        .post(format!("{base}/v1/conversations"))
        .bearer_auth(&device.token)
        .json(&json!({"conversation_id": conversation, "kind": "note_to_self", "epoch": 1,
                      "group_info": bytes::encode(b"bench"), "members": []}))
        .send()
        .await?;
    if !created.status().is_success() {
        bail!("creating a conversation: {}", created.status());
    }

    // The server sees ciphertext only: random bytes are as good as a sealed file.
    let file = ::bytes::Bytes::from((0..size).map(|_| rand::random::<u8>()).collect::<Vec<u8>>());
    let digest = Sha256::digest(&file);
    let announced = http
        .post(format!("{base}/v1/conversations/{conversation}/attachments"))
        .bearer_auth(&device.token)
        .json(&json!({"length": size, "sha256": bytes::encode(&digest)}))
        .send()
        .await?;
    if !announced.status().is_success() {
        bail!("announcing the upload: {} {}", announced.status(), announced.text().await.unwrap_or_default());
    }
    let upload: serde_json::Value = announced.json().await?;
    let id = upload["attachment_id"].as_str().context("attachment id")?.to_owned();

    let rss_before = resident_bytes(args.server_pid)?;
    let sampler = Sampler::start(args.server_pid);
    let started = Instant::now();
    let body = {
        // Slices of one buffer: the load generator copies nothing of its own.
        let file = file.clone();
        futures::stream::iter((0..size.div_ceil(BLOCK)).map(move |block| {
            let start = block * BLOCK;
            Ok::<_, std::io::Error>(file.slice(start..(start + BLOCK).min(file.len())))
        }))
    };
    let sent = http
        .patch(format!("{base}/v1/attachments/{id}"))
        .bearer_auth(&device.token)
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await?;
    let status = sent.status();
    let answer: serde_json::Value = sent.json().await.unwrap_or_default();
    let upload_time = started.elapsed();
    let rss_peak_upload = sampler.stop().await;
    if !status.is_success() || answer["complete"] != true {
        bail!("uploading: {status} {answer}");
    }

    let cache_dropped = match &args.server_data_dir {
        Some(dir) => {
            drop_cached(&dir.join("attachments"))?;
            true
        }
        None => false,
    };
    let sampler = Sampler::start(args.server_pid);
    let started = Instant::now();
    let response = http.get(format!("{base}/v1/attachments/{id}")).bearer_auth(&device.token).send().await?;
    if !response.status().is_success() {
        bail!("downloading: {}", response.status());
    }
    let mut stream = response.bytes_stream();
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        received += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let download_time = started.elapsed();
    let rss_peak_download = sampler.stop().await;
    if received != size as u64 || hasher.finalize() != digest {
        bail!("the download does not match the upload");
    }
    Ok(Report {
        bytes: size as u64,
        raw_write,
        raw_read,
        upload: mib_per_sec(size as u64, upload_time),
        download: mib_per_sec(size as u64, download_time),
        rss_before,
        rss_peak_upload,
        rss_peak_download,
        cache_dropped,
    })
}

/// This disk's sequential write (synced) and read (uncached) speed for `size` bytes, in MiB/s.
fn raw_speeds(dir: &Path, size: usize) -> anyhow::Result<(f64, f64)> {
    let path = dir.join(format!(".roost-bench-raw-{}", std::process::id()));
    let block: Vec<u8> = (0..BLOCK).map(|_| rand::random::<u8>()).collect();
    let started = Instant::now();
    let mut file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    for _ in 0..size / BLOCK {
        file.write_all(&block)?;
    }
    file.sync_all()?;
    let write = mib_per_sec(size as u64, started.elapsed());
    drop(file);
    drop_cached_file(&path)?;
    let started = Instant::now();
    let mut file = std::fs::File::open(&path)?;
    let mut buffer = vec![0u8; BLOCK];
    while file.read(&mut buffer)? > 0 {}
    let read = mib_per_sec(size as u64, started.elapsed());
    std::fs::remove_file(&path)?;
    Ok((write, read))
}

/// Drops every file under `dir` from the page cache.
fn drop_cached(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() { drop_cached(&path)? } else { drop_cached_file(&path)? }
    }
    Ok(())
}

fn drop_cached_file(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(path)?;
    file.sync_all()?;
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
    Ok(())
}

/// Samples a process's resident memory every 10 ms and keeps the peak.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (stopping, highest) = (stop.clone(), peak.clone());
        let task = tokio::spawn(async move {
            while !stopping.load(Ordering::Relaxed) {
                if let Ok(rss) = resident_bytes(pid) {
                    highest.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Self { stop, peak, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}
