//! What a shared PostgreSQL database allows and must survive: several servers writing one
//! conversation, and the database going away under traffic and coming back.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::join_all;
use reqwest::StatusCode;
use roost_testkit::TestDatabase;

use crate::api::common::{TestServer, assert_error};
use crate::api::conversations::{create, devices, send, sync_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_database_give_concurrent_sends_one_gap_free_order() {
    let first = server!();
    let second = first.another().await;
    let alice = first.user("alice").await;
    let bob = second.user("bob").await;
    let id = create(&first, &alice.token(), "direct", &devices(&bob), None).await;

    // Alice sends through one server while bob sends through the other, all at once.
    let sends = (0..200).map(|i| {
        let (server, token) = if i % 2 == 0 { (&first, alice.token()) } else { (&second, bob.token()) };
        async move { send(server, &token, &id, &format!("m{i}"), 1).await }
    });
    let mut assigned = BTreeSet::new();
    for (status, body) in join_all(sends).await {
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert!(assigned.insert(body["seq"].as_u64().unwrap()), "a sequence number given twice: {body}");
    }
    assert_eq!(assigned, (1..=200).collect::<BTreeSet<u64>>());

    // A retry through the other server returns the original.
    let (status, retried) = send(&second, &alice.token(), &id, "m0", 1).await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    let (_, original) = send(&first, &alice.token(), &id, "m0", 1).await;
    assert_eq!(retried["seq"], original["seq"]);

    // Both servers serve the same log.
    let through_first: Vec<u64> = sync_all(&first, &bob.token()).await.entries.iter().map(|e| e.seq).collect();
    let through_second: Vec<u64> = sync_all(&second, &bob.token()).await.entries.iter().map(|e| e.seq).collect();
    assert_eq!(through_first, (1..=200).collect::<Vec<u64>>());
    assert_eq!(through_first, through_second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_gives_503_and_the_server_recovers_by_itself() {
    let Some(database) = TestDatabase::create(crate::BACKEND).await else { return };
    let (proxy, url) = database.behind_proxy().await.expect("a PostgreSQL database");
    let mut config = roost_testkit::config_for(&database);
    config.database_url = Some(url);
    config.postgres.acquire_timeout_secs = 1;
    let server = TestServer::start_on(database, config).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let id = create(&server, &alice.token(), "direct", &devices(&bob), None).await;

    // Connections killed under traffic: each send is either stored or refused as unavailable,
    // never an internal error, and sending goes on by itself.
    let mut acknowledged = BTreeSet::new();
    for round in 0..10 {
        let sends = (0..20).map(|i| {
            let token = alice.token();
            let server = &server;
            async move { send(server, &token, &id, &format!("r{round}-{i}"), 1).await }
        });
        let terminate = server.database().terminate_connections();
        let (results, _) = futures::join!(join_all(sends), terminate);
        for (status, body) in results {
            match status {
                StatusCode::CREATED => {
                    acknowledged.insert(body["seq"].as_u64().unwrap());
                }
                StatusCode::SERVICE_UNAVAILABLE => assert_eq!(body["error"]["code"], "unavailable", "{body}"),
                other => panic!("{other}: {body}"),
            }
        }
    }
    let (status, body) = send(&server, &alice.token(), &id, "after the terminations", 1).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // (A send answered 503 because its commit's reply was lost may be stored too.)
    let stored: BTreeSet<u64> = sync_all(&server, &bob.token()).await.entries.iter().map(|e| e.seq).collect();
    assert!(acknowledged.is_subset(&stored), "every acknowledged send is stored");
    assert!(stored.contains(&body["seq"].as_u64().unwrap()));

    // The database unreachable: 503 with Retry-After, not ready, still alive.
    proxy.cut();
    let response = server
        .http
        .post(server.url(&format!("/v1/conversations/{id}/messages")))
        .bearer_auth(bob.token())
        .json(&serde_json::json!({"client_message_id": "during", "epoch": 1, "ciphertext": "AAAA"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.json::<serde_json::Value>().await.unwrap()["error"]["code"], "unavailable");
    assert_error(&server.get("/v1/sync", Some(&bob.token())).await, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert_eq!(server.get("/readyz", None).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.get("/healthz", None).await.0, StatusCode::OK);

    // Back: ready again and serving, with no restart.
    proxy.restore();
    let mut ready = false;
    for _ in 0..100 {
        if server.get("/readyz", None).await.0 == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the server did not become ready again");
    let (status, body) = send(&server, &bob.token(), &id, "after the outage", 1).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_at_a_time_does_the_background_work_and_another_takes_over() {
    let first = server!(|config| config.retention.prune_interval_secs = 1);
    let second = first.another().await;
    let leads = |server: &TestServer| server.services.ctx.leads_background_work.load(Ordering::Relaxed);

    // Each asks at every tick (the first one at start): one of them leads, never both.
    let mut waited = Duration::ZERO;
    while !(leads(&first) || leads(&second)) {
        assert!(waited < Duration::from_secs(10), "nobody took the background work");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    for _ in 0..30 {
        assert!(!(leads(&first) && leads(&second)), "both lead");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The leader goes away (its database connections with it): the other takes over within an
    // interval.
    let (leader, follower) = if leads(&first) { (first, second) } else { (second, first) };
    let _database = leader.halt().await;
    let mut waited = Duration::ZERO;
    while !leads(&follower) {
        assert!(waited < Duration::from_secs(10), "the remaining server did not take over");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
}
