//! The server configuration: one typed struct. Defaults, then a TOML file, then `ROOST_*`
//! environment variables (plus the conventional `DATABASE_URL`), then command-line flags.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::http::forwarded::{ForwardedHeader, ProxyRange};

/// Who may register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationPolicy {
    /// Anyone may register, rate-limited per source address.
    Open,
    /// Registration needs a single-use invite code from `roostd admin invite`.
    InviteOnly,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything `roostd` can be told.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP and WebSocket listener binds.
    pub listen: SocketAddr,
    /// The name clients sign into their authentication responses; set it to the public host
    /// name so a signature made for one server is useless at another.
    pub server_name: String,
    /// Directory of the embedded database and (unless configured elsewhere) of attachments.
    pub data_dir: PathBuf,
    /// The database: a `sqlite:` URL overriding the file under `data_dir`, or a `postgres://`
    /// URL for PostgreSQL (which several instances can share).
    pub database_url: Option<String>,
    /// Redis (`redis://...`), with a PostgreSQL `database_url`: the instances sharing that
    /// database carry live events to each other through it.
    pub redis_url: Option<String>,
    /// Reverse proxies (addresses or networks) whose `X-Forwarded-For` is believed, so that
    /// per-address limits see the client's address rather than the proxy's.
    pub trusted_proxies: Vec<ProxyRange>,
    /// The header those proxies write the client's address into: `x_forwarded_for` or
    /// `forwarded` (RFC 7239).
    pub forwarded_header: ForwardedHeader,
    /// Who may register.
    pub registration: RegistrationPolicy,
    /// Log format.
    pub log_format: LogFormat,
    /// Size and count limits.
    pub limits: Limits,
    /// Request rate limits.
    pub rate_limits: RateLimits,
    /// How long conversation entries may be kept.
    pub retention: RetentionConfig,
    /// The WebSocket gateway.
    pub gateway: GatewayConfig,
    /// The connection pool on PostgreSQL (unused on SQLite).
    pub postgres: PostgresConfig,
    /// Connection timeouts and the connection cap of the listener.
    pub http: HttpConfig,
    /// TLS on the listener, from certificate and key files.
    pub tls: TlsConfig,
    /// Which web pages on other origins may call the API.
    pub cors: CorsConfig,
    /// A web app roostd serves itself, on its own origin.
    pub web: WebConfig,
    /// Encrypted files: sizes, the daily quota and where the bytes live.
    pub attachments: AttachmentsConfig,
    /// Push notifications (Web Push wake-ups for devices without a socket).
    pub push: PushConfig,
}

/// Web Push (RFC 8030, 8291, 8292): wake-ups for devices that hold no socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Whether devices may subscribe and are woken.
    pub enabled: bool,
    /// The contact the push services see in the VAPID token (`mailto:` or `https:`); default
    /// `https://<server_name>`.
    pub contact: Option<String>,
    /// Push-service hosts endpoints may name (a listed host and its subdomains, such as
    /// `fcm.googleapis.com`, `push.services.mozilla.com`); empty: any public host.
    pub allowed_hosts: Vec<String>,
    /// Whether endpoints may be plain `http://` on a loopback address (tests, a push service
    /// on the same host); never for other addresses.
    pub allow_http_loopback: bool,
    /// Whether endpoints may resolve to private, loopback or link-local addresses (a push
    /// service inside the operator's network).
    pub allow_private_addresses: bool,
    /// How long the push service keeps an undelivered wake-up (the `TTL` header), in seconds.
    pub ttl_secs: u64,
    /// How long one request to a push service may take, in seconds.
    pub timeout_secs: u64,
    /// Tries per wake-up when the push service answers 429 or 5xx (or cannot be reached).
    pub max_attempts: u32,
    /// Wake-ups waiting or in flight, at most; beyond that they are dropped (messages never are).
    pub queue: usize,
    /// Requests to push services in flight at once, at most.
    pub concurrency: usize,
    /// A woken device is not woken again until it connects or syncs, or this many seconds pass.
    pub rewake_secs: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            contact: None,
            allowed_hosts: Vec::new(),
            allow_http_loopback: false,
            allow_private_addresses: false,
            ttl_secs: 24 * 3600,
            timeout_secs: 10,
            max_attempts: 4,
            queue: 10_000,
            concurrency: 32,
            rewake_secs: 300,
        }
    }
}

