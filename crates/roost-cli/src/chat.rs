//! `roost chat`: an interactive terminal screen. Conversations on the left with their unread
//! counts, the selected one's messages on the right (times, names, quotes, reactions, edits,
//! polls, and whether others have read your messages), an input line below, typing and notices
//! in the status line. Pushes arrive over the device's WebSocket and are applied by the SDK.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossterm::event::{Event as TermEvent, EventStream, KeyCode, KeyEventKind, KeyModifiers};
use futures::StreamExt;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, List, ListItem, ListState, Paragraph, Wrap};
use roost_client::api::WebSocket;
use roost_client::client::{next_frame, send_frame};
use roost_client::{Client, Content, Event, Timeline};
use roost_proto::conversation::{ConversationSummary, RetentionPolicy};
use roost_proto::socket::ClientFrame;
use roost_proto::{ConversationId, UserId};

use crate::{Names, members_of_all, render};

/// How long a typing indicator stays up without a new typing frame.
const TYPING_SHOWN: Duration = Duration::from_secs(5);
/// At most one typing frame per conversation this often.
const TYPING_EVERY: Duration = Duration::from_secs(3);
/// Lines one PageUp or PageDown scrolls.
const PAGE: u16 = 10;
/// What the status line says when nothing else is to be said.
const HELP: &str = "Up/Down: conversation · PgUp/PgDn: scroll · Enter: send · /react N 👍 · /reply N text · \
                    /edit N text · /delete N · /poll question | option | option · /vote N option… · \
                    /retention ttl SECONDS|burn-on-read|permanent · /file PATH · /save N [PATH] · Esc: quit";

struct Screen {
    names: Names,
    conversations: Vec<(ConversationId, String)>,
    /// What the server says of each conversation: unread count, read positions, retention.
    summaries: HashMap<ConversationId, ConversationSummary>,
    selected: usize,
    input: String,
    notice: String,
    typing: HashMap<ConversationId, (UserId, Instant)>,
    /// Lines scrolled up from the newest.
    scrolled: u16,
    last_typing_sent: Option<Instant>,
}

/// Runs the chat screen until Esc or Ctrl-C.
pub async fn run(client: &mut Client) -> anyhow::Result<()> {
    client.sync().await?;
    client.upkeep().await?;
    let mut socket = client.open_socket().await?;
    let mut terminal = ratatui::init();
    let outcome = chat_loop(client, &mut terminal, &mut socket).await;
    ratatui::restore();
    outcome
}

