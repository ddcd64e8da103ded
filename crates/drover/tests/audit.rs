//! The audit log end to end: what the API does is recorded with who, from where and how it
//! ended; `drover audit verify` finds an entry edited, removed or reordered in the database
//! file, and a chain rewritten to hide it (the signed checkpoint no longer matches).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use drover_store::audit::entry_hash;
use drover_testkit::Env;

fn env() -> Env {
    Env::new(env!("CARGO_BIN_EXE_drover")).unwrap()
}

fn entries(env: &Env, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["audit", "list", "--limit", "1000", "-o", "json"];
    all.extend(args);
    serde_json::from_str(&env.cli_ok(&all).unwrap()).unwrap()
}

/// `drover audit verify`: (intact, what it printed).
fn verify(env: &Env) -> (bool, String) {
    let out = env.cli(&["audit", "verify", "-o", "json"]).unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const COLS: &str = "seq, at_ms, actor, actor_kind, token, source, action, resource, outcome, \
                    reason, prev_hash, hash";

/// An entry's row, every column, to put back after tampering with it.
fn snapshot(db: &rusqlite::Connection, seq: i64) -> Vec<rusqlite::types::Value> {
    db.query_row(
        &format!("SELECT {COLS} FROM audit WHERE seq = ?1"),
        [seq],
        |r| (0..12).map(|i| r.get(i)).collect(),
    )
    .unwrap()
}

fn put_back(db: &rusqlite::Connection, row: &[rusqlite::types::Value]) {
    db.execute(
        &format!("INSERT OR REPLACE INTO audit ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
        rusqlite::params_from_iter(row),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_records_who_did_what_and_shows_any_tampering() {
    let env = env();
    let server = env.start_server(0, &[]).unwrap();
    env.cli_ok(&["users", "create", "bob"]).unwrap();
    let token = env
        .cli_ok(&["tokens", "create", "t", "--user", "bob"])
        .unwrap();
    let bob =
        drover_client::Client::new(&server.url, &server.fingerprint, Some(token.trim().into()))
            .unwrap();
    let e = bob
        .create_group(&drover_api::CreateGroupRequest {
            name: "mine".into(),
            description: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403));
    for g in ["ops", "dev", "qa"] {
        env.cli_ok(&["groups", "create", g]).unwrap();
    }
    let anon = drover_client::Client::new(&server.url, &server.fingerprint, None).unwrap();
    let wrong = drover_api::LoginRequest {
        user: "bob".into(),
        password: "not his password".into(),
        console: false,
    };
    anon.login(&wrong).await.unwrap_err();

    // Who, from where, what, how it ended, and why.
    let log = entries(&env, &[]);
    let find = |action: &str, actor: &str| {
        log.iter()
            .find(|e| e["action"] == action && e["actor"] == actor)
            .unwrap_or_else(|| panic!("no {action} by {actor} in {log:#?}"))
            .clone()
    };
    let created = find("create_user", "admin");
    assert_eq!(created["outcome"], "success");
    assert_eq!(created["source"], "127.0.0.1");
    assert_eq!(created["resource"], "/api/v1/users");
    let refused = find("create_group", "bob");
    assert_eq!(refused["outcome"], "denied");
    assert!(
        refused["reason"].as_str().unwrap().contains("may not"),
        "{refused}"
    );
    // A refused login is nobody's: the name it claimed is its resource.
    let login = find("login", "anonymous");
    assert_eq!(login["outcome"], "denied");
    assert_eq!(login["resource"], "user/bob");
    // Filters narrow; export gives every entry as a JSON line.
    let bobs = entries(&env, &["--user", "bob"]);
    assert!(!bobs.is_empty() && bobs.iter().all(|e| e["actor"] == "bob"));
    let exported = env.cli_ok(&["audit", "export", "--since", "1h"]).unwrap();
    assert_eq!(exported.lines().count(), entries(&env, &[]).len());
    // Bob may not read the log.
    assert_eq!(
        bob.list_audit(&drover_client::AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap_err()
        .status(),
        Some(403)
    );
    let (ok, out) = verify(&env);
    assert!(ok, "{out}");

    // Tampering with the database file (the server holds it exclusively while it runs, so
    // between runs): each is found, and the first bad entry named. The server signs the
    // chain's head as it stops.
    drop(bob);
    drop(server);
    let open = || {
        let db = rusqlite::Connection::open(env.path("server").join("drover.db")).unwrap();
        db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        db
    };
    let verified = || {
        let _server = env.start_server(0, &[]).unwrap();
        verify(&env)
    };
    let db = open();
    let (e3, e4, e5, e6) = (
        snapshot(&db, 3),
        snapshot(&db, 4),
        snapshot(&db, 5),
        snapshot(&db, 6),
    );
    // An entry edited.
    db.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 3", [])
        .unwrap();
    drop(db);
    let (ok, out) = verified();
    assert!(!ok && out.contains("entry 3 was changed"), "{out}");
    let db = open();
    put_back(&db, &e3);
    // An entry removed.
    db.execute("DELETE FROM audit WHERE seq = 4", []).unwrap();
    drop(db);
    let (ok, out) = verified();
    assert!(!ok && out.contains("entry 4 is missing"), "{out}");
    let db = open();
    put_back(&db, &e4);
    // Two entries swapped.
    let mut five_as_six = e5.clone();
    five_as_six[0] = 6.into();
    let mut six_as_five = e6.clone();
    six_as_five[0] = 5.into();
    put_back(&db, &six_as_five);
    put_back(&db, &five_as_six);
    drop(db);
    let (ok, out) = verified();
    assert!(!ok && out.contains("entry 5 was changed"), "{out}");
    let db = open();
    put_back(&db, &e5);
    put_back(&db, &e6);
    drop(db);
    let (ok, out) = verified();
    assert!(ok, "{out}");

    // A rewrite that recomputes every hash after the edit links again, but no longer
    // matches what the server signed.
    let db = open();
    let chain: Vec<(i64, drover_store::audit::AuditEvent)> = {
        let mut st = db
            .prepare(&format!("SELECT {COLS} FROM audit ORDER BY seq"))
            .unwrap();
        st.query_map([], |r| {
            Ok((
                r.get(0)?,
                drover_store::audit::AuditEvent {
                    at_ms: r.get(1)?,
                    actor: r.get(2)?,
                    actor_kind: r.get(3)?,
                    token: r.get(4)?,
                    source: r.get(5)?,
                    action: r.get(6)?,
                    resource: r.get(7)?,
                    outcome: r.get(8)?,
                    reason: r.get(9)?,
                },
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    };
    let mut prev = drover_store::audit::GENESIS.to_string();
    for (seq, mut event) in chain {
        if seq == 2 {
            event.actor = "mallory".into();
        }
        let hash = entry_hash(seq, &prev, &event);
        db.execute(
            "UPDATE audit SET actor = ?2, prev_hash = ?3, hash = ?4 WHERE seq = ?1",
            rusqlite::params![seq, event.actor, prev, hash],
        )
        .unwrap();
        prev = hash;
    }
    drop(db);
    let (ok, out) = verified();
    assert!(!ok && out.contains("were rewritten"), "{out}");
}
