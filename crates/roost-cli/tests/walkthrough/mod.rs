//! The README walkthrough, run with the real `roost` binary against a real server. The suite
//! runs once per backend: `walkthrough_sqlite.rs` and `walkthrough_postgres.rs` each include it
//! with their `BACKEND`.

use std::path::Path;
use std::process::Command;

use roost_testkit::{TestServer, files_contain};

/// Runs `roost --home HOME args...`, asserting success; returns stdout.
fn roost(home: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_roost")).arg("--home").arg(home).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "roost {args:?} failed: {}{stdout}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// Runs a failing `roost` command; returns stderr.
fn roost_fails(home: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_roost")).arg("--home").arg(home).args(args).output().unwrap();
    assert!(!output.status.success(), "roost {args:?} should fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough() {
    let Some(running) = TestServer::on(crate::BACKEND).start().await else { return };
    let server = running.base.clone();
    let homes = tempfile::tempdir().unwrap();

    let walk = tokio::task::spawn_blocking(move || {
        let (alice, bob, carol, phone) = (
            homes.path().join("alice"),
            homes.path().join("bob"),
            homes.path().join("carol"),
            homes.path().join("phone"),
        );
        assert!(roost(&alice, &["init", "--server", &server, "--handle", "alice"]).starts_with("registered @alice"));
        roost(&bob, &["init", "--server", &server, "--handle", "bob"]);

        // Alice and bob exchange messages.
        assert!(roost(&alice, &["dm", "@bob", "Hi Bob, secret walkthrough one"]).starts_with("sent #1"));
        let synced = roost(&bob, &["sync"]);
        assert!(synced.contains("joined") && synced.contains("@alice: Hi Bob, secret walkthrough one"), "{synced}");
        roost(&bob, &["dm", "@alice", "Hi Alice, secret walkthrough two"]);
        let synced = roost(&alice, &["sync"]);
        assert!(synced.contains("@bob: Hi Alice, secret walkthrough two"), "senders show as @handles: {synced}");
        assert_eq!(roost(&alice, &["fingerprint", "@bob"]), roost(&bob, &["fingerprint", "@alice"]));

        // Alice links a second device.
        let code = roost(&phone, &["link", "--server", &server, "--no-wait"]).trim().to_owned();
        roost(&alice, &["devices", "approve", &code]);
        assert!(roost(&phone, &["link"]).starts_with("linked"));
        assert!(roost(&alice, &["sync"]).contains("added 1 of your other devices"));
        assert!(roost(&phone, &["sync"]).contains("joined"));
        roost(&bob, &["send", "@alice", "Hello both of you, secret walkthrough three"]);
        assert!(roost(&phone, &["sync"]).contains("secret walkthrough three"));
        assert!(roost(&alice, &["sync"]).contains("secret walkthrough three"));
        let history = roost(&phone, &["history", "@bob"]);
        assert!(!history.contains("secret walkthrough one"), "forward-only: {history}");
        assert!(history.contains("@bob: Hello both of you"), "{history}");

        // Carol joins a group.
        roost(&carol, &["init", "--server", &server, "--handle", "carol"]);
        let group = roost(&alice, &["group", "create", "@bob"]).trim().to_owned();
        roost(&alice, &["send", &group, "before carol"]);
        roost(&alice, &["group", "add", &group, "@carol"]);
        let welcome = sent(&roost(&alice, &["send", &group, "Welcome Carol, secret walkthrough four"]));
        let carols = roost(&carol, &["sync"]);
        assert!(carols.contains("secret walkthrough four") && !carols.contains("before carol"), "{carols}");
        let conversations = roost(&alice, &["conversations"]);
        assert!(conversations.contains("group") && conversations.contains("@carol"), "{conversations}");

        // Reactions, replies, edits, polls and profiles, as every member sees them.
        roost(&bob, &["react", &group, &welcome, "👍"]);
        roost(&carol, &["react", &group, &welcome, "👍"]);
        roost(&carol, &["react", &group, &welcome, "🎉"]);
        roost(&carol, &["react", &group, &welcome, "🎉", "--remove"]);
        roost(&carol, &["reply", &group, &welcome, "Thanks!"]);
        roost(&bob, &["edit", &group, &welcome, "not bob's to edit"]);
        roost(&alice, &["edit", &group, &welcome, "Welcome, Carol!"]);
        let poll = sent(&roost(&alice, &["poll", &group, "Lunch?", "pizza", "sushi"]));
        roost(&bob, &["vote", &group, &poll, "1"]);
        roost(&bob, &["vote", &group, &poll, "2"]);
        roost(&carol, &["vote", &group, &poll, "2"]);
        roost(&alice, &["vote", &group, &poll, "1"]);
        roost(&alice, &["close-poll", &group, &poll]);
        roost(&bob, &["vote", &group, &poll, "1"]);
        roost(&carol, &["profile", "Carol C."]);
        roost(&carol, &["location", &group, "52.5163", "-13.3777", "--label", "the gate"]);
        roost(&carol, &["contact", &group, "@bob"]);
        let oops = sent(&roost(&bob, &["send", &group, "sent to the wrong chat"]));
        roost(&bob, &["delete", &group, &oops]);
        roost(&bob, &["sync"]);
        let history = roost(&bob, &["history", &group]);
        for shown in [
            &format!("#{welcome} @alice: Welcome, Carol! (edited)"),
            "[👍 you, Carol C. (@carol)]",
            &format!("  > #{welcome} @alice: Welcome, Carol! (edited)"),
            "Carol C. (@carol): Thanks!",
            "(location the gate: 52.51630, -13.37770)",
            "Carol C. (@carol): (contact @bob)",
            &format!("#{oops} you: (deleted)"),
        ] {
            assert!(history.contains(shown), "{shown:?} in {history}");
        }
        assert!(!history.contains("🎉") && !history.contains("not bob's") && !history.contains("wrong chat"));
        // Every member's device counts the same votes.
        for member in [&alice, &bob, &carol] {
            roost(member, &["sync"]);
            let tally = roost(member, &["history", &group]);
            assert!(tally.contains("(poll) Lunch? [pizza 1 / sushi 2] (closed)"), "{tally}");
        }
        assert!(roost_fails(&bob, &["vote", &group, &poll, "0"]).contains("numbered from 1"));
        assert!(roost_fails(&bob, &["location", &group, "91", "0"]).contains("between -90 and 90"));

        // Clear errors.
        assert!(roost_fails(&alice, &["dm", "@nobody", "hi"]).contains("nobody holds the handle @nobody"));
        assert!(roost_fails(&homes.path().join("none"), &["whoami"]).contains("run `roost init` first"));
        let bobs = roost(&bob, &["conversations"]);
        // Conversations are listed by id, which is random: find the direct chat by its kind.
        let direct = bobs.lines().find(|line| line.contains("  direct  ")).unwrap().split_whitespace().next().unwrap();
        let stranger = roost_fails(&carol, &["send", direct, "x"]);
        assert!(stranger.contains("not in conversation"), "{stranger}");
        homes
    });
    let homes = walk.await.unwrap();

    for secret in
        ["secret walkthrough one", "secret walkthrough two", "secret walkthrough three", "secret walkthrough four"]
    {
        assert!(!running.database().contains(secret).await, "{secret:?} reached the server's data");
        assert!(files_contain(homes.path(), secret));
    }
}

/// The sequence number in roost's "sent #N" answer.
fn sent(output: &str) -> String {
    output.trim().strip_prefix("sent #").unwrap_or_else(|| panic!("not a send: {output}")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_go_with_send_file_and_come_back_with_save() {
    let Some(running) = TestServer::on(crate::BACKEND).start().await else { return };
    let server = running.base.clone();
    let data_dir = running.config.data_dir.clone();
    let homes = tempfile::tempdir().unwrap();
    tokio::task::spawn_blocking(move || {
        let (alice, bob) = (homes.path().join("alice"), homes.path().join("bob"));
        roost(&alice, &["init", "--server", &server, "--handle", "alice"]);
        roost(&bob, &["init", "--server", &server, "--handle", "bob"]);
        roost(&alice, &["dm", "@bob", "a file follows"]);

        // Three server chunks' worth and a bit, with a recognisable plaintext throughout.
        let original: Vec<u8> = (0..3 * 1024 * 1024 + 4321)
            .map(|i: usize| if i % 4096 < 24 { b"secret walkthrough file."[i % 4096] } else { (i % 253) as u8 })
            .collect();
        let source = homes.path().join("report.pdf");
        std::fs::write(&source, &original).unwrap();
        let answer = roost(&alice, &["send-file", "@bob", source.to_str().unwrap()]);
        assert!(answer.starts_with("sent #2: report.pdf (3.0 MiB)"), "{answer}");

        let synced = roost(&bob, &["sync"]);
        assert!(synced.contains("@alice: (file report.pdf, 3.0 MiB)"), "{synced}");
        let history = roost(&bob, &["history", "@alice"]);
        assert!(history.contains("#2") && history.contains("report.pdf"), "{history}");

        let downloads = homes.path().join("downloads");
        std::fs::create_dir(&downloads).unwrap();
        let saved = roost(&bob, &["save", "@alice", "2", downloads.to_str().unwrap()]);
        assert!(saved.starts_with("saved ") && saved.contains("report.pdf"), "{saved}");
        assert_eq!(std::fs::read(downloads.join("report.pdf")).unwrap(), original);
        let refused = roost_fails(&bob, &["save", "@alice", "2", downloads.to_str().unwrap()]);
        assert!(refused.contains("exists"), "{refused}");
        roost(&bob, &["save", "@alice", "2", downloads.to_str().unwrap(), "--force"]);
        let not_a_file = roost_fails(&bob, &["save", "@alice", "1"]);
        assert!(not_a_file.contains("not a file"), "{not_a_file}");

        // The server holds only ciphertext of it.
        assert!(!files_contain(&data_dir, "secret walkthrough file."), "plaintext in the server's data");
    })
    .await
    .unwrap();
}

/// A `roost` command left running (`listen`, `call`), its output lines read as they come.
struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(home: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_roost"))
            .arg("--home")
            .arg(home)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines, seen: Vec::new() }
    }

    /// The first line (from now on) that contains `text`.
    fn wait_for(&mut self, text: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line with {text:?}; saw {:?}", self.seen),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_ring_every_device_and_unanswered_ones_leave_a_missed_call() {
    let Some(running) = TestServer::on(crate::BACKEND).start().await else { return };
    let server = running.base.clone();
    let homes = tempfile::tempdir().unwrap();
    tokio::task::spawn_blocking(move || {
        let (alice, phone, bob) = (homes.path().join("alice"), homes.path().join("phone"), homes.path().join("bob"));
        roost(&alice, &["init", "--server", &server, "--handle", "alice"]);
        roost(&bob, &["init", "--server", &server, "--handle", "bob"]);
        let code = roost(&phone, &["link", "--server", &server, "--no-wait"]).trim().to_owned();
        roost(&alice, &["devices", "approve", &code]);
        roost(&phone, &["link"]);
        roost(&bob, &["dm", "@alice", "call me"]);
        roost(&alice, &["sync"]);
        roost(&phone, &["sync"]);

        // Bob calls: both of alice's devices ring.
        let mut laptop = Running::start(&alice, &["listen"]);
        let mut pocket = Running::start(&phone, &["listen"]);
        let mut caller = Running::start(&bob, &["call", "@alice", "--ring", "60", "--talk", "30"]);
        let ringing = laptop.wait_for("@bob is calling");
        let call = ringing.split("(call ").nth(1).and_then(|rest| rest.split(')').next()).unwrap().to_owned();
        assert!(pocket.wait_for("@bob is calling").contains(&call));

        // The phone answers (one process per device: its listener stops first); the laptop stops
        // ringing; the phone hangs up after a second and bob's call ends.
        drop(pocket);
        let answered = roost(&phone, &["answer", "@bob", &call, "--talk", "1"]);
        assert!(answered.contains("answered") && answered.contains("call ended"), "{answered}");
        assert!(laptop.wait_for(&format!("call {call} ended")).contains("answered on another of your devices"));
        caller.wait_for("answered by @alice");
        caller.wait_for("@alice hung up");
        caller.wait_for("call ended");

        // Nobody answers: the ringing stops and a missed call stays in the history.
        let unanswered = roost(&bob, &["call", "@alice", "--ring", "2"]);
        assert!(unanswered.contains("no answer; left a missed call"), "{unanswered}");
        assert!(laptop.wait_for("ended: missed").contains("call"));
        laptop.wait_for("@bob: (missed call)");
        drop(laptop);
        assert!(roost(&alice, &["history", "@bob"]).contains("@bob: (missed call)"));
    })
    .await
    .unwrap();
}

/// A `roost chat` screen running in a detached tmux session of its own.
struct ChatScreen {
    socket: String,
}

impl ChatScreen {
    /// Starts the screen for `home`, or `None` (with a notice) where tmux is not installed.
    fn start(home: &Path) -> Option<Self> {
        if Command::new("tmux").arg("-V").output().is_err() {
            eprintln!("SKIPPED: tmux is not installed; the chat screen test needs it (.ci/run installs it)");
            return None;
        }
        let socket = format!("roost-test-{}-{}", std::process::id(), home.file_name()?.to_string_lossy());
        let chat = format!("{} --home {} chat", env!("CARGO_BIN_EXE_roost"), home.display());
        let status = Command::new("tmux")
            .args(["-u", "-L", &socket, "new-session", "-d", "-x", "150", "-y", "40", &chat])
            .env("LANG", "C.UTF-8")
            .status()
            .unwrap();
        assert!(status.success(), "tmux could not start the chat screen");
        Some(Self { socket })
    }

    fn text(&self) -> String {
        let output = Command::new("tmux").args(["-u", "-L", &self.socket, "capture-pane", "-p"]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Waits until the screen shows every one of `texts`.
    fn shows(&self, texts: &[&str]) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let screen = self.text();
            if texts.iter().all(|text| screen.contains(text)) {
                return screen;
            }
            assert!(std::time::Instant::now() < deadline, "the screen never showed {texts:?}:\n{screen}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    fn type_line(&self, text: &str) {
        let keys = ["-u", "-L", &self.socket, "send-keys", "-l", text];
        assert!(Command::new("tmux").args(keys).status().unwrap().success());
        let enter = ["-u", "-L", &self.socket, "send-keys", "Enter"];
        assert!(Command::new("tmux").args(enter).status().unwrap().success());
    }
}

impl Drop for ChatScreen {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_screen_shows_handles_reactions_edits_and_what_was_read() {
    let Some(running) = TestServer::on(crate::BACKEND).start().await else { return };
    let server = running.base.clone();
    let homes = tempfile::tempdir().unwrap();
    tokio::task::spawn_blocking(move || {
        let (alice, bob) = (homes.path().join("alice"), homes.path().join("bob"));
        roost(&alice, &["init", "--server", &server, "--handle", "alice"]);
        roost(&bob, &["init", "--server", &server, "--handle", "bob"]);
        // "sent #1 to @alice (<conversation id>)"
        let dm = roost(&bob, &["dm", "@alice", "helo from bob"]);
        let hello = dm.split_whitespace().nth(1).unwrap().trim_start_matches('#').to_owned();
        roost(&alice, &["sync"]);
        let Some(screen) = ChatScreen::start(&alice) else { return };
        screen.shows(&["direct: @bob", "@bob: helo from bob"]);

        // Bob reacts to and edits his message while alice watches.
        roost(&bob, &["react", "@alice", &hello, "👍"]);
        roost(&bob, &["edit", "@alice", &hello, "hello from bob"]);
        screen.shows(&["@bob: hello from bob (edited)", "👍 @bob"]);

        // Alice answers and reacts from the screen; bob sees both, and alice sees bob read it.
        screen.type_line("hi bob, from the chat screen");
        screen.shows(&["you: hi bob, from the chat screen"]);
        screen.type_line(&format!("/react {hello} 🎉"));
        screen.shows(&["🎉 you"]);
        let synced = roost(&bob, &["sync"]);
        assert!(synced.contains("@alice: hi bob, from the chat screen"), "{synced}");
        let history = roost(&bob, &["history", "@alice"]);
        assert!(history.contains("🎉 @alice"), "{history}");
        screen.shows(&["you: hi bob, from the chat screen  ✓✓ read"]);

        // A poll made and voted in from the screen.
        screen.type_line("/poll Lunch? | pizza | sushi");
        let shown = screen.shows(&["(poll) Lunch? [pizza 0 / sushi 0]"]);
        let poll = shown.lines().find(|line| line.contains("(poll) Lunch?")).unwrap();
        let poll = poll.split('#').nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
        screen.type_line(&format!("/vote {poll} 2"));
        screen.shows(&["(poll) Lunch? [pizza 0 / sushi 1]"]);
    })
    .await
    .unwrap();
}

/// `roost push`: a device subscribes at an endpoint (the tests' push service), is woken while
/// offline, and opens the wake-up with its own keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_wake_ups_through_the_cli() {
    let Some(receiver) = roost_testkit::push::PushReceiver::start().await else { return };
    let Some(running) =
        TestServer::on(crate::BACKEND).configure(|config| config.push.allow_http_loopback = true).start().await
    else {
        return;
    };
    let server = running.base.clone();
    let homes = tempfile::tempdir().unwrap();
    let (alice, bob) = (homes.path().join("alice"), homes.path().join("bob"));
    let endpoint = receiver.endpoint().await;
    let url = endpoint.body["endpoint"].as_str().unwrap().to_owned();
    let (alice_home, bob_home, subscribe_url) = (alice.clone(), bob.clone(), url.clone());
    tokio::task::spawn_blocking(move || {
        roost(&alice_home, &["init", "--server", &server, "--handle", "alice"]);
        roost(&bob_home, &["init", "--server", &server, "--handle", "bob"]);
        assert!(roost(&bob_home, &["push", "status"]).contains("subscribed       no"));
        let refused = roost_fails(&bob_home, &["push", "subscribe", "http://10.0.0.1/push"]);
        assert!(refused.contains("PushEndpointRefused") && refused.contains("loopback"), "{refused}");
        assert!(roost(&bob_home, &["push", "subscribe", &subscribe_url]).starts_with("subscribed"));
        let status = roost(&bob_home, &["push", "status"]);
        assert!(status.contains(&subscribe_url) && status.contains("keys"), "{status}");
        roost(&alice_home, &["dm", "@bob", "wake up"]);
    })
    .await
    .unwrap();

    let pushes = receiver.wait_for(&endpoint, 1).await;
    let body = roost_proto::bytes::decode(pushes[0]["body"].as_str().unwrap()).unwrap();
    let file = homes.path().join("wake-up.bin");
    std::fs::write(&file, body).unwrap();
    let (bob_home, file_path) = (bob.clone(), file.clone());
    tokio::task::spawn_blocking(move || {
        assert_eq!(roost(&bob_home, &["push", "open", file_path.to_str().unwrap()]).trim(), r#"{"type":"wake"}"#);
        assert!(roost(&bob_home, &["sync"]).contains("wake up"));
        assert_eq!(roost(&bob_home, &["push", "unsubscribe"]).trim(), "unsubscribed");
        assert!(roost(&bob_home, &["push", "status"]).contains("subscribed       no"));
        roost_fails(&bob_home, &["push", "open", file_path.to_str().unwrap()]);
    })
    .await
    .unwrap();
}
