//! One device's connection: authenticate, drain what is stored, then push live.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use roost_proto::conversation::SendRequest;
use roost_proto::socket::{ClientFrame, ServerFrame, close};
use roost_proto::{ConversationId, ErrorCode, ErrorDetail};
use roost_store::SyncCursor;
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::order::{Next, Order};
use super::writer::{self, WebSocket};
use crate::error::Error;
use crate::hub::{CloseReason, EncodedFrame, LiveEvent, Seat, Subscription};
use crate::services::delivery::{entry_view, queue_view};
use crate::services::{Caller, Services, token_hash};

/// Entries or queue items fetched from the store per round trip.
const PAGE: u32 = 200;
/// Why a connection whose session expired refuses sends and closes.
const SESSION_EXPIRED: &str = "the session has expired; authenticate again";
/// Live events written together, at most, before the connection turns to its other work.
const BATCH: usize = 64;
/// Frames gathered before they are written (what is left of a burst is written by the flush
/// that ends each step). Small, because tungstenite's write buffer keeps the largest capacity
/// it ever needed for as long as the connection lives: about this much plus one frame. An
/// entry and the `sent` answer of the sender's own device (about 750 bytes together) still go
/// out in one write.
pub(super) const WRITE_BUFFER_BYTES: usize = 1024;

/// How a connection ended.
enum Exit {
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// The peer went away or the socket failed; nothing more can be sent.
    Gone,
}

/// Runs one WebSocket connection to completion, once the handshake's response has been sent.
///
/// This future is the connection's task and lives as long as the connection: its size is the
/// largest of its states, so only the serving state is held inline and the short phases
/// (authentication, presence, closing) are boxed and take memory only while they run.
pub(super) async fn run(upgrade: OnUpgrade, config: WebSocketConfig, services: Arc<Services>) {
    let Ok(upgraded) = upgrade.await else {
        return; // The peer went away before the switch.
    };
    let mut socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let gateway = &services.ctx.config.gateway;
    let auth_timeout = Duration::from_secs(gateway.auth_timeout_secs);
    let (caller, session) = match Box::pin(authenticate(&mut socket, &services, auth_timeout)).await {
        Ok(authenticated) => authenticated,
        Err(exit) => return Box::pin(finish(&mut socket, exit)).await,
    };
    let too_many = Exit::Close(close::TOO_MANY_CONNECTIONS, "this user has the maximum number of connections");
    let (user, device, max) = (caller.user_id, caller.device_id, gateway.max_connections_per_user);
    let Ok(seat) = Box::pin(services.hub.take_seat(user, device, max)).await else {
        return Box::pin(finish(&mut socket, too_many)).await;
    };
    let Ok(subscription) = services.hub.subscribe(user, device, gateway.outgoing_buffer, max) else {
        Box::pin(services.hub.leave_seat(&user, seat)).await;
        return Box::pin(finish(&mut socket, too_many)).await;
    };
    // Events for this device from other instances reach this one before the drain reads the
    // store, so nothing committed meanwhile falls between the two.
    Box::pin(services.hub.watch(caller.device_id)).await;
    // Connected, the device reads everything: the next commit for it after this connection may
    // wake it again.
    services.push.seen(&caller.device_id);
    metrics::counter!("roost_gateway_connections_total").increment(1);
    // The connection borrows the socket: moving it in would leave a second, dead copy of its
    // state in this future (an async fn's arguments keep their place for its whole life).
    let mut connection = Connection {
        socket: &mut socket,
        services: services.clone(),
        caller,
        session,
        send_timeout: Duration::from_secs(gateway.send_timeout_secs),
        order: Order::default(),
        queue_pushed: 0,
        visible: false,
        presence_changed: false,
        sends: None,
    };
    let exit = connection.serve(subscription, seat.as_ref(), gateway).await;
    // The subscription is gone by now: the count is of the user's other connections.
    let visible_left = Box::pin(services.hub.leave_seat(&user, seat)).await;
    if connection.visible && visible_left == 0 {
        Box::pin(announce_presence(&services, user, false)).await;
    }
    Box::pin(finish(connection.socket, exit)).await;
}

/// Tells the connected devices of users sharing a conversation with `user` that it came online
/// or went offline: a user is online while at least one of their connections, on any instance,
/// is visible (opted in), so this is called when the first one becomes visible and when the
/// last one stops being visible or closes.
async fn announce_presence(services: &Services, user: roost_proto::UserId, online: bool) {
    match services.accounts.presence_audience(&user).await {
        Ok(others) => {
            let frame = ServerFrame::Presence { user_id: user, online, last_seen: services.ctx.clock.now_ms() };
            services.hub.publish(others, LiveEvent::Frame(EncodedFrame::encode(&frame)));
        }
        Err(err) => tracing::warn!(error = %err, "could not announce presence"),
    }
}

