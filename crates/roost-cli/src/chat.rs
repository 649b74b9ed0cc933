//! `roost chat`: an interactive terminal screen. Conversations on the left, the selected one's
//! messages on the right, an input line below; typing and read indicators in the status line.
//! Pushes arrive over the device's WebSocket and wake a sync (decrypt, store, ack).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossterm::event::{Event as TermEvent, EventStream, KeyCode, KeyEventKind, KeyModifiers};
use futures::{SinkExt, StreamExt};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, List, ListItem, ListState, Paragraph, Wrap};
use roost_client::{Client, Event};
use roost_proto::socket::ServerFrame;
use roost_proto::{ConversationId, UserId};
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::{Names, members_of_all, render};

/// How long a typing indicator stays up without a new typing frame.
const TYPING_SHOWN: Duration = Duration::from_secs(5);
/// At most one typing frame per conversation this often.
const TYPING_EVERY: Duration = Duration::from_secs(3);

struct Screen {
    names: Names,
    conversations: Vec<(ConversationId, String)>,
    selected: usize,
    input: String,
    notice: String,
    typing: HashMap<ConversationId, (UserId, Instant)>,
    read_by: String,
    last_typing_sent: Option<Instant>,
}

/// Runs the chat screen until Esc or Ctrl-C.
pub async fn run(client: &mut Client) -> anyhow::Result<()> {
    client.sync().await?;
    client.add_missing_own_devices().await?;
    client.remove_departed().await?;
    let mut socket = client.api().websocket().await?;
    let token = client.api().token().unwrap_or_default().to_owned();
    socket.send(Frame::Text(serde_json::json!({"type": "auth", "token": token}).to_string().into())).await?;

    let mut terminal = ratatui::init();
    let outcome = chat_loop(client, &mut terminal, &mut socket).await;
    ratatui::restore();
    outcome
}

type Socket = roost_client::api::WebSocket;

async fn chat_loop(
    client: &mut Client,
    terminal: &mut ratatui::DefaultTerminal,
    socket: &mut Socket,
) -> anyhow::Result<()> {
    let names = Names::of(client, members_of_all(client)).await;
    let mut screen = Screen {
        conversations: labels(client, &names),
        names,
        selected: 0,
        input: String::new(),
        notice: "Up/Down: conversation · Enter: send · Esc: quit".into(),
        typing: HashMap::new(),
        read_by: String::new(),
        last_typing_sent: None,
    };
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    refresh_read(client, &mut screen).await;
    loop {
        terminal.draw(|frame| draw(frame, client, &screen))?;
        tokio::select! {
            key = keys.next() => {
                let Some(Ok(TermEvent::Key(key))) = key else { continue };
                if key.kind != KeyEventKind::Press {
                    continue;
                }
                match key.code {
                    KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return Ok(()),
                    KeyCode::Up => {
                        screen.selected = screen.selected.saturating_sub(1);
                        refresh_read(client, &mut screen).await;
                    }
                    KeyCode::Down => {
                        screen.selected = (screen.selected + 1).min(screen.conversations.len().saturating_sub(1));
                        refresh_read(client, &mut screen).await;
                    }
                    KeyCode::Backspace => {
                        screen.input.pop();
                    }
                    KeyCode::Enter => send(client, &mut screen).await,
                    KeyCode::Char(c) => {
                        screen.input.push(c);
                        announce_typing(socket, &mut screen).await;
                    }
                    _ => {}
                }
            }
            frame = socket.next() => {
                let Some(Ok(Frame::Text(text))) = frame else {
                    screen.notice = "disconnected from the server; restart roost chat".into();
                    continue;
                };
                match serde_json::from_str::<ServerFrame>(&text) {
                    Ok(ServerFrame::Entry(_) | ServerFrame::Queue(_) | ServerFrame::QueueEmpty) => {
                        match client.sync().await {
                            Ok(events) => absorb(client, &mut screen, events).await,
                            Err(err) => screen.notice = format!("sync failed: {err}"),
                        }
                    }
                    Ok(ServerFrame::Typing { conversation_id, user_id, active, .. }) => {
                        if active {
                            screen.typing.insert(conversation_id, (user_id, Instant::now()));
                        } else {
                            screen.typing.remove(&conversation_id);
                        }
                    }
                    Ok(ServerFrame::ReadReceipt { .. }) => refresh_read(client, &mut screen).await,
                    _ => {}
                }
            }
            _ = tick.tick() => {
                screen.typing.retain(|_, (_, since)| since.elapsed() < TYPING_SHOWN);
            }
        }
    }
}

fn selected(screen: &Screen) -> Option<ConversationId> {
    screen.conversations.get(screen.selected).map(|(id, _)| *id)
}