impl PushConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout_secs == 0 || self.max_attempts == 0 || self.queue == 0 || self.concurrency == 0 {
            return Err(ConfigError(
                "push.timeout_secs, max_attempts, queue and concurrency must be at least 1".into(),
            ));
        }
        if let Some(contact) = &self.contact
            && !(contact.starts_with("mailto:") || contact.starts_with("https://"))
        {
            return Err(ConfigError("push.contact must be a mailto: or https: URI".into()));
        }
        if self.allowed_hosts.iter().any(|host| host.is_empty() || host.contains(['/', ':', ' '])) {
            return Err(ConfigError("push.allowed_hosts holds host names only (no scheme, port or path)".into()));
        }
        Ok(())
    }
}

/// Attachments: encrypted files members upload for a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttachmentsConfig {
    /// Largest attachment (its ciphertext) in bytes.
    pub max_bytes: u64,
    /// Bytes one user may announce for upload per UTC day, across all their devices.
    pub daily_bytes_per_user: u64,
    /// Seconds an upload may stay incomplete before it is deleted.
    pub upload_expiry_secs: u64,
    /// Bytes per stored chunk: an upload resumes at a chunk boundary, and each upload in
    /// progress holds up to two chunks in memory (counted in `http.max_body_memory_bytes`).
    pub chunk_bytes: u64,
    /// The directory of attachment files (default: `attachments` under `data_dir`); unused
    /// with `s3`.
    pub dir: Option<PathBuf>,
    /// An S3-compatible object store instead of the directory (what several instances share).
    pub s3: Option<S3Config>,
}

impl Default for AttachmentsConfig {
    fn default() -> Self {
        Self {
            max_bytes: 100 * 1024 * 1024,
            daily_bytes_per_user: 2 * 1024 * 1024 * 1024,
            upload_expiry_secs: 24 * 3600,
            chunk_bytes: 8 * 1024 * 1024,
            dir: None,
            s3: None,
        }
    }
}

/// An S3-compatible bucket.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// The service's URL (`https://s3.eu-central-1.amazonaws.com`, `http://127.0.0.1:9000`);
    /// unset: Amazon S3 in `region`.
    pub endpoint: Option<String>,
    /// The bucket (it must exist).
    pub bucket: String,
    /// The region.
    pub region: String,
    /// A prefix for every object name (such as `roost/`).
    pub prefix: String,
    /// The access key; unset with the secret: credentials from the environment
    /// (`AWS_ACCESS_KEY_ID`, instance metadata).
    pub access_key_id: Option<String>,
    /// The secret key.
    pub secret_access_key: Option<String>,
    /// Whether an `http://` endpoint is allowed (a store on the same host or network).
    pub allow_http: bool,
    /// Bucket in the host name (`bucket.endpoint`) rather than the path.
    pub virtual_hosted_style: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: None,
            bucket: String::new(),
            region: "us-east-1".to_owned(),
            prefix: String::new(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            virtual_hosted_style: false,
        }
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .finish()
    }
}

impl AttachmentsConfig {
    fn validate(&self, http: &HttpConfig) -> Result<(), ConfigError> {
        if self.max_bytes == 0 || self.chunk_bytes == 0 || self.upload_expiry_secs == 0 {
            return Err(ConfigError(
                "attachments.max_bytes, chunk_bytes and upload_expiry_secs must be at least 1".into(),
            ));
        }
        if self.chunk_bytes < 5 * 1024 * 1024 && self.s3.is_some() {
            tracing::debug!("attachments.chunk_bytes under 5 MiB makes many small objects in S3");
        }
        // An upload holds two chunks: one arriving while the one before is written.
        if usize::try_from(self.chunk_bytes).map_or(true, |chunk| chunk.saturating_mul(2) > http.max_body_memory_bytes)
        {
            return Err(ConfigError("attachments.chunk_bytes twice must fit in http.max_body_memory_bytes".into()));
        }
        if let Some(s3) = &self.s3 {
            if s3.bucket.is_empty() {
                return Err(ConfigError("attachments.s3.bucket must be set".into()));
            }
            if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
                return Err(ConfigError(
                    "attachments.s3.access_key_id and secret_access_key go together: set both or neither".into(),
                ));
            }
            crate::attachments::s3::S3Blobs::new(s3)?;
        }
        Ok(())
    }
}

/// How long a connection may take over each part of a request, and how many may be open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Seconds a connection has to deliver a complete request head (and, with TLS, to finish
    /// its handshake): counted from when it opens, or on a kept-alive connection from the first
    /// byte of its next request.
    pub header_read_timeout_secs: u64,
    /// Seconds a request body may take to arrive in full; a slower one is answered
    /// `408 request_timeout` and its connection closes.
    pub body_read_timeout_secs: u64,
    /// Seconds a kept-alive connection may wait, silent, for its next request.
    pub idle_timeout_secs: u64,
    /// Seconds a response may wait for the client to take any of its bytes; a client that
    /// stops reading has its connection closed.
    pub write_timeout_secs: u64,
    /// Connections (HTTP and WebSocket) open at once; the next one is answered
    /// `503 too_many_connections` and closed. 0: the process's file-descriptor limit less a
    /// reserve for the database, Redis and files.
    pub max_connections: u32,
    /// Bytes of request bodies held in memory at once, across all connections; a body that
    /// would go over is answered `503 unavailable` with Retry-After. At least the largest body
    /// a route takes.
    pub max_body_memory_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            idle_timeout_secs: 60,
            write_timeout_secs: 30,
            max_connections: 0,
            max_body_memory_bytes: 256 * 1024 * 1024,
        }
    }
}

