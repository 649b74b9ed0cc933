//! TLS on the listener, with certificates generated here: HTTP and WebSocket over it, plain
//! HTTP refused, and a new certificate presented without a restart when the files change and
//! on SIGHUP.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::api::common::TestServer;

const WITHIN: Duration = Duration::from_secs(30);

/// A self-signed certificate for `localhost`, written to `dir` as `cert.pem` and `key.pem`.
fn write_certificate(dir: &Path) -> CertificateDer<'static> {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    std::fs::write(dir.join("cert.pem"), generated.cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), generated.signing_key.serialize_pem()).expect("write key");
    generated.cert.der().clone()
}

/// A client that trusts `trusted`.
fn connector(trusted: &[&CertificateDer<'static>]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        roots.add((*cert).clone()).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn connect(server: &TestServer, connector: &TlsConnector) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(server.base.trim_start_matches("http://")).await?;
    connector.connect(ServerName::try_from("localhost").expect("name"), tcp).await
}

/// The certificate a new handshake is given.
async fn presented(server: &TestServer, connector: &TlsConnector) -> CertificateDer<'static> {
    let stream = connect(server, connector).await.expect("handshake");
    stream.get_ref().1.peer_certificates().expect("certificates")[0].clone().into_owned()
}

/// Waits until new handshakes are given `expected`.
async fn wait_for(server: &TestServer, connector: &TlsConnector, expected: &CertificateDer<'static>) {
    let deadline = Instant::now() + WITHIN;
    while presented(server, connector).await != *expected {
        assert!(Instant::now() < deadline, "the new certificate was never presented");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn http_and_websocket_run_over_tls_and_a_new_certificate_is_taken_without_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let first = write_certificate(dir.path());
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let server = server!(move |config| {
        config.tls.cert_path = Some(cert_path);
        config.tls.key_path = Some(key_path);
    });
    let trusting_first = connector(&[&first]);

    // HTTP over TLS.
    let mut stream = connect(&server, &trusting_first).await.expect("handshake");
    stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.expect("request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("response");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"ok\""), "{response}");

    // WebSocket over TLS: the gateway answers (here, a token it does not know).
    let stream = connect(&server, &trusting_first).await.expect("handshake");
    let (mut socket, _) =
        tokio_tungstenite::client_async("wss://localhost/v1/ws", stream).await.expect("WebSocket upgrade");
    socket.send(Message::text(r#"{"type":"auth","token":"rst_unknown"}"#)).await.expect("auth frame");
    let closed = tokio::time::timeout(WITHIN, async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Close(frame) = message {
                return frame.map(|frame| frame.code);
            }
        }
        None
    })
    .await
    .expect("closed in time");
    assert_eq!(closed, Some(CloseCode::from(roost_proto::socket::close::UNAUTHENTICATED)));

    // Plain HTTP gets no answer from a TLS listener.
    let mut plain = TcpStream::connect(server.base.trim_start_matches("http://")).await.expect("connect");
    plain.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n").await.expect("request");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WITHIN, plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"));

    // The files change: new handshakes get the new certificate; a connection open before
    // keeps working.
    let mut kept = connect(&server, &trusting_first).await.expect("handshake");
    let second = write_certificate(dir.path());
    let trusting_both = connector(&[&first, &second]);
    wait_for(&server, &trusting_both, &second).await;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.expect("request");
    let mut response = Vec::new();
    kept.read_to_end(&mut response).await.expect("response");
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200"));

    // A broken file is not taken: the current certificate stays.
    std::fs::write(dir.path().join("key.pem"), "not a key").expect("write");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(presented(&server, &trusting_both).await, second);

    // SIGHUP: files replaced with their modification times as they were are read again only
    // when asked (they are made aside and moved into place, so the watcher never sees them
    // with other times).
    let stamp = |file: &str| std::fs::metadata(dir.path().join(file)).and_then(|meta| meta.modified()).expect("time");
    let before = [("cert.pem", stamp("cert.pem")), ("key.pem", stamp("key.pem"))];
    let aside = tempfile::tempdir_in(dir.path()).expect("dir");
    let third = write_certificate(aside.path());
    for (file, time) in before {
        std::fs::File::options()
            .write(true)
            .open(aside.path().join(file))
            .and_then(|opened| opened.set_modified(time))
            .expect("set the modification time");
        std::fs::rename(aside.path().join(file), dir.path().join(file)).expect("move into place");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let trusting_all = connector(&[&first, &second, &third]);
    assert_eq!(presented(&server, &trusting_all).await, second, "unchanged times: not reloaded by the watcher");
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::HUP).expect("SIGHUP");
    wait_for(&server, &trusting_all, &third).await;
}