/// Waits for the `auth` frame and checks its token; returns the caller and its session's key.
async fn authenticate(
    socket: &mut WebSocket,
    services: &Services,
    limit: Duration,
) -> Result<(Caller, [u8; 32]), Exit> {
    let refused = Exit::Close(close::UNAUTHENTICATED, "the first frame must be auth with a valid session token");
    let first = match timeout(limit, socket.next()).await {
        Err(_) => return Err(Exit::Close(close::UNAUTHENTICATED, "no auth frame in time")),
        Ok(None) => return Err(Exit::Gone),
        Ok(Some(Err(err))) => return Err(read_failed(&err)),
        Ok(Some(Ok(message))) => message,
    };
    let Message::Text(text) = first else {
        return Err(refused);
    };
    let Ok(ClientFrame::Auth { token }) = serde_json::from_str::<ClientFrame>(&text) else {
        return Err(refused);
    };
    let caller = services.auth.authenticate_once(&token).await.map_err(|_| refused)?;
    Ok((caller, token_hash(&token)))
}

/// Completes at the deadline; never without one.
async fn hold_expired(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => Box::pin(tokio::time::sleep_until(deadline)).await,
        None => std::future::pending().await,
    }
}

/// How a connection ends when the store fails it.
fn storage_unavailable() -> Exit {
    Exit::Close(close::GOING_AWAY, "storage unavailable; reconnect later")
}

/// How a connection whose read failed ends: a frame over the size limit is answered with close
/// code 1009 (the socket can still be written); anything else has lost the connection.
fn read_failed(err: &WsError) -> Exit {
    match err {
        WsError::Capacity(_) => Exit::Close(close::TOO_LARGE, "the frame is larger than this server accepts"),
        _ => Exit::Gone,
    }
}

async fn finish(socket: &mut WebSocket, exit: Exit) {
    if let Exit::Close(code, reason) = exit {
        let frame = CloseFrame { code: code.into(), reason: Utf8Bytes::from_static(reason) };
        let _ = timeout(Duration::from_secs(1), socket.send(Message::Close(Some(frame)))).await;
    }
}

struct Connection<'s> {
    socket: &'s mut WebSocket,
    /// The services (one shared pointer, to keep the connection small).
    services: Arc<Services>,
    caller: Caller,
    /// The key of the session the socket authenticated with (its token's hash).
    session: [u8; 32],
    send_timeout: Duration,
    /// Where each conversation's entries stand on this connection.
    order: Order,
    /// The last queue id pushed.
    queue_pushed: u64,
    /// Whether the device opted in to presence on this connection.
    visible: bool,
    /// `visible` changed and the hub has not been told yet.
    presence_changed: bool,
    /// Sends over this connection still waiting for their answer (created by the first send,
    /// so an idle connection does not carry it).
    sends: Option<Arc<Semaphore>>,
}

