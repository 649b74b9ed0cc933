//! `roost` against a server that serves TLS with a certificate generated here, trusted through
//! `ROOST_CA_FILE`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: failing loudly is the point.

use std::path::Path;
use std::process::{Command, Output};

use roost_testkit::tls_server;

fn roost(home: &Path, ca_file: Option<&Path>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_roost"));
    command.arg("--home").arg(home).args(args).env_remove("ROOST_CA_FILE");
    if let Some(file) = ca_file {
        command.env("ROOST_CA_FILE", file);
    }
    command.output().unwrap()
}

fn succeeds(output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "roost failed: {}{stdout}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roost_talks_to_a_tls_server_whose_certificate_it_is_told_to_trust() {
    let files = tempfile::tempdir().unwrap();
    let (_running, certificate, server) = tls_server(files.path()).await;
    let homes = tempfile::tempdir().unwrap();
    let ca = certificate.cert_path.clone();

    tokio::task::spawn_blocking(move || {
        let (alice, bob) = (homes.path().join("alice"), homes.path().join("bob"));
        let refused = roost(&alice, None, &["init", "--server", &server, "--handle", "alice"]);
        assert!(!refused.status.success());
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(said.contains("TLS") && said.contains("ROOST_CA_FILE"), "{said}");

        let ca = Some(ca.as_path());
        assert!(
            succeeds(roost(&alice, ca, &["init", "--server", &server, "--handle", "alice"])).starts_with("registered")
        );
        succeeds(roost(&bob, ca, &["init", "--server", &server, "--handle", "bob"]));
        succeeds(roost(&alice, ca, &["dm", "@bob", "hello over TLS"]));
        assert!(succeeds(roost(&bob, ca, &["sync"])).contains("hello over TLS"));
    })
    .await
    .unwrap();
}