/// A web app served by roostd from a directory of built files, at every path the API does not
/// use (`/v1/...`, `/healthz`, `/readyz`, `/metrics`, `/openapi.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// The directory (with its `index.html`); unset: no web app.
    pub dir: Option<PathBuf>,
}

/// Cross-origin access for web apps served from another origin than roostd's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins whose pages may call the API, as a browser sends them (`https://chat.example.com`,
    /// with a port if not the scheme's default), or `"*"` for any. Empty (the default): none.
    pub allowed_origins: Vec<String>,
}

impl CorsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for origin in &self.allowed_origins {
            if origin != "*" && !is_origin(origin) {
                return Err(ConfigError(format!(
                    "cors.allowed_origins: {origin:?} is not an origin such as \"https://chat.example.com\" \
                     (scheme, host and optional port; no path or trailing slash) or \"*\""
                )));
            }
        }
        Ok(())
    }
}

/// Whether `text` is an origin a browser would send: `http(s)://host[:port]` and nothing more.
fn is_origin(text: &str) -> bool {
    let Ok(uri) = text.parse::<axum::http::Uri>() else { return false };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else { return false };
    matches!(scheme, "http" | "https")
        && !authority.as_str().contains('@')
        && text == format!("{scheme}://{authority}")
        && text == text.to_ascii_lowercase()
}

/// TLS from PEM files; both paths or neither. The files are read again, without a restart,
/// when they change or on SIGHUP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert_path: Option<PathBuf>,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: Option<PathBuf>,
}

/// How roostd uses PostgreSQL's connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Most connections the request pool opens (the group commit holds one more of its own).
    pub max_connections: u32,
    /// Seconds a request waits for a connection before it is answered `503 unavailable`.
    pub acquire_timeout_secs: u64,
    /// Seconds a statement may run before PostgreSQL cancels it (0: the server's setting).
    pub statement_timeout_secs: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self { max_connections: 16, acquire_timeout_secs: 5, statement_timeout_secs: 60 }
    }
}

impl PostgresConfig {
    /// The pool settings of the PostgreSQL store.
    pub fn pool_settings(&self) -> roost_store_postgres::PoolSettings {
        roost_store_postgres::PoolSettings {
            max_connections: self.max_connections,
            acquire_timeout: std::time::Duration::from_secs(self.acquire_timeout_secs),
            statement_timeout: (self.statement_timeout_secs > 0)
                .then(|| std::time::Duration::from_secs(self.statement_timeout_secs)),
        }
    }
}

/// WebSocket gateway settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Seconds a new socket has to send its `auth` frame.
    pub auth_timeout_secs: u64,
    /// Seconds between pings to each connected device.
    pub heartbeat_interval_secs: u64,
    /// Seconds without any frame (pongs included) after which a connection is closed.
    pub idle_timeout_secs: u64,
    /// Connections one user may hold at once (one per device).
    pub max_connections_per_user: u32,
    /// Events buffered for one connection before it is cut off as a slow consumer.
    pub outgoing_buffer: usize,
    /// Seconds one frame may take to be written before the connection is dropped.
    pub send_timeout_secs: u64,
    /// Largest frame a client may send, in bytes.
    pub max_client_frame_bytes: usize,
    /// `send` frames of one connection waiting for their commit, at most; one more is refused
    /// with `rate_limited` (each holds its ciphertext until it is committed).
    pub max_sends_in_flight: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            auth_timeout_secs: 10,
            heartbeat_interval_secs: 30,
            idle_timeout_secs: 75,
            max_connections_per_user: 5,
            outgoing_buffer: 256,
            send_timeout_secs: 10,
            max_client_frame_bytes: 64 * 1024,
            max_sends_in_flight: 256,
        }
    }
}

