//! schemathesis against a running server: requests generated from /openapi.json, with a valid
//! token and without, must never get a 5xx, a status the document does not list for that route,
//! or a response that breaks the document's schema. A bounded run (`ROOST_SCHEMATHESIS_EXAMPLES`
//! per operation and phase, 25 by default, fixed seed); README.md gives the command for a large
//! run. Skipped with a notice where `schemathesis` is not installed (`.ci/run` installs it).

use std::process::Command;

/// The checks that must hold (schemathesis's positive- and negative-data checks are left out: an
/// Ed25519 key that is not a curve point, or a cursor the server never issued, match the schema
/// and are rightly refused).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance";

fn installed() -> bool {
    Command::new("schemathesis").arg("--version").output().is_ok_and(|output| output.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_get_only_documented_answers() {
    if !installed() {
        eprintln!(
            "NOTICE: schemathesis is not installed; skipping the schema conformance run (pip install schemathesis)"
        );
        return;
    }
    let server = server!();
    let alice = server.user("alice").await;
    let (schema, token) = (server.url("/openapi.json"), alice.token());
    let examples = std::env::var("ROOST_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".to_owned());
    let dir = tempfile::tempdir().expect("dir");
    let work = dir.path().to_owned();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut reports = Vec::new();
        for authorization in [Some(format!("Authorization: Bearer {token}")), None] {
            let mut command = Command::new("schemathesis");
            command
                .current_dir(&work)
                .args(["run", &schema, "--checks", CHECKS, "--phases", "examples,coverage,fuzzing"])
                .args(["--max-examples", &examples, "--continue-on-failure", "--workers", "1"])
                .args(["--generation-deterministic", "--no-color"])
                .env("SCHEMATHESIS_HOOKS", "")
                .env("NO_COLOR", "1");
            if let Some(header) = &authorization {
                // Logging out would end the token for every request after it.
                command.args(["--header", header, "--exclude-operation-id", "logout"]);
            }
            let output = command.output().expect("schemathesis runs");
            let text =
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            reports.push((authorization.is_some(), output.status.success(), text));
        }
        reports
    })
    .await
    .expect("the runs finish");
    for (with_token, passed, report) in outcome {
        let how = if with_token { "with" } else { "without" };
        let lines: Vec<&str> = report.lines().collect();
        let summary = lines[lines.len().saturating_sub(16)..].join("\n");
        eprintln!("schemathesis {how} a token:\n{summary}");
        assert!(passed, "schemathesis {how} a token found failures:\n{report}");
        assert!(summary.contains("passed"), "{summary}");
    }
}
