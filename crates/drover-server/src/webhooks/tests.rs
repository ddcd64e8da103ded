//! The delivery loop's decisions, against a real store and a refused connection.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]
use super::*;
use drover_store::audit::AuditEvent;

/// A port with nothing listening: connections are refused at once.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn events_older_than_a_day_are_tried_once_then_given_up_and_new_ones_retried() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(drover_store::SqliteStore::open(&dir.path().join("db")).unwrap());
    let sealer = Arc::new(Sealer::new(&Sealer::generate_key().unwrap()).unwrap());
    let (_appended, rx) = watch::channel(0);
    let hooks = Webhooks::new(store.clone(), sealer.clone(), "me".into(), rx, &[]).unwrap();
    let hook = store
        .create_webhook(&Webhook {
            id: "wh-1".into(),
            url: format!("http://127.0.0.1:{}/", closed_port()),
            events: vec!["login*".into()],
            description: String::new(),
            sealed_secret: sealer.seal(&secret_context("wh-1"), b"k").unwrap(),
            created_by: "admin".into(),
            created_at: 0,
            state: HookState::default(),
        })
        .await
        .unwrap();
    let event = |action: &str, at_ms: i64| AuditEvent {
        at_ms,
        action: action.into(),
        ..AuditEvent::default()
    };
    let two_days_ago = now_ms() - 2 * GIVE_UP_MS;
    store
        .append_audit(vec![
            event("login", two_days_ago),
            event("other", two_days_ago),
            event("login", two_days_ago),
            event("login", now_ms()),
        ])
        .await
        .unwrap();
    store
        .lease_webhooks("me", now_ms(), now_ms() + LEASE_MS)
        .await
        .unwrap();
    let mut skipped = Skipped::default();
    // The two old events: one attempt each, given up; the skipped one between them moves
    // the cursor too; the new one fails and waits for its retry.
    let step = hooks.step(&hook.id, &mut skipped).await.unwrap();
    assert!(matches!(step, Step::RetryAt(_)));
    let log = store.list_deliveries("wh-1", 10).await.unwrap();
    let outcomes: Vec<(i64, &str)> = log
        .iter()
        .rev()
        .map(|d| (d.seq, d.outcome.as_str()))
        .collect();
    assert_eq!(outcomes, [(1, "gave_up"), (3, "gave_up"), (4, "failed")]);
    assert!(log[0].error.contains("refused"), "{}", log[0].error);
    let state = store.get_webhook("wh-1").await.unwrap().unwrap().state;
    assert_eq!((state.cursor, state.attempts), (3, 1));
    assert!(state.next_at_ms > now_ms());
    // Not before its time.
    assert!(matches!(
        hooks.step(&hook.id, &mut skipped).await.unwrap(),
        Step::RetryAt(_)
    ));
    assert_eq!(store.list_deliveries("wh-1", 10).await.unwrap().len(), 3);
    // Another process, which does not hold the lease, sends (at least once) but cannot
    // move it on.
    let due = HookState {
        cursor: 3,
        ..HookState::default()
    };
    assert!(store
        .advance_webhook("wh-1", "me", now_ms(), &due, None)
        .await
        .unwrap());
    let other = Webhooks::new(
        store.clone(),
        sealer,
        "other".into(),
        watch::channel(0).1,
        &[],
    )
    .unwrap();
    let step = other.step(&hook.id, &mut Skipped::default()).await.unwrap();
    assert!(matches!(step, Step::Gone));
    assert_eq!(store.get_webhook("wh-1").await.unwrap().unwrap().state, due);
}

#[test]
fn backoff_doubles_to_a_cap() {
    assert_eq!(backoff_ms(1), 1_000);
    assert_eq!(backoff_ms(2), 2_000);
    assert_eq!(backoff_ms(4), 8_000);
    assert_eq!(backoff_ms(20), MAX_BACKOFF_MS);
    assert_eq!(backoff_ms(i64::MAX), MAX_BACKOFF_MS);
    assert_eq!(backoff_ms(0), 1_000);
}

#[test]
fn signatures_cover_the_timestamp_and_the_body() {
    let s = signature(b"k", 100, b"{}");
    assert!(s.starts_with("sha256=") && s.len() == 7 + 64, "{s}");
    assert_ne!(s, signature(b"k", 101, b"{}"));
    assert_ne!(s, signature(b"k", 100, b"{ }"));
    assert_ne!(s, signature(b"j", 100, b"{}"));
    // RFC 4231 test case 2, to pin the construction to plain HMAC-SHA256.
    let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
    let tag = hmac::sign(&key, b"what do ya want for nothing?");
    assert_eq!(
        hex::encode(tag.as_ref()),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}