/// Size, count and lifetime limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body of a route that carries no MLS message, in bytes; the routes that
    /// carry messages take what [`Limits::message_body_bytes`] and
    /// [`Limits::handshake_body_bytes`] say.
    pub max_body_bytes: usize,
    /// Active devices a user may have.
    pub max_devices_per_user: u32,
    /// One-time KeyPackages a device may have stored.
    pub max_one_time_key_packages: u32,
    /// Largest single KeyPackage, in bytes.
    pub max_key_package_bytes: usize,
    /// Most devices and users one key claim may name.
    pub max_claim_targets: usize,
    /// How long a session token lives, in seconds.
    pub session_ttl_secs: u64,
    /// How long a link request waits for approval, in seconds.
    pub link_ttl_secs: u64,
    /// Allowed clock skew of signed handle requests, in seconds.
    pub signed_request_skew_secs: u64,
    /// Largest application message ciphertext (and device-to-device payload), in bytes.
    pub max_message_bytes: usize,
    /// Largest MLS commit, Welcome or GroupInfo, in bytes.
    pub max_handshake_bytes: usize,
    /// Most users in a group conversation.
    pub max_group_users: u32,
    /// A device gets a `keys_low` queue entry when its one-time KeyPackages fall below this.
    pub key_packages_low_threshold: u32,
    /// Largest page of sync, history or conversation list.
    pub max_page_size: u32,
}

/// Retention bounds set by the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// The most any entry is kept, in seconds, whatever its conversation's policy (0 = no
    /// bound). Also bounds queue entries and send idempotency records.
    pub max_age_secs: u64,
    /// Whether members may choose `permanent`; only effective when `max_age_secs` is 0.
    pub allow_permanent: bool,
    /// How often the pruning worker runs, in seconds.
    pub prune_interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { max_age_secs: 30 * 24 * 3600, allow_permanent: true, prune_interval_secs: 60 }
    }
}

/// Rate limits, each a number of requests per minute (the burst is the same number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Registrations per source address.
    pub registrations_per_address: u32,
    /// Challenges per source address.
    pub challenges_per_address: u32,
    /// Link requests (start and look-up) per source address.
    pub links_per_address: u32,
    /// Key claim requests per requesting user.
    pub key_claims_per_requester: u32,
    /// Key claims per requesting user and target user.
    pub key_claims_per_pair: u32,
    /// Sends (messages, ephemeral sends, device-to-device payloads) per device.
    pub sends_per_device: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            server_name: "localhost".to_owned(),
            data_dir: PathBuf::from("./roost-data"),
            database_url: None,
            redis_url: None,
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
            registration: RegistrationPolicy::Open,
            log_format: LogFormat::Text,
            limits: Limits::default(),
            rate_limits: RateLimits::default(),
            retention: RetentionConfig::default(),
            gateway: GatewayConfig::default(),
            postgres: PostgresConfig::default(),
            http: HttpConfig::default(),
            tls: TlsConfig::default(),
            cors: CorsConfig::default(),
            web: WebConfig::default(),
            attachments: AttachmentsConfig::default(),
            push: PushConfig::default(),
        }
    }
}

impl Limits {
    /// The largest body of a route that sends an application message (to a conversation or to
    /// devices): the ciphertext in base64, which grows bytes by 4/3, with room for the JSON
    /// around it.
    pub fn message_body_bytes(&self) -> usize {
        self.max_body_bytes.max(base64_in_json(self.max_message_bytes))
    }

    /// The largest body of a route that carries handshake messages: a commit with its Welcome
    /// and GroupInfo.
    pub fn handshake_body_bytes(&self) -> usize {
        self.max_body_bytes.max(base64_in_json(self.max_handshake_bytes.saturating_mul(3)))
    }

    /// The largest body any route takes.
    pub fn largest_body_bytes(&self) -> usize {
        self.message_body_bytes().max(self.handshake_body_bytes())
    }
}

fn base64_in_json(bytes: usize) -> usize {
    bytes.saturating_mul(4) / 3 + 64 * 1024
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 2 * 1024 * 1024,
            max_devices_per_user: 10,
            max_one_time_key_packages: 200,
            max_key_package_bytes: 16 * 1024,
            max_claim_targets: 100,
            session_ttl_secs: 30 * 24 * 3600,
            link_ttl_secs: 600,
            signed_request_skew_secs: 300,
            max_message_bytes: 1024 * 1024,
            max_handshake_bytes: 4 * 1024 * 1024,
            max_group_users: 1500,
            key_packages_low_threshold: 10,
            max_page_size: 1000,
        }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            registrations_per_address: 10,
            challenges_per_address: 60,
            links_per_address: 30,
            key_claims_per_requester: 120,
            key_claims_per_pair: 20,
            sends_per_device: 6000,
        }
    }
}

/// Settings given as command-line flags; `None` leaves the lower layers in force.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlagOverrides {
    /// `--listen`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--server-name`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// `--data-dir`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--database-url`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// `--registration`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration: Option<RegistrationPolicy>,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub(crate) String);