async fn chat_loop(
    client: &mut Client,
    terminal: &mut ratatui::DefaultTerminal,
    socket: &mut WebSocket,
) -> anyhow::Result<()> {
    let names = Names::of(client, members_of_all(client)).await;
    let mut screen = Screen {
        conversations: labels(client, &names),
        names,
        summaries: HashMap::new(),
        selected: 0,
        input: String::new(),
        notice: HELP.into(),
        typing: HashMap::new(),
        scrolled: 0,
        last_typing_sent: None,
    };
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    mark_read(client, &mut screen).await;
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
                        let previous = screen.selected.saturating_sub(1);
                        select(client, &mut screen, previous).await;
                    }
                    KeyCode::Down => {
                        let next = (screen.selected + 1).min(screen.conversations.len().saturating_sub(1));
                        select(client, &mut screen, next).await;
                    }
                    KeyCode::PageUp => screen.scrolled = screen.scrolled.saturating_add(PAGE),
                    KeyCode::PageDown => screen.scrolled = screen.scrolled.saturating_sub(PAGE),
                    KeyCode::Backspace => {
                        screen.input.pop();
                    }
                    KeyCode::Enter => submit(client, &mut screen).await,
                    KeyCode::Char(c) => {
                        screen.input.push(c);
                        announce_typing(socket, &mut screen).await;
                    }
                    _ => {}
                }
            }
            frame = next_frame(socket) => {
                let Some(frame) = frame else {
                    screen.notice = "disconnected from the server; restart roost chat".into();
                    continue;
                };
                match client.on_frame(socket, frame).await {
                    Ok(events) => absorb(client, &mut screen, events).await,
                    Err(err) => screen.notice = format!("sync failed: {err}"),
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

async fn select(client: &Client, screen: &mut Screen, index: usize) {
    if index != screen.selected {
        screen.selected = index;
        screen.scrolled = 0;
        mark_read(client, screen).await;
    }
}

/// Sends the input line: a message, or a command (`/react 3 👍`).
async fn submit(client: &mut Client, screen: &mut Screen) {
    let Some(id) = selected(screen) else { return };
    let text = std::mem::take(&mut screen.input);
    if text.trim().is_empty() {
        return;
    }
    let outcome = match text.strip_prefix('/') {
        Some(command) => run_command(client, &id, command).await,
        None => client.send_text(&id, &text).await.map(|seq| format!("sent #{seq}")).map_err(anyhow::Error::from),
    };
    match outcome {
        Ok(notice) => {
            screen.notice = notice;
            screen.scrolled = 0;
            refresh(client, screen).await;
        }
        Err(err) => {
            screen.input = text;
            screen.notice = format!("not sent: {err:#}");
        }
    }
}

/// A command typed in the input line, without its `/`.
async fn run_command(client: &mut Client, id: &ConversationId, command: &str) -> anyhow::Result<String> {
    let mut words = command.splitn(3, ' ');
    let name = words.next().unwrap_or_default();
    let mut seq = || -> anyhow::Result<u64> {
        let word = words.next().unwrap_or_default();
        word.trim_start_matches('#').parse().map_err(|_| anyhow::anyhow!("name a message by its number: /{name} 3 …"))
    };
    let content = match name {
        "react" => {
            let to_seq = seq()?;
            let emoji = words.next().unwrap_or("👍").trim().to_owned();
            Content::Reaction { to_seq, emoji, remove: false }
        }
        "unreact" => {
            let to_seq = seq()?;
            Content::Reaction { to_seq, emoji: words.next().unwrap_or("👍").trim().to_owned(), remove: true }
        }
        "reply" => {
            let to_seq = seq()?;
            Content::Reply { to_seq, body: words.next().unwrap_or_default().to_owned() }
        }
        "edit" => {
            let to_seq = seq()?;
            Content::Edit { to_seq, body: words.next().unwrap_or_default().to_owned() }
        }
        "delete" => Content::Delete { to_seq: seq()? },
        "poll" => {
            let rest: Vec<&str> = words.collect();
            let parts: Vec<String> = rest.join(" ").split('|').map(|part| part.trim().to_owned()).collect();
            let Some((question, options)) = parts.split_first() else {
                anyhow::bail!("/poll question | option | option")
            };
            if options.len() < 2 || options.len() > roost_client::content::MAX_POLL_OPTIONS {
                anyhow::bail!(
                    "a poll has 2 to {} options: /poll question | option | option",
                    roost_client::content::MAX_POLL_OPTIONS
                );
            }
            Content::Poll { question: question.clone(), options: options.to_vec(), multiple: false }
        }
        "vote" => {
            let to_seq = seq()?;
            let choices = words
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .map(|choice| match choice.parse::<u32>() {
                    Ok(n) if n > 0 => Ok(n - 1),
                    _ => Err(anyhow::anyhow!("vote by option numbers, from 1: /vote 5 2")),
                })
                .collect::<anyhow::Result<Vec<u32>>>()?;
            Content::PollVote { to_seq, choices }
        }
        "file" => {
            let path = std::path::PathBuf::from(words.collect::<Vec<_>>().join(" ").trim());
            let details = crate::file_details(&path);
            let (seq, file) = client.send_file(id, &path, details, std::sync::Arc::new(|_, _| {})).await?;
            return Ok(format!("sent #{seq}: {} ({})", file.name, file.size_text()));
        }
        "save" => {
            let to_seq = seq()?;
            let path = words.next().map(|path| std::path::PathBuf::from(path.trim()));
            let saved = crate::save_file(client, id, to_seq, path, false, std::sync::Arc::new(|_, _| {})).await?;
            return Ok(format!("saved {}", saved.display()));
        }
        "retention" => {
            let rest: Vec<&str> = words.collect();
            let policy = match rest.as_slice() {
                ["burn-on-read"] => RetentionPolicy::BurnOnRead,
                ["permanent"] => RetentionPolicy::Permanent,
                ["ttl", seconds] => RetentionPolicy::Ttl { ttl_secs: seconds.trim().parse()? },
                _ => anyhow::bail!("/retention ttl SECONDS, /retention burn-on-read or /retention permanent"),
            };
            client.set_retention(id, policy).await?;
            return Ok("retention set".into());
        }
        other => anyhow::bail!("no command /{other}; {HELP}"),
    };
    let seq = client.send(id, &content).await?;
    Ok(format!("sent #{seq}"))
}

async fn announce_typing(socket: &mut WebSocket, screen: &mut Screen) {
    let Some(conversation_id) = selected(screen) else { return };
    if screen.last_typing_sent.is_some_and(|at| at.elapsed() < TYPING_EVERY) {
        return;
    }
    screen.last_typing_sent = Some(Instant::now());
    let _ = send_frame(socket, &ClientFrame::Typing { conversation_id, active: true }).await;
}

async fn absorb(client: &Client, screen: &mut Screen, events: Vec<Event>) {
    // New members and senders get their names before they are shown.
    let unknown = events.iter().filter_map(Event::user).any(|user| !screen.names.knows(&user));
    let joined = events.iter().any(|event| matches!(event, Event::Joined(_) | Event::MembersChanged(_)));
    if unknown || joined {
        screen.names = Names::of(client, members_of_all(client)).await;
        screen.conversations = labels(client, &screen.names);
    }
    let mut changed = false;
    for event in events {
        match event {
            Event::Typing { conversation_id, user_id, active: true } => {
                screen.typing.insert(conversation_id, (user_id, Instant::now()));
            }
            Event::Typing { conversation_id, active: false, .. } => {
                screen.typing.remove(&conversation_id);
            }
            Event::Message(message) => {
                screen.typing.remove(&message.conversation_id);
                changed = true;
            }
            Event::Rejected { reason, .. } => screen.notice = format!("refused: {reason}"),
            Event::DevicesUpdated { added, removed } => {
                screen.notice = format!("devices: {added} added, {removed} removed from your conversations");
            }
            Event::Removed(_) | Event::Joined(_) | Event::ReadReceipt { .. } => changed = true,
            _ => {}
        }
    }
    if changed {
        mark_read(client, screen).await;
    }
}

/// Marks what the selected conversation shows as read, then reads every conversation's unread
/// count and read positions again.
async fn mark_read(client: &Client, screen: &mut Screen) {
    if let Some(id) = selected(screen)
        && let Some(last) = client.history(&id).ok().and_then(|messages| messages.last().map(|m| m.seq))
    {
        let _ = client.api().mark_read(&id, last).await;
    }
    refresh(client, screen).await;
}

async fn refresh(client: &Client, screen: &mut Screen) {
    if let Ok(summaries) = client.api().conversations().await {
        screen.summaries = summaries.into_iter().map(|summary| (summary.conversation_id, summary)).collect();
    }
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

/// The lines of a conversation: each message with its time, and for this user's messages
/// whether the others have read them.
fn message_lines(
    client: &Client,
    timeline: &Timeline,
    names: &Names,
    summary: Option<&ConversationSummary>,
) -> Vec<String> {
    let me = client.user_id();
    let others_read = |seq: u64| {
        summary.is_some_and(|summary| {
            let others: Vec<_> = summary.members.iter().filter(|member| member.user_id != me).collect();
            !others.is_empty() && others.iter().all(|member| member.read_seq.is_some_and(|read| read >= seq))
        })
    };
    let mut lines = Vec::new();
    for item in &timeline.items {
        let mut rendered = render(item, names);
        let at = clock(item.created_at);
        for line in &mut rendered {
            if line.starts_with('#') {
                *line = format!("{at} {line}");
                if item.sender_user == me {
                    line.push_str(if others_read(item.seq) { "  ✓✓ read" } else { "  ✓ sent" });
                }
            } else {
                *line = format!("      {line}");
            }
        }
        lines.extend(rendered);
    }
    lines
}

/// `HH:MM` in the local time zone.
fn clock(unix_ms: i64) -> String {
    let Ok(at) = jiff::Timestamp::from_millisecond(unix_ms) else { return "--:--".into() };
    at.to_zoned_datetime(jiff::tz::TimeZone::system()).strftime("%H:%M").to_string()
}

fn retention_text(policy: &RetentionPolicy) -> String {
    match policy {
        RetentionPolicy::BurnOnRead => "burn on read".into(),
        RetentionPolicy::Ttl { ttl_secs } => format!("kept {}", span(*ttl_secs)),
        RetentionPolicy::Permanent => "kept".into(),
    }
}

/// Seconds in the largest whole unit: "30 days", "2 hours", "90 s".
fn span(secs: u64) -> String {
    match secs {
        0 => "0 s".into(),
        secs if secs % 86_400 == 0 => format!("{} days", secs / 86_400),
        secs if secs % 3_600 == 0 => format!("{} hours", secs / 3_600),
        secs if secs % 60 == 0 => format!("{} min", secs / 60),
        secs => format!("{secs} s"),
    }
}

fn draw(frame: &mut ratatui::Frame<'_>, client: &Client, screen: &Screen) {
    let [main, input, status] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(3), Constraint::Length(1)]).areas(frame.area());
    let [left, right] = Layout::horizontal([Constraint::Length(34), Constraint::Min(10)]).areas(main);

    let items: Vec<ListItem<'_>> = screen
        .conversations
        .iter()
        .map(|(id, label)| match screen.summaries.get(id).map(|summary| summary.unread) {
            Some(unread) if unread > 0 => ListItem::new(format!("{label} ({unread})")),
            _ => ListItem::new(label.as_str()),
        })
        .collect();
    let mut list_state = ListState::default().with_selected(Some(screen.selected));
    let list = List::new(items)
        .block(Block::default().borders(Borders::ALL).title("Conversations"))
        .highlight_symbol("▶ ")
        .highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    frame.render_stateful_widget(list, left, &mut list_state);

    let id = selected(screen);
    let summary = id.and_then(|id| screen.summaries.get(&id));
    let timeline = id.and_then(|id| client.timeline(&id).ok()).unwrap_or_default();
    let names = screen.names.with(&timeline);
    let lines: Vec<Line<'_>> = message_lines(client, &timeline, &names, summary).into_iter().map(Line::from).collect();
    let visible = usize::from(right.height.saturating_sub(2));
    let newest = u16::try_from(lines.len().saturating_sub(visible)).unwrap_or(u16::MAX);
    let title = match summary {
        Some(summary) => format!("Messages · {}", retention_text(&summary.retention)),
        None => "Messages".into(),
    };
    let messages = Paragraph::new(lines)
        .block(Block::default().borders(Borders::ALL).title(title))
        .wrap(Wrap { trim: false })
        .scroll((newest.saturating_sub(screen.scrolled), 0));
    frame.render_widget(messages, right);

    frame.render_widget(
        Paragraph::new(screen.input.as_str()).block(Block::default().borders(Borders::ALL).title("Message")),
        input,
    );
    let typing = id
        .and_then(|id| screen.typing.get(&id))
        .map(|(user, _)| format!("{} is typing… · ", screen.names.who(user)))
        .unwrap_or_default();
    frame.render_widget(Paragraph::new(format!("{typing}{}", screen.notice)), status);
}