impl Connection<'_> {
    async fn serve(
        &mut self,
        mut subscription: Subscription,
        seat: Option<&Seat>,
        gateway: &crate::config::GatewayConfig,
    ) -> Exit {
        // The futures of the rarely taken paths (store reads, frame handling) are boxed so the
        // long-lived state of an idle connection stays small (docs/benchmark-log.md, memory per connection).
        if let Err(exit) = Box::pin(self.drain()).await {
            return exit;
        }
        let idle_limit = Duration::from_secs(gateway.idle_timeout_secs);
        let mut heartbeat = tokio::time::interval(Duration::from_secs(gateway.heartbeat_interval_secs));
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        heartbeat.reset();
        let mut shutdown = self.services.hub.shutdown_signal();
        let mut last_heard = Instant::now();
        loop {
            let step = tokio::select! {
                event = subscription.next() => match event {
                    Some(event) => Box::pin(self.deliver_waiting(event, &mut subscription)).await,
                    None => Err(match subscription.close_reason() {
                        Some(CloseReason::Replaced) => Exit::Close(close::REPLACED, "a newer connection of this device took over"),
                        Some(CloseReason::SlowConsumer) => Exit::Close(close::SLOW_CONSUMER, "too slow to keep up; reconnect to catch up"),
                        Some(CloseReason::Revoked) => Exit::Close(close::REVOKED, "this device has been revoked"),
                        None => Exit::Close(close::GOING_AWAY, "the server is shutting down"),
                    }),
                },
                message = self.socket.next() => {
                    last_heard = Instant::now();
                    match message {
                        Some(Ok(message)) => Box::pin(self.receive(message)).await,
                        Some(Err(err)) => Err(read_failed(&err)),
                        None => Err(Exit::Gone),
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() >= idle_limit {
                        Err(Exit::Close(close::IDLE, "no frame or pong within the idle timeout"))
                    } else if self.session_expired() {
                        Err(Exit::Close(close::SESSION_ENDED, SESSION_EXPIRED))
                    } else {
                        Box::pin(self.send(Message::Ping(Default::default()))).await
                    }
                }
                _ = hold_expired(self.order.hold_deadline()) => Box::pin(self.release_held()).await,
                _ = shutdown.changed() => Err(Exit::Close(close::GOING_AWAY, "the server is shutting down")),
            };
            if let Err(exit) = step {
                return exit;
            }
            if std::mem::take(&mut self.presence_changed) {
                Box::pin(self.record_visibility(&subscription, seat)).await;
            }
            // Whatever the step wrote goes out now, in as few writes as it fits in.
            if let Err(exit) = self.flush().await {
                return exit;
            }
        }
    }

    /// Records this connection's visibility and announces the user's presence when it changed:
    /// online for the user's first visible connection, offline when none is left.
    async fn record_visibility(&mut self, subscription: &Subscription, seat: Option<&Seat>) {
        let visible = self.visible;
        let count = self.services.hub.set_visible(subscription, seat, visible).await;
        if (visible && count == 1) || (!visible && count == 0) {
            announce_presence(&self.services, self.caller.user_id, visible).await;
        }
    }

    /// Pushes an event and then the ones queued behind it, up to [`BATCH`]: written together,
    /// a burst of frames costs one system call instead of one each.
    async fn deliver_waiting(&mut self, first: LiveEvent, subscription: &mut Subscription) -> Result<(), Exit> {
        self.deliver(first).await?;
        for _ in 1..BATCH {
            let Some(event) = subscription.try_next() else {
                break;
            };
            self.deliver(event).await?;
        }
        Ok(())
    }

    /// Sends everything stored for the device, then `queue_empty`.
    async fn drain(&mut self) -> Result<(), Exit> {
        self.send_frame(&ServerFrame::Ready { user_id: self.caller.user_id, device_id: self.caller.device_id }).await?;
        // Written on its own: the write buffer keeps the capacity of the most it ever held, and
        // what an idle connection holds is what `ready` and `queue_empty` needed one at a time.
        self.flush().await?;
        // Start from the acknowledged positions, so the first live entry of a conversation with
        // nothing pending is pushed as is instead of being fetched again from the store.
        let positions = self.services.delivery.positions(&self.caller).await.map_err(|err| {
            tracing::warn!(error = %err, "reading positions failed");
            storage_unavailable()
        })?;
        self.order.start_from(positions);
        // The queue first: a Welcome must reach the client before the entries it lets it read.
        let mut cursor = SyncCursor::default();
        loop {
            let items =
                self.services.delivery.queue_after(&self.caller, cursor.queue_after, PAGE).await.map_err(|err| {
                    tracing::warn!(error = %err, "initial drain failed");
                    storage_unavailable()
                })?;
            let more = items.len() == PAGE as usize;
            for item in items {
                cursor.queue_after = item.id;
                self.queue_pushed = item.id;
                self.send_frame(&ServerFrame::Queue(queue_view(item))).await?;
            }
            if !more {
                break;
            }
        }
        // Then the entries (and any queue item that arrived meanwhile).
        loop {
            let page = self.services.delivery.stored_page(&self.caller, cursor, PAGE).await.map_err(|err| {
                tracing::warn!(error = %err, "initial drain failed");
                storage_unavailable()
            })?;
            let more = page.entries.len() == PAGE as usize || page.queue.len() == PAGE as usize;
            if let Some(last) = page.queue.last() {
                cursor.queue_after = last.id;
            }
            if let Some(last) = page.entries.last() {
                cursor.entries_after = Some((last.conversation_id, last.seq));
            }
            for entry in page.entries {
                self.order.pushed(entry.conversation_id, entry.seq);
                self.send_frame(&ServerFrame::Entry(entry_view(entry))).await?;
            }
            for item in page.queue {
                self.queue_pushed = item.id;
                self.send_frame(&ServerFrame::Queue(queue_view(item))).await?;
            }
            if !more {
                self.send_frame(&ServerFrame::QueueEmpty).await?;
                return self.flush().await;
            }
        }
    }

    /// Pushes one live event, fetching from the store whatever this connection missed so each
    /// conversation's entries arrive in order and exactly once per connection.
    async fn deliver(&mut self, event: LiveEvent) -> Result<(), Exit> {
        match event {
            LiveEvent::Entry(entry) => match self.order.offer(entry, &self.caller.device_id, Instant::now()) {
                Next::Skip | Next::Held => Ok(()),
                Next::Push(entries) => {
                    for entry in entries {
                        self.send_text(entry.frame.text()).await?;
                    }
                    Ok(())
                }
                Next::CatchUp { conversation_id, after } => {
                    self.catch_up(conversation_id, after).await?;
                    self.order.forget_held(&conversation_id);
                    Ok(())
                }
            },
            LiveEvent::Committed { conversation_id, seq, ends_for } => {
                let after = self.order.last(&conversation_id);
                if seq > after {
                    self.catch_up(conversation_id, after).await?;
                    if ends_for.contains(&self.caller.device_id) && self.order.last(&conversation_id) == seq {
                        self.order.ended(conversation_id, seq);
                    }
                    self.order.forget_held(&conversation_id);
                }
                Ok(())
            }
            LiveEvent::Resync => self.resync().await,
            LiveEvent::Queued => self.catch_up_queue().await,
            LiveEvent::Frame(frame) => self.send_text(frame.text()).await,
            LiveEvent::SessionEnded(session) if session == self.session => {
                Err(Exit::Close(close::SESSION_ENDED, "this session was logged out"))
            }
            // Another session of the same device (it logged in again since).
            LiveEvent::SessionEnded(_) => Ok(()),
        }
    }

    /// Reads from the store everything this connection may have missed: the entries after the
    /// last one pushed in each conversation, and the queue after the last item pushed.
    async fn resync(&mut self) -> Result<(), Exit> {
        metrics::counter!("roost_gateway_resyncs_total").increment(1);
        // The news of a logout or revocation may have been lost with the rest.
        if !self.services.auth.session_lasts(&self.session).await.map_err(|_| storage_unavailable())? {
            return Err(Exit::Close(close::SESSION_ENDED, "this session was logged out"));
        }
        // Only the entries page on here; the queue is read after them, from its own position.
        let mut cursor = SyncCursor { queue_after: u64::MAX, entries_after: None };
        loop {
            let page = self
                .services
                .delivery
                .stored_page(&self.caller, cursor, PAGE)
                .await
                .map_err(|_| storage_unavailable())?;
            let more = page.entries.len() == PAGE as usize;
            if let Some(last) = page.entries.last() {
                cursor.entries_after = Some((last.conversation_id, last.seq));
            }
            for entry in page.entries {
                if entry.seq > self.order.last(&entry.conversation_id) {
                    let conversation_id = entry.conversation_id;
                    self.order.pushed(conversation_id, entry.seq);
                    self.send_frame(&ServerFrame::Entry(entry_view(entry))).await?;
                    self.order.forget_held(&conversation_id);
                }
            }
            if !more {
                return self.catch_up_queue().await;
            }
        }
    }

    /// The entries held ones were waiting for never came live (a send that failed between its
    /// commit and its push): read the gaps from the store.
    async fn release_held(&mut self) -> Result<(), Exit> {
        for (conversation_id, after) in self.order.release_held() {
            self.catch_up(conversation_id, after).await?;
        }
        Ok(())
    }

    async fn catch_up(&mut self, conversation_id: ConversationId, after: u64) -> Result<(), Exit> {
        metrics::counter!("roost_gateway_store_catch_ups_total").increment(1);
        let mut after = after;
        loop {
            let entries = self
                .services
                .delivery
                .entries_after(&self.caller, &conversation_id, after, PAGE)
                .await
                .map_err(|_| storage_unavailable())?;
            let full = entries.len() == PAGE as usize;
            for entry in entries {
                after = entry.seq;
                self.order.pushed(conversation_id, entry.seq);
                self.send_frame(&ServerFrame::Entry(entry_view(entry))).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn catch_up_queue(&mut self) -> Result<(), Exit> {
        loop {
            let items = self
                .services
                .delivery
                .queue_after(&self.caller, self.queue_pushed, PAGE)
                .await
                .map_err(|_| storage_unavailable())?;
            let full = items.len() == PAGE as usize;
            for item in items {
                self.queue_pushed = item.id;
                self.send_frame(&ServerFrame::Queue(queue_view(item))).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Handles one frame from the client. Bad frames get an `error` frame, not a disconnect.
    async fn receive(&mut self, message: Message) -> Result<(), Exit> {
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => return Err(Exit::Gone),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(()),
            Message::Binary(_) => return self.refuse(ErrorCode::MalformedRequest, "frames are JSON text").await,
        };
        let frame = match serde_json::from_str::<ClientFrame>(&text) {
            Ok(frame) => frame,
            Err(err) => {
                return self.refuse(ErrorCode::MalformedRequest, &format!("unreadable frame: {err}")).await;
            }
        };
        let caller = self.caller;
        let outcome = match frame {
            ClientFrame::Auth { .. } => return self.refuse(ErrorCode::InvalidArgument, "already authenticated").await,
            ClientFrame::Ack(request) => self.services.delivery.ack(&caller, &request).await,
            ClientFrame::Typing { conversation_id, active } => {
                self.services.conversations.typing(&caller, &conversation_id, active).await
            }
            ClientFrame::Presence { visible } => {
                // Recorded by `serve`, which holds the subscription and the seat.
                self.presence_changed |= visible != self.visible;
                self.visible = visible;
                Ok(())
            }
            ClientFrame::Send { conversation_id, client_message_id, epoch, ciphertext, ephemeral } => {
                let request = SendRequest { client_message_id, epoch, ciphertext, ephemeral };
                return self.start_send(conversation_id, request).await;
            }
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(err) => self.refuse(err.code, &err.message).await,
        }
    }

    /// Starts a send in a task of its own, so the connection goes on reading and pushing while
    /// the message waits for its group commit. The answer reaches this device through the hub,
    /// like every other frame pushed to it (and so is bounded by its outgoing buffer).
    async fn start_send(&mut self, conversation_id: ConversationId, request: SendRequest) -> Result<(), Exit> {
        // An HTTP send presents its token each time; a socket authenticated once, so its
        // session's end is checked here (the heartbeat closes the socket soon after).
        if self.session_expired() {
            let expired = Error::new(ErrorCode::SessionExpired, SESSION_EXPIRED);
            return self.send_frame(&send_failed(conversation_id, request.client_message_id, expired)).await;
        }
        let most = self.services.ctx.config.gateway.max_sends_in_flight;
        let sends = self.sends.get_or_insert_with(|| Arc::new(Semaphore::new(most)));
        let Ok(permit) = sends.clone().try_acquire_owned() else {
            let busy = Error::new(ErrorCode::RateLimited, "too many sends in flight on this connection");
            return self.send_frame(&send_failed(conversation_id, request.client_message_id, busy)).await;
        };
        let (services, caller) = (self.services.clone(), self.caller);
        tokio::spawn(async move {
            let client_message_id = request.client_message_id.clone();
            let frame = match services.conversations.send(&caller, &conversation_id, request).await {
                Ok(accepted) => ServerFrame::Sent {
                    conversation_id,
                    client_message_id,
                    seq: accepted.seq,
                    created_at: accepted.created_at,
                    duplicate: accepted.duplicate,
                },
                Err(err) => send_failed(conversation_id, client_message_id, err),
            };
            services.hub.publish([caller.device_id], LiveEvent::Frame(EncodedFrame::encode(&frame)));
            drop(permit);
        });
        Ok(())
    }

    async fn refuse(&mut self, code: ErrorCode, message: &str) -> Result<(), Exit> {
        self.send_frame(&ServerFrame::Error { code, message: message.to_owned() }).await
    }

    async fn send_frame(&mut self, frame: &ServerFrame) -> Result<(), Exit> {
        self.send_text(EncodedFrame::encode(frame).text()).await
    }

    async fn send_text(&mut self, text: Utf8Bytes) -> Result<(), Exit> {
        writer::write_text(self.socket, self.send_timeout, text).await.map_err(|_| Exit::Gone)
    }

    async fn send(&mut self, message: Message) -> Result<(), Exit> {
        writer::feed(self.socket, self.send_timeout, message).await.map_err(|_| Exit::Gone)
    }

    /// Whether the session the socket authenticated with has expired.
    fn session_expired(&self) -> bool {
        self.caller.expires_at <= self.services.ctx.clock.now_ms()
    }

    /// Writes every queued frame.
    async fn flush(&mut self) -> Result<(), Exit> {
        writer::flush(self.socket, self.send_timeout).await.map_err(|_| Exit::Gone)
    }
}

/// The answer to a refused `send` frame.
fn send_failed(conversation_id: ConversationId, client_message_id: String, err: Error) -> ServerFrame {
    let error = ErrorDetail {
        code: err.code,
        message: err.message,
        current_epoch: err.current_epoch,
        current_offset: err.current_offset,
    };
    ServerFrame::SendFailed { conversation_id, client_message_id, error }
}