impl Config {
    /// Loads the configuration: defaults, the TOML `file` (if given; it must exist), the process
    /// environment, then `flags`.
    pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> Result<Self, ConfigError> {
        Self::load_with_env(file, flags, std::env::vars())
    }

    /// [`Config::load`] with an explicit environment, for tests.
    pub fn load_with_env(
        file: Option<&Path>,
        flags: &FlagOverrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!("{} is not a readable file", path.display())));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Figment's Env reads the real process environment; to keep `load_with_env` honest we
        // collect the variables we were handed into a TOML table of our own.
        // Other programs share the ROOST_ prefix (ROOST_LOG, ROOST_CONFIG, the client's
        // ROOST_HOME, the tests' ROOST_TEST_*), so only variables that name a top-level key of
        // this struct are read; below that level unknown keys are errors as in the file.
        // The defaults also give each key's type; optional sections are typed from theirs.
        let typed = Config {
            attachments: AttachmentsConfig { s3: Some(S3Config::default()), ..AttachmentsConfig::default() },
            push: PushConfig { contact: Some(String::new()), ..PushConfig::default() },
            ..Config::default()
        };
        let defaults = toml::Table::try_from(typed).unwrap_or_default();
        let mut from_env = toml::Table::new();
        for (key, value) in env {
            let path: Vec<String> = if key == "DATABASE_URL" {
                vec!["database_url".to_owned()]
            } else if key == "REDIS_URL" {
                vec!["redis_url".to_owned()]
            } else if let Some(rest) = key.strip_prefix("ROOST_") {
                rest.split("__").map(str::to_ascii_lowercase).collect()
            } else {
                continue;
            };
            let known = path
                .first()
                .is_some_and(|top| top == "database_url" || top == "redis_url" || defaults.contains_key(top));
            if known {
                insert_env_value(&mut from_env, &defaults, &path, &value);
            }
        }
        figment = figment.merge(Serialized::defaults(from_env)).merge(Serialized::defaults(flags));
        let config: Config = figment.extract().map_err(|err| {
            // figment's own message names its internal source; name the key instead.
            let key = err.path.join(".");
            ConfigError(if key.is_empty() { err.kind.to_string() } else { format!("{key}: {}", err.kind) })
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.server_name.trim().is_empty() {
            return Err(ConfigError("server_name must not be empty".into()));
        }
        let rates = &self.rate_limits;
        let all = [
            rates.registrations_per_address,
            rates.challenges_per_address,
            rates.links_per_address,
            rates.key_claims_per_requester,
            rates.key_claims_per_pair,
            rates.sends_per_device,
        ];
        if all.contains(&0) {
            return Err(ConfigError("rate limits must be at least 1 per minute".into()));
        }
        if self.retention.prune_interval_secs == 0 || self.limits.max_page_size == 0 {
            return Err(ConfigError(
                "retention.prune_interval_secs and limits.max_page_size must be at least 1".into(),
            ));
        }
        let gateway = &self.gateway;
        if gateway.heartbeat_interval_secs == 0 || gateway.idle_timeout_secs <= gateway.heartbeat_interval_secs {
            return Err(ConfigError(
                "gateway.idle_timeout_secs must exceed heartbeat_interval_secs (at least 1)".into(),
            ));
        }
        if gateway.auth_timeout_secs == 0
            || gateway.send_timeout_secs == 0
            || gateway.outgoing_buffer == 0
            || gateway.max_sends_in_flight == 0
        {
            return Err(ConfigError(
                "gateway timeouts, outgoing_buffer and max_sends_in_flight must be at least 1".into(),
            ));
        }
        if self.limits.max_devices_per_user == 0 || self.limits.max_claim_targets == 0 {
            return Err(ConfigError("device and claim limits must be at least 1".into()));
        }
        if self.postgres.max_connections < 2 || self.postgres.acquire_timeout_secs == 0 {
            return Err(ConfigError(
                "postgres.max_connections must be at least 2 and postgres.acquire_timeout_secs at least 1".into(),
            ));
        }
        let http = &self.http;
        let timeouts = [
            http.header_read_timeout_secs,
            http.body_read_timeout_secs,
            http.idle_timeout_secs,
            http.write_timeout_secs,
        ];
        if timeouts.contains(&0) {
            return Err(ConfigError("http timeouts must be at least 1 second".into()));
        }
        if http.max_body_memory_bytes < self.limits.largest_body_bytes()
            || http.max_body_memory_bytes > tokio::sync::Semaphore::MAX_PERMITS
        {
            return Err(ConfigError(format!(
                "http.max_body_memory_bytes must hold the largest body a route takes ({} bytes with these limits)",
                self.limits.largest_body_bytes()
            )));
        }
        self.cors.validate()?;
        self.attachments.validate(&self.http)?;
        self.push.validate()?;
        if let Some(dir) = &self.web.dir
            && !dir.join("index.html").is_file()
        {
            return Err(ConfigError(format!("web.dir: {} holds no index.html", dir.display())));
        }
        if self.tls.cert_path.is_some() != self.tls.key_path.is_some() {
            return Err(ConfigError("tls.cert_path and tls.key_path go together: set both or neither".into()));
        }
        if let Some(redis) = &self.redis_url {
            let on_postgres =
                self.database_url.as_deref().and_then(DatabaseBackend::of) == Some(DatabaseBackend::Postgres);
            if !on_postgres {
                return Err(ConfigError(
                    "redis_url needs a postgres:// database_url: instances cooperate over a shared PostgreSQL \
                     database, and the SQLite store serves one instance"
                        .into(),
                ));
            }
            if !(redis.starts_with("redis://") || redis.starts_with("rediss://")) {
                return Err(ConfigError(format!("redis_url {:?} is not a redis:// URL", redact_url(redis))));
            }
        }
        if let DatabaseLocation::Url(url) = self.database_location()
            && DatabaseBackend::of(&url).is_none()
        {
            return Err(ConfigError(format!(
                "database_url {:?} names no backend roostd has: use sqlite:// or postgres://",
                redact_url(&url)
            )));
        }
        Ok(())
    }

    /// The database location: `database_url`, or `roost.db` under `data_dir`.
    pub fn database_location(&self) -> DatabaseLocation {
        match &self.database_url {
            Some(url) => DatabaseLocation::Url(url.clone()),
            None => DatabaseLocation::SqliteFile(self.data_dir.join("roost.db")),
        }
    }

    /// A copy with passwords in URLs replaced by `***`, fit to print or log.
    pub fn redacted(&self) -> Self {
        Self {
            database_url: self.database_url.as_deref().map(redact_url),
            redis_url: self.redis_url.as_deref().map(redact_url),
            attachments: AttachmentsConfig {
                s3: self.attachments.s3.clone().map(|s3| S3Config {
                    secret_access_key: s3.secret_access_key.map(|_| "<redacted>".to_owned()),
                    ..s3
                }),
                ..self.attachments.clone()
            },
            ..self.clone()
        }
    }

    /// The effective configuration as TOML, secrets redacted (what `roostd config` prints).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(&self.redacted()).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.redacted();
        f.debug_struct("Config")
            .field("listen", &shown.listen)
            .field("server_name", &shown.server_name)
            .field("data_dir", &shown.data_dir)
            .field("database_url", &shown.database_url)
            .field("redis_url", &shown.redis_url)
            .field("trusted_proxies", &shown.trusted_proxies)
            .field("forwarded_header", &shown.forwarded_header)
            .field("registration", &shown.registration)
            .field("limits", &shown.limits)
            .field("rate_limits", &shown.rate_limits)
            .field("retention", &shown.retention)
            .field("gateway", &shown.gateway)
            .field("postgres", &shown.postgres)
            .field("http", &shown.http)
            .field("tls", &shown.tls)
            .field("cors", &shown.cors)
            .field("web", &shown.web)
            .field("attachments", &shown.attachments)
            .field("push", &shown.push)
            .finish_non_exhaustive()
    }
}

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// The embedded default: a SQLite file.
    SqliteFile(PathBuf),
    /// An explicit database URL.
    Url(String),
}

