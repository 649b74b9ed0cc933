//! `roost`: the Roost command-line client. Every message is end-to-end encrypted with MLS; the
//! server only relays ciphertext.

mod chat;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use roost_client::calls::{CallSignal, CallUpdate, Calls, EndReason};
use roost_client::client::next_frame;
use roost_client::content::CallAction;
use roost_client::{Client, ClientError, Content, Event, Timeline, TimelineItem};
use roost_proto::conversation::{ConversationKind, RetentionPolicy};
use roost_proto::{ConversationId, ErrorCode, UserId};

/// Roost: end-to-end encrypted chats from the command line.
#[derive(Parser)]
#[command(name = "roost", version)]
struct Cli {
    /// State directory (keys, MLS state, history).
    #[arg(long, global = true, env = "ROOST_HOME")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Ids are base64url and one in 64 begins with '-', as may a message's text: every positional
// that takes one accepts values that begin with a hyphen.
#[derive(Subcommand)]
enum Command {
    /// Create a new user with this device as its first device.
    Init {
        /// The server, such as http://127.0.0.1:8080 or https://chat.example.com (a certificate
        /// no public authority signed: name it in ROOST_CA_FILE).
        #[arg(long)]
        server: String,
        /// A handle to claim, such as alice.
        #[arg(long)]
        handle: Option<String>,
        /// An invite code, on invite-only servers.
        #[arg(long)]
        invite: Option<String>,
    },
    /// Show this user and device.
    Whoami,
    /// Show the safety number shared with another user, to compare out of band.
    Fingerprint {
        /// @handle or user id.
        #[arg(allow_hyphen_values = true)]
        user: String,
    },
    /// Link this (new) device to an existing user: shows a code to approve on the first device.
    Link {
        /// The server (only the first time).
        #[arg(long)]
        server: Option<String>,
        /// Print the code and return instead of waiting for approval.
        #[arg(long)]
        no_wait: bool,
    },
    /// Manage this user's devices.
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Send a direct message, creating the direct chat on first use.
    Dm {
        /// @handle or user id.
        #[arg(allow_hyphen_values = true)]
        user: String,
        /// The text.
        #[arg(allow_hyphen_values = true)]
        text: String,
    },
    /// Group conversations.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Send a message to a conversation (its id, or @user for the direct chat).
    Send {
        /// Conversation id or @user.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
        /// The text.
        #[arg(allow_hyphen_values = true)]
        text: String,
    },
    /// React to a message (by its number, as history shows it), or withdraw the reaction.
    React {
        /// Conversation id or @user.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
        /// The message's number.
        seq: u64,
        /// The reaction, such as 👍.
        emoji: String,
        /// Withdraw this reaction instead.
        #[arg(long)]
        remove: bool,
    },
    /// Reply to a message, quoting it.
    Reply {
        /// Conversation id or @user.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
        /// The message's number.
        seq: u64,
        /// The text.
        #[arg(allow_hyphen_values = true)]
        text: String,
    },
    /// Replace the text of one of your messages.
    Edit {
        /// Conversation id or @user.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
        /// The message's number.
        seq: u64,
        /// The new text.
        #[arg(allow_hyphen_values = true)]
        text: String,
    },
    /// Delete one of your messages for everyone.
    Delete {
        /// Conversation id or @user.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
        /// The message's number.
        seq: u64,
    },
    /// Send a file: encrypted on this device, uploaded with a progress bar (resuming after a
    /// broken connection), then announced in the conversation.
    SendFile {
        /// Conversation id or @user.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
        /// The file.
        path: PathBuf,
        /// The name to show instead of the file's own.
        #[arg(long)]
        name: Option<String>,
    },
    /// Save a file somebody sent (by its message number, as history shows it): downloaded,
    /// checked and decrypted, with a progress bar.
    Save {
        /// Conversation id or @user.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
        /// The message's number.
        seq: u64,
        /// Where to save it: a file, or a directory for the sender's file name (default: the
        /// current directory).
        path: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Share a place.
    Location {
        /// Conversation id or @user.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
        /// Latitude in degrees (south negative).
        #[arg(allow_negative_numbers = true)]
        latitude: f64,
        /// Longitude in degrees (west negative).
        #[arg(allow_negative_numbers = true)]
        longitude: f64,
        /// What the place is.
        #[arg(long)]
        label: Option<String>,
    },
    /// Share a Roost user's contact card.
    Contact {
        /// Conversation id or @user.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
        /// The user to share: @handle.
        user: String,
    },
    /// Ask a question with 2 to 32 options.
    Poll {
        /// Conversation id or @user.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
        /// The question.
        question: String,
        /// The options.
        #[arg(num_args = 2..=32, required = true)]
        options: Vec<String>,
        /// Let a vote choose several options.
        #[arg(long)]
        multiple: bool,
    },
    /// Vote in a poll by option numbers (1 for the first); no numbers withdraws your vote.
    Vote {
        /// Conversation id or @user.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
        /// The poll's message number.
        seq: u64,
        /// Option numbers.
        choices: Vec<u32>,
    },
    /// Close one of your polls: later votes do not count.
    ClosePoll {
        /// Conversation id or @user.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
        /// The poll's message number.
        seq: u64,
    },
    /// Call a conversation's other members (signalling only: this client carries no audio).
    /// Rings until answered or --ring seconds pass (then leaves a missed call), stays connected
    /// --talk seconds, then hangs up.
    Call {
        /// Conversation id or @user.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
        /// A video call.
        #[arg(long)]
        video: bool,
        /// Seconds to ring.
        #[arg(long, default_value_t = 45)]
        ring: u64,
        /// Seconds to stay in the call once answered.
        #[arg(long, default_value_t = 10)]
        talk: u64,
    },
    /// Answer a call that rings (as `roost listen` shows it), stay --talk seconds, hang up.
    Answer {
        /// Conversation id or @user.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
        /// The call id.
        #[arg(allow_hyphen_values = true)]
        call: String,
        /// Seconds to stay in the call.
        #[arg(long, default_value_t = 10)]
        talk: u64,
    },
    /// Decline a ringing call or end one.
    Hangup {
        /// Conversation id or @user.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
        /// The call id.
        #[arg(allow_hyphen_values = true)]
        call: String,
    },
    /// Set the name your conversations show for you (none: your handle again).
    Profile {
        /// The display name.
        display_name: Option<String>,
    },
    /// Fetch, decrypt, store and acknowledge new messages, and print them.
    Sync,
    /// Keep syncing and print messages as they arrive (Ctrl-C to stop).
    Listen,
    /// The interactive chat screen.
    Chat,
    /// Print a conversation's stored messages.
    History {
        /// Conversation id or @user.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
    },
    /// List this device's conversations.
    Conversations,
    /// Join a conversation of your user from this device by MLS external commit.
    Join {
        /// The conversation id.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
    },
    /// Push notifications: wake this device through a push endpoint while it is offline.
    Push {
        #[command(subcommand)]
        command: PushCommand,
    },
    /// Set a conversation's retention: burn-on-read, ttl SECONDS, or permanent.
    Retention {
        /// Conversation id or @user.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
        /// burn-on-read | ttl | permanent.
        policy: String,
        /// Seconds, for ttl.
        seconds: Option<u64>,
    },
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// List this user's devices.
    List,
    /// Approve a new device by the code it shows.
    Approve {
        /// The code, like ABCD-EFGH.
        code: String,
    },
    /// Revoke a device of this user (needs the identity key, on the first device).
    Revoke {
        /// The device id.
        #[arg(allow_hyphen_values = true)]
        device: String,
    },
}

#[derive(Subcommand)]
enum PushCommand {
    /// Show the server's push key and this device's subscription.
    Status,
    /// Subscribe this device with keys made here, at a Web Push endpoint (such as a UnifiedPush
    /// distributor's URL): the server sends a wake-up there whenever something arrives while
    /// this device is offline.
    Subscribe {
        /// The endpoint URL (https://).
        endpoint: String,
    },
    /// Remove this device's subscription.
    Unsubscribe,
    /// Open a push message's body (a file, or - for standard input) with this device's keys.
    Open {
        /// The file holding the body as it arrived.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Create a group with these users; prints its id.
    Create {
        /// @handles or user ids.
        #[arg(allow_hyphen_values = true)]
        users: Vec<String>,
    },
    /// Add users to a group.
    Add {
        /// The group.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
        /// @handles or user ids.
        #[arg(allow_hyphen_values = true)]
        users: Vec<String>,
    },
    /// Remove users from a group.
    Remove {
        /// The group.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
        /// @handles or user ids.
        #[arg(allow_hyphen_values = true)]
        users: Vec<String>,
    },
    /// Leave a group.
    Leave {
        /// The group.
        #[arg(allow_hyphen_values = true)]
        conversation: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("roost: cannot start: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("roost: {}", explain(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Prints a line to stdout; a closed pipe (`roost ... | head`) is not an error worth a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// A short, clear message for the common failures.
fn explain(err: &anyhow::Error) -> String {
    match err.downcast_ref::<ClientError>() {
        Some(ClientError::Unreachable(server)) => format!("cannot reach the server at {server} (is roostd running?)"),
        Some(ClientError::Server { code: ErrorCode::NotAMember, .. }) => {
            "you are not a member of that conversation".into()
        }
        Some(ClientError::Server { code: ErrorCode::HandleTaken, .. }) => "that handle belongs to someone else".into(),
        Some(other) => other.to_string(),
        None => format!("{err:#}"),
    }
}

fn home(cli_home: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match cli_home {
        Some(home) => Ok(home),
        None => {
            let base = std::env::var_os("HOME").context("set --home or ROOST_HOME")?;
            Ok(PathBuf::from(base).join(".roost"))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let home = home(cli.home)?;
    match cli.command {
        Command::Init { server, handle, invite } => {
            let client = Client::register(&home, &server, invite.as_deref()).await?;
            if let Some(handle) = handle {
                client.claim_handle(&handle).await?;
                say!("registered @{} as {}", handle.trim_start_matches('@'), client.user_id());
            } else {
                say!("registered {}", client.user_id());
            }
            Ok(())
        }
        Command::Link { server, no_wait } => link(&home, server, no_wait).await,
        command => {
            let mut client = Client::open(&home)?;
            // Reading what is stored locally needs no server.
            let offline = matches!(
                command,
                Command::History { .. } | Command::Conversations | Command::Push { command: PushCommand::Open { .. } }
            );
            if !offline {
                client.connect().await?;
            }
            run_with(&mut client, command).await
        }
    }
}

async fn push(client: &mut Client, command: PushCommand) -> anyhow::Result<()> {
    match command {
        PushCommand::Status => {
            let key = client.push_server_key().await?;
            say!("server push key  {}", roost_proto::bytes::encode(&key));
            let status = client.push_status().await?;
            match status.endpoint {
                Some(endpoint) => {
                    let since = status
                        .created_at
                        .and_then(|at| jiff::Timestamp::from_millisecond(at).ok())
                        .map(|at| {
                            format!(
                                " (since {})",
                                at.to_zoned_datetime(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M")
                            )
                        })
                        .unwrap_or_default();
                    say!("subscribed       {endpoint}{since}");
                }
                None => say!("subscribed       no"),
            }
            if client.push_endpoint()?.is_some() {
                say!("keys             on this device (roost push open opens its wake-ups)");
            }
        }
        PushCommand::Subscribe { endpoint } => {
            client.subscribe_push_endpoint(&endpoint).await?;
            say!("subscribed: wake-ups go to {endpoint} while this device is offline");
        }
        PushCommand::Unsubscribe => {
            client.unsubscribe_push().await?;
            say!("unsubscribed");
        }
        PushCommand::Open { file } => {
            let body = if file.as_os_str() == "-" {
                let mut body = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut body)?;
                body
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let opened = client.open_wake_up(&body)?;
            say!("{}", String::from_utf8_lossy(&opened));
        }
    }
    Ok(())
}

async fn link(home: &std::path::Path, server: Option<String>, no_wait: bool) -> anyhow::Result<()> {
    if let Some(server) = server {
        let code = Client::start_link(home, &server).await?;
        say!("{code}");
        if no_wait {
            return Ok(());
        }
        eprintln!("approve it on your first device: roost devices approve {code}");
    }
    for _ in 0..300 {
        if let Some(client) = Client::finish_link(home).await? {
            say!("linked: this device is {} of user {}", client.device_id(), client.user_id());
            return Ok(());
        }
        if no_wait {
            bail!("not approved yet");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    bail!("the link was not approved within 10 minutes")
}

async fn run_with(client: &mut Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Whoami => {
            let me = client.api().whoami().await?;
            say!("user    {}", me.user_id);
            say!("device  {}", me.device_id);
            if let Some(handle) = me.handle {
                say!("handle  @{handle}");
            }
            say!("server  {}", client.api().base());
            say!("identity key on this device: {}", if client.holds_identity() { "yes" } else { "no" });
        }
        Command::Fingerprint { user } => {
            let other = client.resolve(&user).await?;
            say!("{}", roost_client::keys::safety_number(&client.user_id(), &other));
        }
        Command::Devices { command: DevicesCommand::List } => {
            for device in client.own_devices().await? {
                let this = if device.device_id == client.device_id() { " (this device)" } else { "" };
                say!("{}  {}{this}", device.device_id, device.name.unwrap_or_default());
            }
        }
        Command::Devices { command: DevicesCommand::Approve { code } } => {
            let device = client.approve_link(&code).await?;
            say!("approved {device}; it joins your conversations after its next sync and yours");
        }
        Command::Devices { command: DevicesCommand::Revoke { device } } => {
            let device = device.parse().map_err(|_| anyhow::anyhow!("{device:?} is not a device id"))?;
            client.revoke_device(&device).await?;
            say!("revoked {device}");
        }
        Command::Dm { user, text } => {
            let other = client.resolve(&user).await?;
            client.sync().await?;
            let id = match client.direct_with(&other)? {
                Some(id) => id,
                None => client.create_conversation(ConversationKind::Direct, &[other]).await?,
            };
            let seq = client.send_text(&id, &text).await?;
            say!("sent #{seq} to {user} ({id})");
        }
        Command::Group { command } => group(client, command).await?,
        Command::Push { command } => push(client, command).await?,
        Command::Send { conversation, text } => {
            client.sync().await?;
            let id = conversation_of(client, &conversation).await?;
            let seq = client.send_text(&id, &text).await?;
            say!("sent #{seq}");
        }
        Command::Sync => {
            sync_and_print(client).await?;
        }
        Command::Chat => chat::run(client).await?,
        Command::Listen => {
            sync_and_print(client).await?;
            let names = Names::of(client, members_of_all(client)).await;
            let mut calls = Calls::new(client.user_id(), client.device_id());
            loop {
                // Pushed over the WebSocket; reconnect whenever the connection ends.
                let shown = |event| match event {
                    Event::Call(signal) => print_call(&names, &mut calls, &signal),
                    event => print_event(&names, event),
                };
                if let Err(err) = client.listen(shown).await {
                    eprintln!("roost: {err}; reconnecting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                client.connect().await?;
            }
        }
        Command::History { conversation } => {
            let id = conversation_of(client, &conversation).await?;
            let timeline = client.timeline(&id)?;
            let names = Names::of(client, timeline.items.iter().map(|item| item.sender_user)).await.with(&timeline);
            for item in &timeline.items {
                for line in render(item, &names) {
                    say!("{line}");
                }
            }
        }
        Command::React { conversation, seq, emoji, remove } => {
            send_content(client, &conversation, Content::Reaction { to_seq: seq, emoji, remove }).await?;
        }
        Command::Reply { conversation, seq, text } => {
            send_content(client, &conversation, Content::Reply { to_seq: seq, body: text }).await?;
        }
        Command::Edit { conversation, seq, text } => {
            send_content(client, &conversation, Content::Edit { to_seq: seq, body: text }).await?;
        }
        Command::SendFile { conversation, path, name } => {
            client.sync().await?;
            let id = conversation_of(client, &conversation).await?;
            let details = roost_client::FileDetails { name, ..file_details(&path) };
            let bar = progress_bar("sending");
            let progress = bar.clone();
            let (seq, file) = client
                .send_file(&id, &path, details, std::sync::Arc::new(move |done, total| progress.update(done, total)))
                .await?;
            bar.finish();
            say!("sent #{seq}: {} ({})", file.name, file.size_text());
        }
        Command::Save { conversation, seq, path, force } => {
            client.sync().await?;
            let id = conversation_of(client, &conversation).await?;
            let bar = progress_bar("saving");
            let progress = bar.clone();
            let saved = save_file(
                client,
                &id,
                seq,
                path,
                force,
                std::sync::Arc::new(move |done, total| progress.update(done, total)),
            )
            .await?;
            bar.finish();
            say!("saved {}", saved.display());
        }
        Command::Delete { conversation, seq } => {
            send_content(client, &conversation, Content::Delete { to_seq: seq }).await?;
        }
        Command::Location { conversation, latitude, longitude, label } => {
            let content = Content::Location {
                latitude_e7: e7(latitude, 90.0, "latitude")?,
                longitude_e7: e7(longitude, 180.0, "longitude")?,
                accuracy_m: None,
                label,
            };
            send_content(client, &conversation, content).await?;
        }
        Command::Contact { conversation, user } => {
            let handle = user.strip_prefix('@').context("name the contact by @handle")?.to_owned();
            let user_id = client.resolve(&user).await?;
            let content = Content::Contact {
                name: format!("@{handle}"),
                user_id: Some(user_id.to_string()),
                handle: Some(handle),
                phone: None,
                email: None,
            };
            send_content(client, &conversation, content).await?;
        }
        Command::Poll { conversation, question, options, multiple } => {
            send_content(client, &conversation, Content::Poll { question, options, multiple }).await?;
        }
        Command::Vote { conversation, seq, choices } => {
            if choices.contains(&0) {
                bail!("options are numbered from 1");
            }
            let choices = choices.into_iter().map(|choice| choice - 1).collect();
            send_content(client, &conversation, Content::PollVote { to_seq: seq, choices }).await?;
        }
        Command::ClosePoll { conversation, seq } => {
            send_content(client, &conversation, Content::PollClose { to_seq: seq }).await?;
        }
        Command::Call { conversation, video, ring, talk } => call(client, &conversation, video, ring, talk).await?,
        Command::Answer { conversation, call, talk } => {
            client.sync().await?;
            let id = conversation_of(client, &conversation).await?;
            let mut socket = client.open_socket().await?;
            client.call_signal(&id, &call, CallAction::Answer, None, None, false).await?;
            say!("answered; in the call (this client carries no audio)");
            let ended = stay_in_call(client, &mut socket, &call, talk).await?;
            if !ended {
                client.call_signal(&id, &call, CallAction::Hangup, None, None, false).await?;
            }
            say!("call ended");
        }
        Command::Hangup { conversation, call } => {
            client.sync().await?;
            let id = conversation_of(client, &conversation).await?;
            client.call_signal(&id, &call, CallAction::Hangup, None, None, false).await?;
            say!("hung up");
        }
        Command::Profile { display_name } => {
            client.sync().await?;
            let conversations = client.conversations()?;
            for (id, _) in &conversations {
                client.send(id, &Content::Profile { display_name: display_name.clone() }).await?;
            }
            say!("sent to {} conversations", conversations.len());
        }
        Command::Join { conversation } => {
            let id = conversation_of(client, &conversation).await?;
            client.join_by_external_commit(&id).await?;
            say!("joined {id}");
        }
        Command::Conversations => {
            let conversations: Vec<_> = client
                .conversations()?
                .into_iter()
                .map(|(id, kind)| (id, kind, client.members(&id).unwrap_or_default()))
                .collect();
            learn_names(client, conversations.iter().flat_map(|(_, _, members)| members.iter().copied())).await;
            for (id, kind, members) in conversations {
                let members: Vec<String> = members.iter().map(|user| who(client, user)).collect();
                say!("{id}  {kind}  {}", members.join(", "));
            }
        }
        Command::Retention { conversation, policy, seconds } => {
            let id = conversation_of(client, &conversation).await?;
            let policy = match (policy.as_str(), seconds) {
                ("burn-on-read" | "burn_on_read", _) => RetentionPolicy::BurnOnRead,
                ("ttl", Some(ttl_secs)) => RetentionPolicy::Ttl { ttl_secs },
                ("permanent", _) => RetentionPolicy::Permanent,
                _ => bail!("the policy is burn-on-read, ttl SECONDS or permanent"),
            };
            client.set_retention(&id, policy).await?;
            say!("retention set");
        }
        Command::Init { .. } | Command::Link { .. } => {}
    }
    Ok(())
}

async fn group(client: &mut Client, command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::Create { users } => {
            let users = resolve_all(client, &users).await?;
            let id = client.create_conversation(ConversationKind::Group, &users).await?;
            say!("{id}");
        }
        GroupCommand::Add { conversation, users } => {
            client.sync().await?;
            let id = conversation_of(client, &conversation).await?;
            let users = resolve_all(client, &users).await?;
            client.add_users(&id, &users).await?;
            say!("added");
        }
        GroupCommand::Remove { conversation, users } => {
            client.sync().await?;
            let id = conversation_of(client, &conversation).await?;
            let users = resolve_all(client, &users).await?;
            client.remove_users(&id, &users).await?;
            say!("removed");
        }
        GroupCommand::Leave { conversation } => {
            let id = conversation_of(client, &conversation).await?;
            client.leave(&id).await?;
            say!("left");
        }
    }
    Ok(())
}

async fn sync_and_print(client: &mut Client) -> anyhow::Result<()> {
    let mut events = client.sync().await?;
    // Keep every group's MLS tree in step with who is really there: add this user's new
    // devices, remove revoked devices and users who left.
    events.extend(client.upkeep().await?);
    let users = events.iter().filter_map(Event::user).chain(members_of_all(client));
    let names = Names::of(client, users.collect::<Vec<_>>()).await;
    // What was printed has been read: move the read markers (others see them as receipts).
    let mut read: std::collections::BTreeMap<ConversationId, u64> = std::collections::BTreeMap::new();
    for event in &events {
        if let Event::Message(message) = event {
            read.insert(message.conversation_id, message.seq);
        }
    }
    for event in events {
        print_event(&names, event);
    }
    for (id, seq) in read {
        client.api().mark_read(&id, seq).await?;
    }
    Ok(())
}

fn print_event(names: &Names, event: Event) {
    let tag = |id: &ConversationId| short(&id.to_string());
    let who = |user: &UserId| names.who(user);
    match event {
        Event::Message(message) => {
            say!("[{}] {}: {}", tag(&message.conversation_id), who(&message.sender_user), message.content.display())
        }
        Event::Joined(id) => say!("[{}] joined", tag(&id)),
        Event::Removed(id) => say!("[{}] you are no longer a member", tag(&id)),
        Event::Typing { conversation_id, user_id, active: true } => {
            say!("[{}] {} is typing…", tag(&conversation_id), who(&user_id))
        }
        Event::ReadReceipt { conversation_id, user_id, seq } => {
            say!("[{}] {} read up to #{seq}", tag(&conversation_id), who(&user_id))
        }
        Event::Presence { user_id, online } => {
            say!("{} is {}", who(&user_id), if online { "online" } else { "offline" })
        }
        Event::DevicesUpdated { added, removed } => {
            if added > 0 {
                say!("added {added} of your other devices to your conversations");
            }
            if removed > 0 {
                say!("removed {removed} departed devices from your conversations");
            }
        }
        Event::Rejected { conversation_id, reason } => {
            say!("[{}] REFUSED: {reason}", conversation_id.map(|id| tag(&id)).unwrap_or_default())
        }
        _ => {}
    }
}

async fn resolve_all(client: &Client, users: &[String]) -> anyhow::Result<Vec<UserId>> {
    let mut resolved = Vec::new();
    for user in users {
        resolved.push(client.resolve(user).await?);
    }
    Ok(resolved)
}

/// A conversation id, or `@user` for the direct chat with that user.
async fn conversation_of(client: &Client, text: &str) -> anyhow::Result<ConversationId> {
    if text.starts_with('@') {
        let user = client.resolve(text).await?;
        return client.direct_with(&user)?.with_context(|| format!("no direct chat with {text} yet; use roost dm"));
    }
    text.parse().map_err(|_| anyhow::anyhow!("{text:?} is not a conversation id or @user"))
}

/// How a user is shown: "you", or their @handle (or the start of their id while the handle is
/// unknown).
fn who(client: &Client, user: &UserId) -> String {
    if *user == client.user_id() { "you".to_owned() } else { client.name(user) }
}

/// Rings a conversation until someone answers or `ring` seconds pass, then stays `talk`
/// seconds. The offer is sent again every few seconds while it rings, for devices that connect
/// meanwhile (they ring once: the call id is the same).
async fn call(client: &mut Client, conversation: &str, video: bool, ring: u64, talk: u64) -> anyhow::Result<()> {
    const OFFER_AGAIN: Duration = Duration::from_secs(2);
    client.sync().await?;
    let id = conversation_of(client, conversation).await?;
    let names = Names::of(client, client.members(&id)?).await;
    let mut socket = client.open_socket().await?;
    let mut calls = Calls::new(client.user_id(), client.device_id());
    let call_id = roost_client::calls::new_call_id();
    calls.place(&call_id, id, video, now_ms());
    say!("calling (call {call_id})");
    let ringing_until = tokio::time::Instant::now() + Duration::from_secs(ring);
    let mut offer_at = tokio::time::Instant::now();
    let answered = loop {
        if tokio::time::Instant::now() >= offer_at {
            client.call_signal(&id, &call_id, CallAction::Offer, None, None, video).await?;
            offer_at += OFFER_AGAIN;
        }
        let deadline = offer_at.min(ringing_until);
        let frame = tokio::select! {
            frame = next_frame(&mut socket) => frame.context("the server closed the connection")?,
            () = tokio::time::sleep_until(deadline) => {
                if deadline == ringing_until {
                    break None;
                }
                continue;
            }
        };
        let mut answered_by = None;
        for event in client.on_frame(&mut socket, frame).await? {
            let Event::Call(signal) = event else { continue };
            match calls.receive(&signal, now_ms()) {
                Some(CallUpdate::Answered { .. }) => answered_by = Some(signal.sender_user),
                Some(CallUpdate::Ended { reason, .. }) => {
                    say!("call ended: {}", reason_text(reason));
                    return Ok(());
                }
                _ => {}
            }
        }
        if answered_by.is_some() {
            break answered_by;
        }
    };
    let Some(user) = answered else {
        client.call_signal(&id, &call_id, CallAction::Hangup, None, None, video).await?;
        client.send(&id, &Content::MissedCall { call_id, video }).await?;
        say!("no answer; left a missed call");
        return Ok(());
    };
    say!("answered by {}; in the call (this client carries no audio)", names.who(&user));
    let ended = stay_in_call(client, &mut socket, &call_id, talk).await?;
    if !ended {
        client.call_signal(&id, &call_id, CallAction::Hangup, None, None, video).await?;
    }
    say!("call ended");
    Ok(())
}

/// Stays in a call for `talk` seconds; `true` if the other side hung up first.
async fn stay_in_call(
    client: &mut Client,
    socket: &mut roost_client::api::WebSocket,
    call_id: &str,
    talk: u64,
) -> anyhow::Result<bool> {
    let until = tokio::time::Instant::now() + Duration::from_secs(talk);
    loop {
        let frame = tokio::select! {
            frame = next_frame(socket) => frame.context("the server closed the connection")?,
            () = tokio::time::sleep_until(until) => return Ok(false),
        };
        for event in client.on_frame(socket, frame).await? {
            if let Event::Call(signal) = event
                && signal.call_id == call_id
                && signal.action == CallAction::Hangup
            {
                say!("{} hung up", client.name(&signal.sender_user));
                return Ok(true);
            }
        }
    }
}

/// Prints what a call signal changed, as `roost listen` shows calls.
fn print_call(names: &Names, calls: &mut Calls, signal: &CallSignal) {
    let tag = short(&signal.conversation_id.to_string());
    match calls.receive(signal, now_ms()) {
        Some(CallUpdate::Ringing(call)) => {
            let kind = if call.video { "video call" } else { "call" };
            say!(
                "[{tag}] {} is calling ({kind} {}); answer: roost answer {} {}",
                names.who(&call.caller),
                call.id,
                call.conversation_id,
                call.id
            );
        }
        Some(CallUpdate::Ended { call_id, reason }) => say!("[{tag}] call {call_id} ended: {}", reason_text(reason)),
        Some(CallUpdate::Answered { call_id, .. }) => say!("[{tag}] call {call_id} answered"),
        _ => {}
    }
}

fn reason_text(reason: EndReason) -> &'static str {
    match reason {
        EndReason::HungUp => "hung up",
        EndReason::Declined => "declined",
        EndReason::Busy => "busy",
        EndReason::AnsweredElsewhere => "answered on another of your devices",
        EndReason::Missed => "missed",
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Sends `content` to a conversation after catching up with it (to its current epoch).
/// Saves the file of message `seq` to `path` (a file, or a directory for the sender's file
/// name; default: the current directory), never over an existing file unless `force`.
async fn save_file(
    client: &Client,
    id: &ConversationId,
    seq: u64,
    path: Option<PathBuf>,
    force: bool,
    progress: roost_client::files::Progress,
) -> anyhow::Result<PathBuf> {
    let history = client.history(id)?;
    let Some(message) = history.iter().find(|message| message.seq == seq) else {
        bail!("there is no message #{seq} here")
    };
    let Content::Attachment(file) = &message.content else { bail!("message #{seq} is not a file") };
    let path = path.unwrap_or_else(|| PathBuf::from("."));
    let target = if path.is_dir() { path.join(safe_file_name(&file.name)) } else { path };
    if target.exists() && !force {
        bail!("{} exists; choose another path or pass --force", target.display());
    }
    client.save_attachment(file, &target, progress).await?;
    Ok(target)
}

/// A sender's file name as a name in a directory: its last component only, so that a name such
/// as `../../.profile` cannot place a file elsewhere; hidden and empty names get a visible one.
fn safe_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    match last {
        "" | "." | ".." => "received-file".to_owned(),
        hidden if hidden.starts_with('.') => format!("received{hidden}"),
        plain => plain.to_owned(),
    }
}

/// What the CLI tells recipients about a file: its media type and, for PNG and JPEG images,
/// their dimensions and a small JPEG thumbnail (none if the image does not decode).
fn file_details(path: &std::path::Path) -> roost_client::FileDetails {
    let media_type = media_type_of(path);
    let mut details = roost_client::FileDetails { media_type: media_type.clone(), ..Default::default() };
    if matches!(media_type.as_deref(), Some("image/png" | "image/jpeg")) {
        if let Ok((width, height)) = image::image_dimensions(path) {
            details.width = Some(width);
            details.height = Some(height);
        }
        details.thumbnail = thumbnail(path);
    }
    details
}

/// A JPEG of the image at most 160 pixels on its longer side (smaller if that does not fit in a
/// message's thumbnail).
fn thumbnail(path: &std::path::Path) -> Option<Vec<u8>> {
    let picture = image::open(path).ok()?;
    for (side, quality) in [(160, 70), (96, 60), (64, 50)] {
        let small = picture.thumbnail(side, side).to_rgb8();
        let mut encoded = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut encoded, quality);
        if small.write_with_encoder(encoder).is_ok() && encoded.len() <= roost_client::MAX_THUMBNAIL_BYTES {
            return Some(encoded);
        }
    }
    None
}

/// The media type of a file by its extension, for the kinds people send most.
fn media_type_of(path: &std::path::Path) -> Option<String> {
    let extension = path.extension()?.to_str()?.to_ascii_lowercase();
    let media_type = match extension.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "mp4" => "video/mp4",
        "mov" => "video/quicktime",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "ogg" | "opus" => "audio/ogg",
        "wav" => "audio/wav",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "zip" => "application/zip",
        _ => return None,
    };
    Some(media_type.to_owned())
}

/// A byte progress bar on stderr (drawn only on a terminal).
#[derive(Clone)]
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn update(&self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn progress_bar(what: &str) -> Bar {
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    Bar(bar)
}

async fn send_content(client: &mut Client, conversation: &str, content: Content) -> anyhow::Result<()> {
    client.sync().await?;
    let id = conversation_of(client, conversation).await?;
    let seq = client.send(&id, &content).await?;
    say!("sent #{seq}");
    Ok(())
}

/// Degrees as units of 10⁻⁷ degrees, if within ±`limit`.
fn e7(degrees: f64, limit: f64, what: &str) -> anyhow::Result<i32> {
    if !(-limit..=limit).contains(&degrees) {
        bail!("{what} must be between -{limit} and {limit} degrees");
    }
    // Within ±180 degrees, so within i32 once scaled.
    #[allow(clippy::cast_possible_truncation)]
    Ok((degrees * 1e7).round() as i32)
}

/// A shown message as lines: the quote it answers, the message, its reactions.
pub(crate) fn render(item: &TimelineItem, names: &Names) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(quote) = &item.quote {
        lines.push(format!("  > #{} {}: {}", quote.seq, names.who(&quote.sender_user), quote.text));
    }
    let mut text = item.text();
    if let (Content::Poll { options, .. }, false) = (&item.content, item.deleted) {
        let numbered: Vec<String> =
            options.iter().enumerate().map(|(n, option)| format!("{} {option}", n + 1)).collect();
        text.push_str(&format!(" (options: {})", numbered.join(", ")));
    }
    lines.push(format!("#{} {}: {text}", item.seq, names.who(&item.sender_user)));
    if !item.reactions.is_empty() {
        let reactions: Vec<String> = item
            .reactions
            .iter()
            .map(|(emoji, users)| {
                let users: Vec<String> = users.iter().map(|user| names.who(user)).collect();
                format!("{emoji} {}", users.join(", "))
            })
            .collect();
        lines.push(format!("  [{}]", reactions.join(" · ")));
    }
    lines
}

/// How users are shown in printed events: what the client knew of them when the snapshot was
/// taken (a listener's callback cannot reach the client).
pub(crate) struct Names {
    me: UserId,
    known: std::collections::HashMap<UserId, String>,
}

impl Names {
    pub(crate) async fn of(client: &Client, users: impl IntoIterator<Item = UserId>) -> Self {
        let users: Vec<UserId> = users.into_iter().collect();
        learn_names(client, users.iter().copied()).await;
        Self { me: client.user_id(), known: users.iter().map(|user| (*user, client.name(user))).collect() }
    }

    /// Whether the snapshot holds `user` (or `user` is this user).
    pub(crate) fn knows(&self, user: &UserId) -> bool {
        *user == self.me || self.known.contains_key(user)
    }

    /// The same, with the display names the conversation's members set for themselves
    /// ("Alice L. (@alice)").
    pub(crate) fn with(&self, timeline: &Timeline) -> Self {
        let mut known = self.known.clone();
        for (user, display_name) in &timeline.display_names {
            if *user != self.me {
                known.insert(*user, format!("{display_name} ({})", self.who(user)));
            }
        }
        Self { me: self.me, known }
    }

    pub(crate) fn who(&self, user: &UserId) -> String {
        match self.known.get(user) {
            _ if *user == self.me => "you".to_owned(),
            Some(name) => name.clone(),
            None => short(&user.to_string()),
        }
    }
}

/// Every member of every conversation this device is in.
pub(crate) fn members_of_all(client: &Client) -> Vec<UserId> {
    let conversations = client.conversations().unwrap_or_default();
    conversations.iter().flat_map(|(id, _)| client.members(id).unwrap_or_default()).collect()
}

/// Looks up the handles of `users` not known yet. A server out of reach leaves ids shown: the
/// names are for reading, and nothing else depends on them.
async fn learn_names(client: &Client, users: impl IntoIterator<Item = UserId>) {
    let mut users: Vec<UserId> = users.into_iter().filter(|user| *user != client.user_id()).collect();
    users.sort();
    users.dedup();
    // Without the server, ids are shown instead (history and conversations work offline).
    client.learn_names(&users).await.ok();
}

fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn images_go_with_their_dimensions_and_a_small_thumbnail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sunset.png");
        let picture = image::RgbImage::from_fn(1200, 800, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 90]));
        picture.save(&path).unwrap();
        let details = super::file_details(&path);
        assert_eq!(details.media_type.as_deref(), Some("image/png"));
        assert_eq!((details.width, details.height), (Some(1200), Some(800)));
        let thumbnail = details.thumbnail.expect("a thumbnail");
        assert!(thumbnail.len() <= roost_client::MAX_THUMBNAIL_BYTES, "{} bytes", thumbnail.len());
        let small = image::load_from_memory(&thumbnail).unwrap();
        assert_eq!((small.width(), small.height()), (160, 107));

        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "not an image").unwrap();
        let details = super::file_details(&text);
        assert_eq!((details.media_type.as_deref(), details.width, details.thumbnail), (Some("text/plain"), None, None));
        // A file named like an image that is not one goes without them.
        let fake = dir.path().join("fake.jpg");
        std::fs::write(&fake, "not a jpeg").unwrap();
        assert_eq!(super::file_details(&fake).thumbnail, None);
    }

    #[test]
    fn file_names_from_senders_stay_in_the_directory() {
        use super::safe_file_name;
        assert_eq!(safe_file_name("cat.png"), "cat.png");
        assert_eq!(safe_file_name("../../.profile"), "received.profile");
        assert_eq!(safe_file_name("/etc/passwd"), "passwd");
        assert_eq!(safe_file_name("..\\..\\boot.ini"), "boot.ini");
        assert_eq!(safe_file_name(".."), "received-file");
        assert_eq!(safe_file_name(""), "received-file");
    }

    use clap::Parser as _;

    use super::*;

    #[test]
    fn ids_and_texts_that_begin_with_a_hyphen_are_values_and_help_still_works() {
        let cli = Cli::try_parse_from(["roost", "send", "-QsLVJcBxH7gJc1SpevkfQ", "-hi"]);
        let Ok(Cli { command: Command::Send { conversation, text }, .. }) = cli else { unreachable!("a send") };
        assert_eq!((conversation.as_str(), text.as_str()), ("-QsLVJcBxH7gJc1SpevkfQ", "-hi"));
        let cli = Cli::try_parse_from(["roost", "group", "add", "-Abc", "-Def", "@bob"]);
        let Ok(Cli { command: Command::Group { command: GroupCommand::Add { conversation, users } }, .. }) = cli else {
            unreachable!("a group add")
        };
        assert_eq!((conversation.as_str(), users.len()), ("-Abc", 2));
        let help = Cli::try_parse_from(["roost", "send", "--help"]).map(|_| ()).map_err(|e| e.kind());
        assert_eq!(help, Err(clap::error::ErrorKind::DisplayHelp));
    }
}
