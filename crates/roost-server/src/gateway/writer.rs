//! Writing to one connection's socket: every write bounded by a timeout, long messages in
//! fragments.

use std::time::Duration;

use futures::SinkExt as _;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::time::error::Elapsed;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

/// A server-side WebSocket over an upgraded HTTP connection.
pub(super) type WebSocket = WebSocketStream<TokioIo<Upgraded>>;

/// Largest frame written in one piece; longer messages go out as fragments of this size.
/// tungstenite's write buffer keeps the capacity of the largest frame it ever wrote, so a single
/// 1 MiB message written whole would stay in that connection's memory for as long as it lives
/// (one large message to many sockets would leave that much behind in each; see
/// benchmark-log.md).
const FRAGMENT_BYTES: usize = 4 * 1024;

/// The peer did not take a write in time, or the socket failed: the connection is over.
pub(super) struct Gone;

/// Writes one text message: whole up to `FRAGMENT_BYTES`, as a fragmented message (RFC 6455
/// section 5.4, split on character boundaries) beyond. The timeout covers the whole message, so
/// a peer cannot stretch it by taking one fragment at a time.
pub(super) async fn write_text(socket: &mut WebSocket, limit: Duration, text: Utf8Bytes) -> Result<(), Gone> {
    if text.len() <= FRAGMENT_BYTES {
        return feed(socket, limit, Message::Text(text)).await;
    }
    let written = timeout(limit, async move {
        for frame in fragments(&text) {
            socket.feed(Message::Frame(frame)).await?;
        }
        Ok(())
    })
    .await;
    sent(written)
}

/// Queues one frame for writing, giving up on a peer that does not take it in time. Frames
/// are written once the write buffer fills, and by [`flush`].
pub(super) async fn feed(socket: &mut WebSocket, limit: Duration, message: Message) -> Result<(), Gone> {
    sent(timeout(limit, socket.feed(message)).await)
}

/// Writes every queued frame.
pub(super) async fn flush(socket: &mut WebSocket, limit: Duration) -> Result<(), Gone> {
    sent(timeout(limit, socket.flush()).await)
}

/// What a timed write means for the connection: a failed or timed-out write ends it.
fn sent(written: Result<Result<(), tokio_tungstenite::tungstenite::Error>, Elapsed>) -> Result<(), Gone> {
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Gone),
        Err(_) => {
            metrics::counter!("roost_gateway_send_timeouts_total").increment(1);
            Err(Gone)
        }
    }
}

/// A text message longer than `FRAGMENT_BYTES` as frames of at most that size: the first a text
/// frame, the rest continuations, the last final. Boundaries fall between characters, and the
/// pieces share the message's bytes.
fn fragments(text: &Utf8Bytes) -> Vec<Frame> {
    let all = Bytes::from(text.clone());
    let mut frames = Vec::with_capacity(text.len() / FRAGMENT_BYTES + 1);
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + FRAGMENT_BYTES).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let opcode = if start == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
        frames.push(Frame::message(all.slice(start..end), opcode, end == text.len()));
        start = end;
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(frames: &[Frame]) -> Vec<u8> {
        frames.iter().flat_map(|frame| frame.payload().to_vec()).collect()
    }

    #[test]
    fn a_long_message_is_split_into_a_text_frame_and_continuations_on_character_boundaries() {
        // Three-byte characters, so a cut every 4 KiB would fall inside one.
        let text = "€".repeat(20_000);
        let frames = fragments(&Utf8Bytes::from(text.clone()));
        assert_eq!(frames.len(), text.len().div_ceil(FRAGMENT_BYTES / 3 * 3));
        assert_eq!(joined(&frames), text.as_bytes());
        for (i, frame) in frames.iter().enumerate() {
            let header = frame.header();
            let opcode = if i == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
            assert_eq!(header.opcode, opcode);
            assert_eq!(header.is_final, i == frames.len() - 1);
            assert!(frame.payload().len() <= FRAGMENT_BYTES);
            assert!(std::str::from_utf8(frame.payload()).is_ok(), "fragment {i} splits a character");
        }
    }

    #[test]
    fn a_message_just_over_the_limit_ends_with_a_short_final_frame() {
        let text = "a".repeat(FRAGMENT_BYTES + 1);
        let frames = fragments(&Utf8Bytes::from(text.clone()));
        assert_eq!(frames.iter().map(|f| f.payload().len()).collect::<Vec<_>>(), vec![FRAGMENT_BYTES, 1]);
        assert_eq!(joined(&frames), text.as_bytes());
    }
}
