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
        roost(&alice, &["close-poll", &group, &poll]);
        roost(&bob, &["vote", &group, &poll, "1"]);
        roost(&carol, &["profile", "Carol C."]);
        roost(&carol, &["location", &group, "52.5163", "-13.3777", "--label", "the gate"]);
        roost(&bob, &["sync"]);
        let history = roost(&bob, &["history", &group]);
        for shown in [
            &format!("#{welcome} @alice: Welcome, Carol! (edited)"),
            "[👍 you, Carol C. (@carol)]",
            &format!("  > #{welcome} @alice: Welcome, Carol! (edited)"),
            "Carol C. (@carol): Thanks!",
            "(poll) Lunch? [pizza 0 / sushi 2] (closed)",
            "(location the gate: 52.51630, -13.37770)",
        ] {
            assert!(history.contains(shown), "{shown:?} in {history}");
        }
        assert!(!history.contains("🎉") && !history.contains("not bob's"), "{history}");
        assert!(roost_fails(&bob, &["vote", &group, &poll, "0"]).contains("numbered from 1"));
        assert!(roost_fails(&bob, &["location", &group, "91", "0"]).contains("between -90 and 90"));

        // Clear errors.
        assert!(roost_fails(&alice, &["dm", "@nobody", "hi"]).contains("nobody holds the handle @nobody"));
        assert!(roost_fails(&homes.path().join("none"), &["whoami"]).contains("run `roost init` first"));
        let bobs = roost(&bob, &["conversations"]);
        let direct = bobs.split_whitespace().next().unwrap();
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
