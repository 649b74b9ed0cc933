//! A disk that fills up, on a small tmpfs the test mounts (it needs root; elsewhere it skips
//! with a notice): sends fail with a clear error and store nothing, everything acknowledged
//! before stays, and sends succeed again once there is room, without a restart.

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;
use serde_json::json;

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .is_ok_and(|output| output.status.success());
        mounted.then(|| Self(dir.to_owned()))
    }

    fn grow(&self, size: &str) {
        let remounted = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("mount runs");
        assert!(remounted.success(), "remounting the tmpfs");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_sends_clearly_keeps_what_was_acknowledged_and_recovers() {
    let dir = tempfile::tempdir().expect("dir");
    let Some(disk) = SmallDisk::mount(dir.path(), "6m") else {
        eprintln!("NOTICE: cannot mount a tmpfs here (needs root); skipping the full-disk test");
        return;
    };
    let data_dir = dir.path().to_owned();
    let server = server!(move |config| {
        config.data_dir = data_dir;
        config.database_url = None;
    });
    let alice = server.user("alice").await;
    let token = alice.token();
    let id = crate::api::conversations::create(&server, &token, "group", &[], None).await;
    let path = format!("/v1/conversations/{id}/messages");
    let ciphertext = roost_proto::bytes::encode(&[9u8; 60 * 1024]);

    let mut acknowledged = Vec::new();
    let refusal = loop {
        let n = acknowledged.len();
        assert!(n < 1000, "6 MiB never filled up");
        let body = json!({"client_message_id": format!("m{n}"), "epoch": 1, "ciphertext": ciphertext});
        let (status, answer) = server.post(&path, Some(&token), body).await;
        if status != StatusCode::CREATED {
            break (status, answer);
        }
        acknowledged.push(answer["seq"].as_u64().expect("seq"));
    };
    assert!(acknowledged.len() > 10, "only {} sends fitted", acknowledged.len());
    let (status, answer) = &refusal;
    assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["error"]["code"], "unavailable");
    assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains("full")), "{answer}");
    // Still full: the same refusal, and the server keeps answering.
    let again = json!({"client_message_id": "again", "epoch": 1, "ciphertext": ciphertext});
    assert_eq!(server.post(&path, Some(&token), again.clone()).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.get("/healthz", None).await.0, StatusCode::OK);

    // Room again: sends succeed without a restart, and nothing acknowledged went missing.
    disk.grow("64m");
    let (status, answer) = server.post(&path, Some(&token), again).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let stored = crate::api::conversations::sync_all(&server, &token).await;
    let seqs: Vec<u64> = stored.entries.iter().filter(|e| e.conversation_id == id).map(|e| e.seq).collect();
    for seq in &acknowledged {
        assert!(seqs.contains(seq), "acknowledged seq {seq} is gone");
    }
    assert_eq!(seqs.len(), acknowledged.len() + 1, "refused sends stored nothing");
    drop(server);
}
