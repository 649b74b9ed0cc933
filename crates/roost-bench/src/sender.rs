//! The send path of the throughput mode: HTTP/1.1 keep-alive connections driven by hyper
//! directly, reused from a stack, with requests built from parts prepared once. The load
//! generator shares two cores with the server, so every microsecond it spends per request is
//! taken from the server: reqwest parsed the URL, built a header map and went through its pool's
//! bookkeeping for every request.

use std::sync::Mutex;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type Connection = SendRequest<Full<Bytes>>;

/// Posts JSON bodies to one server over as many connections as there are requests in flight.
pub struct Sender {
    /// `host:port` to connect to.
    authority: String,
    host: HeaderValue,
    idle: Mutex<Vec<Connection>>,
}

impl Sender {
    /// A sender for the server at `base` (`http://host:port`).
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let uri: Uri = base.parse().with_context(|| format!("server URL {base:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("the throughput mode sends over plain http, not {base:?}");
        }
        let authority = uri.authority().context("the server URL has no host")?.as_str().to_owned();
        let host = HeaderValue::from_str(&authority)?;
        Ok(Self { authority, host, idle: Mutex::new(Vec::new()) })
    }

    /// POSTs `body` as JSON to `path` with `authorization`; the response's status once its body
    /// has been read (so the connection can be reused).
    pub async fn post(&self, path: &Uri, authorization: &HeaderValue, body: Bytes) -> anyhow::Result<StatusCode> {
        let mut connection = match self.take_idle() {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        let request = Request::builder()
            .method(Method::POST)
            .uri(path.clone())
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, authorization.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))?;
        let response = connection.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(connection);
        }
        Ok(status)
    }

    fn take_idle(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(connection) = idle.pop() {
            if connection.is_ready() {
                return Some(connection);
            }
        }
        None
    }

    async fn connect(&self) -> anyhow::Result<Connection> {
        let stream =
            TcpStream::connect(&self.authority).await.with_context(|| format!("connecting to {}", self.authority))?;
        stream.set_nodelay(true)?;
        let (connection, driver) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = driver.await;
        });
        Ok(connection)
    }
}