/// The backends a database URL can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseBackend {
    /// `sqlite:` URLs.
    Sqlite,
    /// `postgres://` and `postgresql://` URLs.
    Postgres,
}

impl DatabaseBackend {
    /// The backend a URL names by its scheme, if roostd has it.
    pub fn of(url: &str) -> Option<Self> {
        let scheme = url.split_once(':').map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("sqlite") => Some(Self::Sqlite),
            Some("postgres" | "postgresql") => Some(Self::Postgres),
            _ => None,
        }
    }
}

/// Puts an environment value at a dotted path, typed like the default at that path (numbers and
/// booleans where the default is one; text otherwise, and wherever parsing fails, so the type
/// error names the key).
fn insert_env_value(table: &mut toml::Table, defaults: &toml::Table, path: &[String], raw: &str) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = table;
    let mut default = Some(defaults);
    for part in parents {
        default = default.and_then(|d| d.get(part)).and_then(toml::Value::as_table);
        let entry = current.entry(part.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(next) = entry else {
            return;
        };
        current = next;
    }
    let text = || toml::Value::String(raw.to_owned());
    let value = match default.and_then(|d| d.get(last)) {
        Some(toml::Value::Integer(_)) => raw.parse().map(toml::Value::Integer).unwrap_or_else(|_| text()),
        Some(toml::Value::Boolean(_)) => raw.parse().map(toml::Value::Boolean).unwrap_or_else(|_| text()),
        // Lists are comma-separated.
        Some(toml::Value::Array(_)) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| toml::Value::String(item.to_owned()))
                .collect(),
        ),
        _ => text(),
    };
    current.insert(last.clone(), value);
}

