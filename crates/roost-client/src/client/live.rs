//! Live delivery over the WebSocket.

#[allow(clippy::wildcard_imports)] // The parent's imports: these are its own impl blocks.
use super::*;

/// Live delivery over the WebSocket.
impl Client {
    /// Connects the device's WebSocket and calls `on_event` for everything that happens until
    /// the connection ends: pushed entries and queue items wake a sync (which decrypts, stores,
    /// then acknowledges), live frames become typing, receipt and presence events. Returns when
    /// the server closes the socket; callers reconnect.
    pub async fn listen(&mut self, mut on_event: impl FnMut(Event)) -> Result<()> {
        let mut socket = self.open_socket().await?;
        while let Some(frame) = next_frame(&mut socket).await {
            for event in self.on_frame(&mut socket, frame).await? {
                on_event(event);
            }
        }
        Ok(())
    }

    /// Opens the device's WebSocket and authenticates it, for an app that runs its own loop:
    /// read frames ([`next_frame`]), hand each to [`Client::on_frame`], and call the client
    /// (send, answer a call) between frames.
    pub async fn open_socket(&self) -> Result<crate::api::WebSocket> {
        let mut socket = self.api.websocket().await?;
        let token = self.api.token().ok_or_else(|| ClientError::Invalid("not logged in".into()))?.to_owned();
        send_frame(&mut socket, &ClientFrame::Auth { token }).await?;
        Ok(socket)
    }

    /// Applies one frame from `socket`. A pushed entry that follows what this device holds is
    /// applied as it came (decrypted, stored, then acknowledged over the socket); one after a
    /// gap, a queue item or the end of the initial drain wakes a sync, which reads what is
    /// missing from the server. Live frames become typing, receipt, presence and call events; a
    /// device list that changed, or a member who left, brings the conversations' trees in line
    /// ([`Client::upkeep`]). An ephemeral send that cannot be decrypted (sent in another epoch)
    /// is dropped: it was never meant to last.
    pub async fn on_frame(&mut self, socket: &mut crate::api::WebSocket, frame: ServerFrame) -> Result<Vec<Event>> {
        let mut events = match frame {
            ServerFrame::Entry(entry) => {
                let next = self.store.processed_seq(&entry.conversation_id)?.map(|seq| seq + 1);
                if next == Some(entry.seq) {
                    let mut events = Vec::new();
                    self.apply_entry(&entry, &mut events)?;
                    // Stored: only now is it acknowledged.
                    let ack = ClientFrame::Ack(AckRequest {
                        conversations: vec![ConversationAck { conversation_id: entry.conversation_id, seq: entry.seq }],
                        queue_up_to: None,
                    });
                    send_frame(socket, &ack).await?;
                    events
                } else {
                    self.sync().await?
                }
            }
            ServerFrame::QueueEmpty | ServerFrame::Queue(_) => self.sync().await?,
            ServerFrame::DevicesChanged { .. } => {
                self.upkeep_due = true;
                Vec::new()
            }
            ServerFrame::Typing { conversation_id, user_id, active, .. } => {
                vec![Event::Typing { conversation_id, user_id, active }]
            }
            ServerFrame::ReadReceipt { conversation_id, user_id, seq } => {
                vec![Event::ReadReceipt { conversation_id, user_id, seq }]
            }
            ServerFrame::Presence { user_id, online, .. } => vec![Event::Presence { user_id, online }],
            ServerFrame::Ephemeral { conversation_id, sender_user, sender_device, payload, .. } => {
                let content = self.group(&conversation_id).and_then(|mut group| {
                    let processed = self.process(&mut group, payload.as_bytes())?;
                    match processed.into_content() {
                        ProcessedMessageContent::ApplicationMessage(message) => Content::decode(&message.into_bytes()),
                        _ => Err(ClientError::Protocol("an ephemeral send that is not a message".into())),
                    }
                });
                match content {
                    Ok(Content::Call { call_id, action, sdp, candidate, video }) => vec![Event::Call(CallSignal {
                        conversation_id,
                        sender_user,
                        sender_device,
                        call_id,
                        action,
                        sdp,
                        candidate,
                        video,
                    })],
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        };
        if self.upkeep_due {
            events.extend(self.upkeep().await?);
        }
        events.append(&mut self.unreported);
        Ok(events)
    }

    /// Brings every conversation's tree in line with who is really there: adds this user's
    /// other devices where they are missing and removes revoked devices and departed users'
    /// leaves ([`Client::add_missing_own_devices`], [`Client::remove_departed`]). Run by
    /// [`Client::on_frame`] when a device list changes or a member leaves; a front end that
    /// only syncs runs it after each sync.
    pub async fn upkeep(&mut self) -> Result<Option<Event>> {
        self.upkeep_due = false;
        let added = self.add_missing_own_devices().await?;
        let removed = self.remove_departed().await?;
        Ok((added + removed > 0).then_some(Event::DevicesUpdated { added, removed }))
    }
}

/// Sends one frame on the socket.
pub async fn send_frame(socket: &mut crate::api::WebSocket, frame: &ClientFrame) -> Result<()> {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message as Frame;

    let text = serde_json::to_string(frame).map_err(|err| ClientError::Protocol(err.to_string()))?;
    socket.send(Frame::Text(text.into())).await.map_err(|err| ClientError::Protocol(format!("sending a frame: {err}")))
}

/// The next frame from the server, or `None` once the socket is closed.
pub async fn next_frame(socket: &mut crate::api::WebSocket) -> Option<ServerFrame> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message as Frame;

    loop {
        match socket.next().await? {
            Ok(Frame::Text(text)) => {
                if let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) {
                    return Some(frame);
                }
            }
            Ok(Frame::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}
