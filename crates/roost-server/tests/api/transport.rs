//! The listener's bounds, driven over raw TCP: slow and silent connections are closed while
//! others are served, connections over the cap are refused with a JSON 503, a slow body gets a
//! 408, a GET that carries a body still gets its whole response, and bodies are held in memory
//! only within the route's limit, for an authenticated caller beyond the small limit, and
//! within the server's budget.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::api::common::TestServer;

/// Generous enough that a loaded machine never trips it; what is checked is that a connection
/// closes at all, and before the slow client is done.
const CLOSE_WITHIN: Duration = Duration::from_secs(20);

fn address(server: &TestServer) -> SocketAddr {
    server.base.trim_start_matches("http://").parse().expect("address")
}

/// Reads until the peer closes; returns what arrived, or `None` if it stays open `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let deadline = Instant::now() + within;
    let mut buffer = [0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(received),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Splits a raw HTTP/1.1 response into its status, headers (lower-cased names) and body.
fn parse_response(raw: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let end = raw.windows(4).position(|window| window == b"\r\n\r\n").expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status =
        lines.next().and_then(|line| line.split(' ').nth(1)).and_then(|code| code.parse().ok()).expect("status");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    (status, headers, raw[end + 4..].to_vec())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

async fn healthy(server: &TestServer) -> bool {
    matches!(server.http.get(server.url("/healthz")).send().await, Ok(response) if response.status() == 200)
}

#[tokio::test]
async fn trickling_silent_and_idle_connections_are_closed_while_others_are_served() {
    let server = server!(|config| {
        config.http.header_read_timeout_secs = 1;
        config.http.idle_timeout_secs = 2;
    });
    let at = address(&server);

    let mut silent = TcpStream::connect(at).await.expect("connect");
    let mut idle = TcpStream::connect(at).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: roost.test\r\n\r\n").await.expect("request");
    let mut first = [0u8; 1024];
    assert!(idle.read(&mut first).await.expect("response") > 0, "the kept-alive connection was answered");

    // A head sent one byte every 250 ms would take 10 s: far past the 1 s header timeout.
    let head = b"GET /healthz HTTP/1.1\r\nhost: roost.test\r\nx-slow: aaaaaaaa\r\n\r\n";
    let trickler = TcpStream::connect(at).await.expect("connect");
    let trickle = tokio::spawn(async move {
        let mut trickler = trickler;
        for (sent, byte) in head.iter().enumerate() {
            if trickler.write_all(&[*byte]).await.is_err() {
                return sent;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        head.len()
    });

    // Normal clients are served meanwhile.
    for _ in 0..5 {
        assert!(healthy(&server).await, "a normal request failed while slow connections were open");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sent = tokio::time::timeout(CLOSE_WITHIN, trickle).await.expect("the trickler was closed").expect("task");
    assert!(sent < head.len(), "the trickling client got to send its whole head ({sent} bytes)");
    assert_eq!(read_until_closed(&mut silent, CLOSE_WITHIN).await, Some(Vec::new()), "silent connection closed");
    assert_eq!(read_until_closed(&mut idle, CLOSE_WITHIN).await, Some(Vec::new()), "idle keep-alive closed");
    assert!(healthy(&server).await);
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes() {
    let server = server!(|config| config.http.body_read_timeout_secs = 1);
    let mut stream = TcpStream::connect(address(&server)).await.expect("connect");
    stream
        .write_all(
            b"POST /v1/auth/challenge HTTP/1.1\r\nhost: roost.test\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"device_id\"",
        )
        .await
        .expect("request");
    let raw = read_until_closed(&mut stream, CLOSE_WITHIN).await.expect("closed");
    let (status, headers, body) = parse_response(&raw);
    assert_eq!(status, 408);
    assert_eq!(header(&headers, "connection"), Some("close"));
    let body: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(body["error"]["code"], "request_timeout");
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_with_a_json_503_and_served_again_once_one_closes() {
    let server = server!(|config| config.http.max_connections = 3);
    let at = address(&server);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(at).await.expect("connect");
        // A request answered on each proves the connection holds a slot.
        stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: roost.test\r\n\r\n").await.expect("request");
        let mut answer = [0u8; 1024];
        assert!(stream.read(&mut answer).await.expect("response") > 0);
        held.push(stream);
    }
    let mut over = TcpStream::connect(at).await.expect("connect");
    over.write_all(b"GET /healthz HTTP/1.1\r\nhost: roost.test\r\n\r\n").await.expect("request");
    let raw = read_until_closed(&mut over, CLOSE_WITHIN).await.expect("closed");
    let (status, headers, body) = parse_response(&raw);
    assert_eq!(status, 503);
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    let body: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(body["error"]["code"], "too_many_connections");

    drop(held.pop());
    let deadline = Instant::now() + CLOSE_WITHIN;
    while !healthy(&server).await {
        assert!(Instant::now() < deadline, "a closed connection's slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_get_with_a_body_gets_its_whole_response() {
    let server = server!();
    // A response large enough to be written in many segments: an 800 KB sync.
    let alice = server.user("alice").await;
    let token = alice.token();
    let id = crate::api::conversations::create(&server, &token, "group", &[], None).await;
    let ciphertext = roost_proto::bytes::encode(&vec![7u8; 600 * 1024]);
    let body = serde_json::json!({"client_message_id": "big", "epoch": 1, "ciphertext": ciphertext});
    let (status, sent) = server.post(&format!("/v1/conversations/{id}/messages"), Some(&token), body).await;
    assert_eq!(status, 201, "{sent}");

    for path in ["/v1/sync", "/openapi.json"] {
        for _ in 0..10 {
            let mut stream = TcpStream::connect(address(&server)).await.expect("connect");
            let head = format!(
                "GET {path} HTTP/1.1\r\nhost: roost.test\r\nauthorization: Bearer {token}\r\ncontent-length: 9\r\n\r\n"
            );
            // The body follows the head a moment later, as it does when it is a separate write
            // or segment: a server that answers without reading it has started its response.
            stream.write_all(head.as_bytes()).await.expect("head");
            tokio::time::sleep(Duration::from_millis(20)).await;
            stream.write_all(b"abcdefghi").await.expect("body");
            let (status, body) = read_response(&mut stream).await;
            assert_eq!(status, 200);
            let document: Value = serde_json::from_slice(&body).expect("the whole document");
            assert!(path != "/v1/sync" || document.to_string().len() > 800 * 1024);
            // The connection stays usable: the body was consumed, not taken for a request.
            stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: roost.test\r\n\r\n").await.expect("again");
            assert_eq!(read_response(&mut stream).await.0, 200);
        }
    }
}

/// The head of a JSON request that announces a body of `length` bytes.
fn request_head(method: &str, path: &str, token: Option<&str>, length: usize) -> String {
    let authorization = token.map(|token| format!("authorization: Bearer {token}\r\n")).unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nhost: roost.test\r\ncontent-type: application/json\r\n{authorization}\
         content-length: {length}\r\n\r\n"
    )
}

/// Sends a head announcing a body, then waits for the server's answer, which must come before
/// the body and close the connection.
async fn refused_early(at: SocketAddr, head: &str) -> (u16, Vec<(String, String)>, Value) {
    let mut stream = TcpStream::connect(at).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    // Nothing of the body is sent: bytes left unread when the server closes would reset the
    // connection, and the answer with it.
    let raw = read_until_closed(&mut stream, CLOSE_WITHIN).await.expect("answered and closed");
    let (status, headers, body) = parse_response(&raw);
    (status, headers, serde_json::from_slice(&body).expect("JSON"))
}

#[tokio::test]
async fn beyond_the_small_body_limit_only_an_authenticated_caller_is_read() {
    let server = server!(|config| config.limits.max_body_bytes = 64 * 1024);
    let at = address(&server);
    let alice = server.user("alice").await;
    let token = alice.token();
    let id = crate::api::conversations::create(&server, &token, "group", &[], None).await;
    let path = format!("/v1/conversations/{id}/messages");

    // A message route takes far more than 64 KiB, but not from anyone.
    for token in [None, Some("rst_not-a-session")] {
        let (status, headers, body) = refused_early(at, &request_head("POST", &path, token, 200_000)).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "unauthenticated");
        assert_eq!(header(&headers, "connection"), Some("close"));
    }
    // Without a declared length, reading stops where the small limit ends.
    let mut stream = TcpStream::connect(at).await.expect("connect");
    let chunked = format!(
        "POST {path} HTTP/1.1\r\nhost: roost.test\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    stream.write_all(chunked.as_bytes()).await.expect("head");
    let chunk = vec![b' '; 16 * 1024];
    for _ in 0..5 {
        stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.expect("chunk size");
        stream.write_all(&chunk).await.expect("chunk");
        stream.write_all(b"\r\n").await.expect("chunk end");
    }
    let (status, _, body) = parse_response(&read_until_closed(&mut stream, CLOSE_WITHIN).await.expect("closed"));
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));

    // A route that takes small bodies refuses a larger one whoever sends it.
    let (status, _, body) = refused_early(at, &request_head("POST", "/v1/keys/packages", Some(&token), 200_000)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("payload_too_large")));

    // The same message from its member is read and stored.
    let ciphertext = roost_proto::bytes::encode(&vec![7u8; 150 * 1024]);
    let message = serde_json::json!({"client_message_id": "large", "epoch": 1, "ciphertext": ciphertext});
    let (status, body) = server.post(&path, Some(&token), message).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn bodies_beyond_the_memory_budget_are_refused_until_memory_is_free() {
    let server = server!(|config| {
        config.limits.max_body_bytes = 64 * 1024;
        config.limits.max_message_bytes = 64 * 1024;
        config.limits.max_handshake_bytes = 16 * 1024;
        config.http.max_body_memory_bytes = 300_000;
    });
    let at = address(&server);
    let alice = server.user("alice").await;
    let token = alice.token();
    let id = crate::api::conversations::create(&server, &token, "group", &[], None).await;
    let path = format!("/v1/conversations/{id}/messages");
    let head = request_head("POST", &path, Some(&token), 140_000);

    // Three bodies of 140,000 bytes announced at once: two fit in 300,000 and wait for their
    // bytes; whichever the server comes to last is refused at once.
    let mut waiting = tokio::task::JoinSet::new();
    let mut connections = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(at).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("head");
        connections.push(waiting.spawn(async move { read_until_closed(&mut stream, CLOSE_WITHIN).await }));
    }
    let (task, first) = waiting.join_next_with_id().await.expect("three tasks").expect("task");
    let (status, headers, body) = parse_response(&first.expect("one body refused before the others timed out"));
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    let body: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(body["error"]["code"], "unavailable");

    // A client that goes away gives its share back.
    connections.iter().find(|connection| connection.id() != task).expect("a waiting body").abort();
    let ciphertext = roost_proto::bytes::encode(&vec![7u8; 60 * 1024]);
    let message = serde_json::json!({"client_message_id": "after", "epoch": 1, "ciphertext": ciphertext});
    let deadline = Instant::now() + CLOSE_WITHIN;
    loop {
        let (status, body) = server.post(&path, Some(&token), message.clone()).await;
        if status == 201 {
            break;
        }
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        assert!(Instant::now() < deadline, "the memory of a closed connection never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_its_response_is_closed() {
    let server = server!(|config| {
        config.http.write_timeout_secs = 2;
        config.http.idle_timeout_secs = 1;
    });
    let alice = server.user("alice").await;
    let token = alice.token();
    let id = crate::api::conversations::create(&server, &token, "group", &[], None).await;
    // A sync of about 11 MB: more than the two sockets' buffers hold.
    let ciphertext = roost_proto::bytes::encode(&vec![7u8; 700 * 1024]);
    for n in 0..12 {
        let message = serde_json::json!({"client_message_id": format!("m{n}"), "epoch": 1, "ciphertext": ciphertext});
        let (status, body) = server.post(&format!("/v1/conversations/{id}/messages"), Some(&token), message).await;
        assert_eq!(status, 201, "{body}");
    }

    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4 * 1024).expect("a small receive buffer");
    let mut stream = socket.connect(address(&server)).await.expect("connect");
    let request = format!("GET /v1/sync HTTP/1.1\r\nhost: roost.test\r\nauthorization: Bearer {token}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request");
    // Nothing is read until the server has given up on the response.
    let deadline = Instant::now() + CLOSE_WITHIN;
    loop {
        let metrics =
            server.http.get(server.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
        if metrics.contains("roost_http_connections_timed_out_total{phase=\"write\"}") {
            break;
        }
        assert!(Instant::now() < deadline, "a response nobody read kept its connection open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(read_until_closed(&mut stream, CLOSE_WITHIN).await.is_some(), "closed");
    assert!(healthy(&server).await);

    // A client that reads slowly but steadily gets it all, for longer than the idle timeout.
    let mut stream = TcpStream::connect(address(&server)).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let started = Instant::now();
    loop {
        let n = tokio::time::timeout(CLOSE_WITHIN, stream.read(&mut buffer)).await.expect("data").expect("read");
        assert!(n > 0, "closed after {} bytes in {:?}", received.len(), started.elapsed());
        received.extend_from_slice(&buffer[..n]);
        if let Some(end) = received.windows(4).position(|window| window == b"\r\n\r\n") {
            let (_, headers, body) = parse_response(&received);
            let length: usize = header(&headers, "content-length").expect("length").parse().expect("number");
            if body.len() == length {
                assert!(end > 0 && length > 11_000_000);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test]
async fn a_body_sent_where_no_route_is_does_not_cut_the_answer_off() {
    let server = server!();
    let mut stream = TcpStream::connect(address(&server)).await.expect("connect");
    for (method, path, status) in [("POST", "/v1/nowhere", 404), ("POST", "/healthz", 405), ("PUT", "/metrics", 405)] {
        stream.write_all(request_head(method, path, None, 9).as_bytes()).await.expect("head");
        tokio::time::sleep(Duration::from_millis(20)).await;
        stream.write_all(b"abcdefghi").await.expect("body");
        let (answer, body) = read_response(&mut stream).await;
        assert_eq!(answer, status, "{method} {path}");
        let body: Value = serde_json::from_slice(&body).expect("JSON");
        assert!(body["error"]["code"].is_string());
    }
    // The bodies were consumed, not taken for requests.
    stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: roost.test\r\n\r\n").await.expect("again");
    assert_eq!(read_response(&mut stream).await.0, 200);
}

/// Reads one response: its head, then exactly the body its content-length announces.
async fn read_response(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut raw = Vec::new();
    let mut buffer = [0u8; 64 * 1024];
    loop {
        let n = tokio::time::timeout(CLOSE_WITHIN, stream.read(&mut buffer)).await.expect("answer").expect("read");
        assert!(n > 0, "the connection closed before the response was complete ({} bytes)", raw.len());
        raw.extend_from_slice(&buffer[..n]);
        if raw.windows(4).any(|window| window == b"\r\n\r\n") {
            let (status, headers, body) = parse_response(&raw);
            let length: usize = header(&headers, "content-length").expect("length").parse().expect("number");
            if body.len() >= length {
                assert_eq!(body.len(), length, "nothing after the announced body");
                return (status, body);
            }
        }
    }
}