/// `url` with the password of its user information, if any, replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_need_no_configuration() {
        let config = Config::load_with_env(None, &FlagOverrides::default(), env(&[])).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database_location(), DatabaseLocation::SqliteFile(PathBuf::from("./roost-data/roost.db")));
        assert_eq!(config.registration, RegistrationPolicy::Open);
    }

    #[test]
    fn flags_beat_environment_beats_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("roost.toml");
        std::fs::write(
            &file,
            "server_name = \"file.example\"\nlisten = \"127.0.0.1:9000\"\n[limits]\nmax_devices_per_user = 3\n",
        )
        .unwrap();
        let flags = FlagOverrides { listen: Some("127.0.0.1:9100".parse().unwrap()), ..Default::default() };
        let vars = env(&[
            ("ROOST_SERVER_NAME", "2024"),
            ("ROOST_LISTEN", "127.0.0.1:9050"),
            ("ROOST_LIMITS__MAX_ONE_TIME_KEY_PACKAGES", "50"),
            ("DATABASE_URL", "sqlite://elsewhere/roost.db"),
            ("UNRELATED", "x"),
            ("ROOST_LOG", "debug"),
            ("ROOST_TEST_DATABASE_URL", "postgres://elsewhere"),
        ]);
        let config = Config::load_with_env(Some(&file), &flags, vars).unwrap();
        assert_eq!(config.server_name, "2024", "typed like the default: text");
        assert_eq!(config.listen.to_string(), "127.0.0.1:9100");
        assert_eq!(config.limits.max_devices_per_user, 3);
        assert_eq!(config.limits.max_one_time_key_packages, 50);
        assert_eq!(config.database_url.as_deref(), Some("sqlite://elsewhere/roost.db"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("roost.toml");
        std::fs::write(&file, "lisen = \"127.0.0.1:9000\"\n").unwrap();
        assert!(Config::load_with_env(Some(&file), &FlagOverrides::default(), env(&[])).is_err());
        let vars = env(&[("ROOST_RATE_LIMITS__CHALLENGES_PER_ADDRESS", "0")]);
        assert!(Config::load_with_env(None, &FlagOverrides::default(), vars).is_err());
        let vars = env(&[("ROOST_LIMITS__MAX_DEVICES_PER_USR", "3")]);
        assert!(Config::load_with_env(None, &FlagOverrides::default(), vars).is_err());
        let vars = env(&[("ROOST_GATEWAY__MAX_SENDS_IN_FLIGHT", "0")]);
        assert!(Config::load_with_env(None, &FlagOverrides::default(), vars).is_err());
        assert!(
            Config::load_with_env(Some(&dir.path().join("missing.toml")), &FlagOverrides::default(), env(&[])).is_err()
        );
    }

    #[test]
    fn trusted_proxies_come_as_a_list_from_the_file_or_comma_separated_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("roost.toml");
        std::fs::write(&file, "trusted_proxies = [\"10.0.0.0/8\", \"192.0.2.5\"]\n").unwrap();
        let from_file = Config::load_with_env(Some(&file), &FlagOverrides::default(), env(&[])).unwrap();
        let vars = env(&[("ROOST_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.5")]);
        let from_env = Config::load_with_env(None, &FlagOverrides::default(), vars).unwrap();
        assert_eq!(from_file.trusted_proxies.len(), 2);
        assert_eq!(from_file.trusted_proxies, from_env.trusted_proxies);
        let vars = env(&[("ROOST_TRUSTED_PROXIES", "10.0.0.0/8,proxy.internal")]);
        let err = Config::load_with_env(None, &FlagOverrides::default(), vars).unwrap_err().to_string();
        assert!(err.contains("trusted_proxies") && err.contains("proxy.internal"), "{err}");
    }

    #[test]
    fn cors_origins_are_origins_a_browser_sends() {
        let vars = env(&[("ROOST_CORS__ALLOWED_ORIGINS", "https://chat.example.com, http://127.0.0.1:5173")]);
        let config = Config::load_with_env(None, &FlagOverrides::default(), vars).unwrap();
        assert_eq!(config.cors.allowed_origins, ["https://chat.example.com", "http://127.0.0.1:5173"]);
        for wrong in
            ["https://chat.example.com/", "chat.example.com", "ftp://chat.example.com", "https://Chat.example.com"]
        {
            let vars = env(&[("ROOST_CORS__ALLOWED_ORIGINS", wrong)]);
            let err = Config::load_with_env(None, &FlagOverrides::default(), vars).unwrap_err().to_string();
            assert!(err.contains("cors.allowed_origins"), "{wrong}: {err}");
        }
        let vars = env(&[("ROOST_CORS__ALLOWED_ORIGINS", "*")]);
        assert!(Config::load_with_env(None, &FlagOverrides::default(), vars).is_ok());
    }

    #[test]
    fn the_example_config_documents_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../roostd.example.toml");
        let loaded = Config::load_with_env(Some(&path), &FlagOverrides::default(), env(&[])).unwrap();
        assert_eq!(loaded, Config::default());
    }

    #[test]
    fn database_urls_select_a_backend_by_scheme() {
        assert_eq!(DatabaseBackend::of("sqlite://roost-data/roost.db"), Some(DatabaseBackend::Sqlite));
        assert_eq!(DatabaseBackend::of("postgres://roost@db/roost"), Some(DatabaseBackend::Postgres));
        assert_eq!(DatabaseBackend::of("PostgreSQL://roost@db/roost"), Some(DatabaseBackend::Postgres));
        assert_eq!(DatabaseBackend::of("mysql://db/roost"), None);
        let vars = env(&[("DATABASE_URL", "mysql://root:pw@db/roost")]);
        let err = Config::load_with_env(None, &FlagOverrides::default(), vars).unwrap_err().to_string();
        assert!(err.contains("mysql://root:***@db/roost") && !err.contains("pw@"), "{err}");
    }

    #[test]
    fn secrets_are_redacted() {
        let config = Config {
            database_url: Some("postgres://roost:hunter2@db/roost".into()),
            redis_url: Some("redis://:swordfish@cache:6379".into()),
            ..Config::default()
        };
        let printed = config.to_redacted_toml();
        assert!(printed.contains("postgres://roost:***@db/roost"), "{printed}");
        assert!(printed.contains("redis://:***@cache:6379"), "{printed}");
        assert!(!printed.contains("hunter2") && !printed.contains("swordfish"));
        assert!(!format!("{config:?}").contains("hunter2") && !format!("{config:?}").contains("swordfish"));

        let vars = env(&[
            ("ROOST_ATTACHMENTS__S3__BUCKET", "files"),
            ("ROOST_ATTACHMENTS__S3__ENDPOINT", "http://127.0.0.1:9000"),
            ("ROOST_ATTACHMENTS__S3__ALLOW_HTTP", "true"),
            ("ROOST_ATTACHMENTS__S3__ACCESS_KEY_ID", "roost"),
            ("ROOST_ATTACHMENTS__S3__SECRET_ACCESS_KEY", "opensesame"),
        ]);
        let config = Config::load_with_env(None, &FlagOverrides::default(), vars).unwrap();
        assert_eq!(config.attachments.s3.as_ref().map(|s3| s3.bucket.as_str()), Some("files"));
        assert!(!config.to_redacted_toml().contains("opensesame") && !format!("{config:?}").contains("opensesame"));
    }

    #[test]
    fn attachment_settings_are_checked() {
        for (vars, expected) in [
            (vec![("ROOST_ATTACHMENTS__S3__REGION", "eu-west-1")], "bucket"),
            (
                vec![("ROOST_ATTACHMENTS__S3__BUCKET", "b"), ("ROOST_ATTACHMENTS__S3__ACCESS_KEY_ID", "k")],
                "go together",
            ),
            (vec![("ROOST_ATTACHMENTS__CHUNK_BYTES", "0")], "at least 1"),
            (vec![("ROOST_ATTACHMENTS__CHUNK_BYTES", "1073741824")], "max_body_memory_bytes"),
        ] {
            let err = Config::load_with_env(None, &FlagOverrides::default(), env(&vars)).unwrap_err().to_string();
            assert!(err.contains(expected), "{vars:?}: {err}");
        }
    }

    #[test]
    fn redis_goes_with_postgres_only() {
        let sqlite = env(&[("REDIS_URL", "redis://127.0.0.1:6379")]);
        let err = Config::load_with_env(None, &FlagOverrides::default(), sqlite).unwrap_err().to_string();
        assert!(err.contains("needs a postgres://"), "{err}");
        let both = env(&[("DATABASE_URL", "postgres://db/roost"), ("REDIS_URL", "redis://127.0.0.1:6379")]);
        let config = Config::load_with_env(None, &FlagOverrides::default(), both).unwrap();
        assert_eq!(config.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
        let odd = env(&[("DATABASE_URL", "postgres://db/roost"), ("ROOST_REDIS_URL", "http://cache")]);
        assert!(Config::load_with_env(None, &FlagOverrides::default(), odd).is_err());
    }
}