async fn send(client: &mut Client, screen: &mut Screen) {
    let Some(id) = selected(screen) else { return };
    let text = std::mem::take(&mut screen.input);
    if text.trim().is_empty() {
        return;
    }
    screen.notice = match client.send_text(&id, &text).await {
        Ok(seq) => format!("sent #{seq}"),
        Err(err) => {
            screen.input = text;
            format!("not sent: {err}")
        }
    };
}

async fn announce_typing(socket: &mut Socket, screen: &mut Screen) {
    let Some(id) = selected(screen) else { return };
    if screen.last_typing_sent.is_some_and(|at| at.elapsed() < TYPING_EVERY) {
        return;
    }
    screen.last_typing_sent = Some(Instant::now());
    let frame = serde_json::json!({"type": "typing", "conversation_id": id, "active": true}).to_string();
    let _ = socket.send(Frame::Text(frame.into())).await;
}

async fn absorb(client: &Client, screen: &mut Screen, events: Vec<Event>) {
    // New members and senders get their names before they are shown.
    let unknown =
        events.iter().filter_map(Event::user).chain(members_of_all(client)).any(|user| !screen.names.knows(&user));
    if unknown || events.iter().any(|event| matches!(event, Event::Joined(_) | Event::MembersChanged(_))) {
        screen.names = Names::of(client, members_of_all(client)).await;
        screen.conversations = labels(client, &screen.names);
    }
    for event in events {
        match event {
            Event::Joined(_) => screen.conversations = labels(client, &screen.names),
            Event::Message(message) => {
                screen.typing.remove(&message.conversation_id);
            }
            Event::Rejected { reason, .. } => screen.notice = format!("refused: {reason}"),
            _ => {}
        }
    }
    refresh_read(client, screen).await;
}

/// Marks the selected conversation read and shows who has read how far.
async fn refresh_read(client: &Client, screen: &mut Screen) {
    let Some(id) = selected(screen) else { return };
    if let Some(last) = client.history(&id).ok().and_then(|messages| messages.last().map(|m| m.seq)) {
        let _ = client.api().mark_read(&id, last).await;
    }
    screen.read_by = match client.api().conversation(&id).await {
        Ok(summary) => summary
            .members
            .iter()
            .filter(|m| m.user_id != client.user_id())
            .filter_map(|m| m.read_seq.map(|seq| format!("{} read #{seq}", screen.names.who(&m.user_id))))
            .collect::<Vec<_>>()
            .join(", "),
        Err(_) => String::new(),
    };
}

fn labels(client: &Client, names: &Names) -> Vec<(ConversationId, String)> {
    let me = client.user_id();
    client
        .conversations()
        .unwrap_or_default()
        .into_iter()
        .map(|(id, kind)| {
            let others: Vec<String> =
                client.members(&id).unwrap_or_default().iter().filter(|u| **u != me).map(|u| names.who(u)).collect();
            (id, format!("{kind}: {}", others.join(", ")))
        })
        .collect()
}

fn draw(frame: &mut ratatui::Frame<'_>, client: &Client, screen: &Screen) {
    let [main, input, status] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(3), Constraint::Length(1)]).areas(frame.area());
    let [left, right] = Layout::horizontal([Constraint::Length(32), Constraint::Min(10)]).areas(main);

    let items: Vec<ListItem<'_>> =
        screen.conversations.iter().map(|(_, label)| ListItem::new(label.as_str())).collect();
    let mut list_state = ListState::default().with_selected(Some(screen.selected));
    let list = List::new(items)
        .block(Block::default().borders(Borders::ALL).title("Conversations"))
        .highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    frame.render_stateful_widget(list, left, &mut list_state);

    let timeline = selected(screen).and_then(|id| client.timeline(&id).ok()).unwrap_or_default();
    let names = screen.names.with(&timeline);
    let lines: Vec<Line<'_>> = timeline.items.iter().flat_map(|item| render(item, &names)).map(Line::from).collect();
    let scroll = u16::try_from(lines.len().saturating_sub(usize::from(right.height.saturating_sub(2)))).unwrap_or(0);
    let messages = Paragraph::new(lines)
        .block(Block::default().borders(Borders::ALL).title("Messages"))
        .wrap(Wrap { trim: false })
        .scroll((scroll, 0));
    frame.render_widget(messages, right);

    frame.render_widget(
        Paragraph::new(screen.input.as_str()).block(Block::default().borders(Borders::ALL).title("Message")),
        input,
    );
    let typing = selected(screen)
        .and_then(|id| screen.typing.get(&id))
        .map(|(user, _)| format!("{} is typing… · ", screen.names.who(user)))
        .unwrap_or_default();
    let read = if screen.read_by.is_empty() { String::new() } else { format!("{} · ", screen.read_by) };
    frame.render_widget(Paragraph::new(format!("{typing}{read}{}", screen.notice)), status);
}
