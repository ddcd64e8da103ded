//! Webhooks and change windows: a receiver started here gets each access event once, signed,
//! in order, also when it was down for a while and the server was killed in between; a
//! session outside its node's change window raises the alert, one inside does not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use drover_api::{CreateAccessRequest, StartSession};
use drover_testkit::{wait_status, wait_until, DEADLINE};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinSet;

use super::{create_user, env};

/// One request as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A webhook receiver on a fixed loopback port that can be stopped (refusing connections,
/// and closing those it had) and started again.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
    tasks: Option<JoinSet<()>>,
}

async fn serve_connection(stream: tokio::net::TcpStream, got: Arc<Mutex<Vec<Received>>>) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut headers = HashMap::new();
        let mut line = String::new();
        // The request line, then headers up to the blank line.
        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        got.lock().unwrap().push(Received { headers, body });
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        if stream.get_mut().write_all(ok).await.is_err() {
            return;
        }
    }
}

impl Receiver {
    async fn start(port: u16, got: Arc<Mutex<Vec<Received>>>) -> Self {
        Self::start_on("127.0.0.1", port, got).await
    }

    async fn start_on(ip: &str, port: u16, got: Arc<Mutex<Vec<Received>>>) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut tasks = JoinSet::new();
        let shared = got.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((s, _)) = listener.accept().await {
                conns.spawn(serve_connection(s, shared.clone()));
            }
        });
        Self {
            port,
            got,
            tasks: Some(tasks),
        }
    }

    /// Stops listening and drops every connection (the tasks are aborted).
    fn stop(&mut self) {
        self.tasks = None;
    }

    fn events(&self) -> Vec<serde_json::Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }
}

/// Checks a request's signature with the secret, as a receiver would.
fn verify(secret: &str, r: &Received) {
    let ts = &r.headers["drover-timestamp"];
    let age = unix_now() - ts.parse::<i64>().unwrap();
    assert!((0..300).contains(&age), "timestamp {ts} is {age} s old");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(&r.body);
    let expected = format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, &signed).as_ref())
    );
    assert_eq!(r.headers["drover-signature"], expected);
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(r.headers["drover-event"], body["action"]);
    assert_eq!(r.headers["drover-delivery"], body["delivery"]);
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn ask(node: &str, secs: u64) -> CreateAccessRequest {
    CreateAccessRequest {
        targets: vec![node.into()],
        actions: vec!["StartSession".into()],
        document: None,
        reason: "INC-7 paging".into(),
        duration_secs: secs,
    }
}

/// The webhook's delivery log, newest first, as the CLI shows it.
fn deliveries(env: &drover_testkit::Env, id: &str) -> Vec<serde_json::Value> {
    let out = env.cli_ok(&["webhooks", "show", id, "-o", "json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["deliveries"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_events_reach_a_webhook_once_signed_and_in_order_through_outages() {
    let env = env();
    let mut server = env.start_server(0, &[]).unwrap();
    let node = env.register_agent(&server, "web-1", &[]).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut receiver = Receiver::start(0, got.clone()).await;
    let url = format!("http://127.0.0.1:{}/hooks/drover", receiver.port);

    // Bad input is refused and names what is wrong.
    for (args, says) in [
        (vec!["--url", "ftp://x/"], "only https:// and http://"),
        (vec!["--url", "http://u:p@x/"], "credentials"),
        (vec!["--url", "not a url"], "url:"),
        (vec!["--url", &url, "--event", "bad event"], "events"),
        // The cloud metadata service, as a literal and as an IPv4-mapped IPv6 address.
        (vec!["--url", "http://169.254.169.254/latest/"], "deny list"),
        (
            vec!["--url", "http://[::ffff:169.254.169.254]/"],
            "deny list",
        ),
    ] {
        let mut all = vec!["webhooks", "create"];
        all.extend(args);
        let out = env.cli(&all).unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
    let created = env
        .cli_ok(&[
            "webhooks",
            "create",
            "--url",
            &url,
            "--event",
            "*access_request",
            "--event",
            "access.*",
            "-o",
            "json",
        ])
        .unwrap();
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let (id, secret) = (
        created["id"].as_str().unwrap().to_string(),
        created["secret"].as_str().unwrap().to_string(),
    );
    assert!(secret.starts_with("whsec_"), "{created}");
    // The secret is shown once: neither listings nor the database have it in clear.
    let listed = env.cli_ok(&["webhooks", "list", "-o", "json"]).unwrap();
    assert!(
        listed.contains(&id) && !listed.contains(&secret),
        "{listed}"
    );

    // A test event goes out at once, signed.
    let tested = env.cli_ok(&["webhooks", "test", &id]).unwrap();
    assert!(tested.contains("delivered"), "{tested}");
    assert_eq!(receiver.events()[0]["action"], "webhook.test");

    let bob = create_user(&env, &server, "bob", &[]);
    let carol = create_user(&env, &server, "carol", &["groups=admins".into()]);
    let first = bob.request_access(&ask(&node, 3600)).await.unwrap();
    carol
        .decide_access(&first.id, "approve", "ok")
        .await
        .unwrap();
    wait_until("the receiver to get the approval", DEADLINE, || async {
        Ok((receiver.events().len() >= 3).then_some(()))
    })
    .await
    .unwrap();

    // The receiver goes down. Events queue up behind the first that fails.
    receiver.stop();
    carol
        .decide_access(&first.id, "revoke", "done")
        .await
        .unwrap();
    let second = bob.request_access(&ask(&node, 1)).await.unwrap();
    carol
        .decide_access(&second.id, "approve", "")
        .await
        .unwrap();
    wait_until("the short grant to expire", DEADLINE, || async {
        let r = bob.get_access_request(&second.id).await?;
        Ok((r.status == "Expired").then_some(()))
    })
    .await
    .unwrap();
    wait_until("a failed attempt in the delivery log", DEADLINE, || async {
        Ok(deliveries(&env, &id)
            .iter()
            .any(|d| d["outcome"] == "failed")
            .then_some(()))
    })
    .await
    .unwrap();
    let failed = deliveries(&env, &id);
    assert!(
        failed[0]["error"].as_str().unwrap().contains("refused"),
        "{failed:?}"
    );

    // The server is killed and comes back while the receiver is still down; then the
    // receiver comes back too, and everything arrives.
    drop((bob, carol));
    server.kill_and_restart(&env).unwrap();
    let mut receiver = Receiver::start(receiver.port, got.clone()).await;
    let client_of = |name: &str| {
        let token = env
            .cli_ok(&["tokens", "create", "again", "--user", name])
            .unwrap();
        let token = Some(token.trim().to_string());
        drover_client::Client::new(&server.url, &server.fingerprint, token).unwrap()
    };
    let (bob, carol) = (client_of("bob"), client_of("carol"));
    let third = bob.request_access(&ask(&node, 60)).await.unwrap();
    carol.decide_access(&third.id, "deny", "no").await.unwrap();
    let expected = [
        ("webhook.test", ""),
        ("create_access_request", first.id.as_str()),
        ("approve_access_request", first.id.as_str()),
        ("revoke_access_request", first.id.as_str()),
        ("create_access_request", second.id.as_str()),
        ("approve_access_request", second.id.as_str()),
        ("access.expired", second.id.as_str()),
        ("create_access_request", third.id.as_str()),
        ("deny_access_request", third.id.as_str()),
    ];
    wait_until("every event at the receiver", DEADLINE, || async {
        Ok((receiver.events().len() >= expected.len()).then_some(()))
    })
    .await
    .unwrap();
    receiver.stop();
    let events = receiver.events();
    let summary: Vec<String> = events
        .iter()
        .map(|e| format!("{} {}", e["action"], e["resource"]))
        .collect();
    assert_eq!(events.len(), expected.len(), "each once: {summary:#?}");
    for (e, (action, request)) in events.iter().zip(expected) {
        assert_eq!(e["action"], action, "{summary:#?}");
        assert!(
            e["resource"].as_str().unwrap().contains(request),
            "{summary:#?}"
        );
    }
    // In the log's order, each signed with the secret.
    let seqs: Vec<i64> = events[1..]
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for r in got.lock().unwrap().iter() {
        verify(&secret, r);
    }
    assert_eq!(events[3]["actor"], "carol");
    assert_eq!(events[6]["actor"], "server");

    // Deleted, it posts nothing more, and its ID is gone.
    env.cli_ok(&["webhooks", "delete", &id]).unwrap();
    let out = env.cli(&["webhooks", "show", &id]).unwrap();
    assert!(!out.status.success());
}

fn start_cmd(node: &str) -> StartSession {
    StartSession {
        node: node.into(),
        command: Some("true".into()),
        pty: Some(false),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outside_its_change_window_raises_the_alert() {
    let env = env();
    // 127.0.0.1 denied: a receiver named `localhost` is refused when its name is resolved.
    // The receiver listens on 127.0.0.2.
    let server = env
        .start_server(0, &["--forward-deny", "127.0.0.1"])
        .unwrap();
    let prod = env
        .register_agent(&server, "prod-1", &["--tag", "Environment=Production"])
        .unwrap();
    let stage = env
        .register_agent(&server, "stage-1", &["--tag", "Environment=Staging"])
        .unwrap();
    let lab = env.register_agent(&server, "lab-1", &[]).unwrap();
    let _agents = [
        env.run_agent("prod-1", &[]).unwrap(),
        env.run_agent("stage-1", &[]).unwrap(),
        env.run_agent("lab-1", &[]).unwrap(),
    ];
    wait_status(
        &server,
        &[prod.clone(), stage.clone(), lab.clone()],
        "Online",
    )
    .await
    .unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let receiver = Receiver::start_on("127.0.0.2", 0, got.clone()).await;
    let url = format!("http://127.0.0.2:{}/", receiver.port);
    env.cli_ok(&[
        "webhooks",
        "create",
        "--url",
        &url,
        "--event",
        "session.outside_change_window",
    ])
    .unwrap();
    let by_name = format!("http://localhost:{}/", receiver.port);
    let out = env
        .cli_ok(&["webhooks", "create", "--url", &by_name, "-o", "json"])
        .unwrap();
    let hook: serde_json::Value = serde_json::from_str(&out).unwrap();
    let out = env
        .cli(&["webhooks", "test", hook["id"].as_str().unwrap()])
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && said.contains("deny list"),
        "{said}"
    );
    env.cli_ok(&["webhooks", "delete", hook["id"].as_str().unwrap()])
        .unwrap();

    // Production's window opens two hours from now (UTC), Staging's is open now; the lab
    // node has none. The windows are daily, so midnight is no special case.
    let hm = |offset_h: i64| {
        let mins = (unix_now() / 60 + offset_h * 60).rem_euclid(24 * 60);
        format!("{:02}:{:02}", mins / 60, mins % 60)
    };
    let window = |tag: &str, from: i64, to: i64| {
        env.cli_ok(&[
            "windows",
            "create",
            "--tag",
            tag,
            "--days",
            "daily",
            "--start",
            &hm(from),
            "--end",
            &hm(to),
            "--timezone",
            "UTC",
            "-o",
            "json",
        ])
        .unwrap()
    };
    let closed: serde_json::Value =
        serde_json::from_str(&window("Environment=Production", 2, 3)).unwrap();
    window("Environment=Staging", -1, 1);
    for (args, says) in [
        (vec!["--days", "weekdays"], "days"),
        (vec!["--days", "mon", "--start", "9:00"], "start"),
        (vec!["--days", "mon", "--timezone", "Mars/Base"], "timezone"),
    ] {
        let mut all = vec![
            "windows", "create", "--tag", "a=b", "--start", "09:00", "--end", "17:00",
        ];
        all.extend(args);
        let out = env.cli(&all).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{err}");
    }

    let admin = server.client().unwrap();
    let mut ids = Vec::new();
    for node in [&prod, &stage, &lab] {
        ids.push(admin.start_session(&start_cmd(node)).await.unwrap().id);
    }
    wait_until("the alert at the receiver", DEADLINE, || async {
        Ok((!receiver.events().is_empty()).then_some(()))
    })
    .await
    .unwrap();
    // Exactly one alert, for the production session: every session's start is in the log
    // before the alert webhook could have seen a later entry, so none is still coming.
    let audit = env
        .cli_ok(&["audit", "list", "--action", "session.", "-o", "json"])
        .unwrap();
    let audit: Vec<serde_json::Value> = serde_json::from_str(&audit).unwrap();
    let alerts: Vec<&serde_json::Value> = audit
        .iter()
        .filter(|e| e["action"] == "session.outside_change_window")
        .collect();
    let started = audit
        .iter()
        .filter(|e| e["action"] == "session.started")
        .count();
    assert_eq!(started, 3, "{audit:#?}");
    assert_eq!(alerts.len(), 1, "{audit:#?}");
    let alert = alerts[0];
    let resource = alert["resource"].as_str().unwrap();
    assert!(
        resource.contains(&ids[0]) && resource.contains(&prod),
        "{alert}"
    );
    let reason = alert["reason"].as_str().unwrap();
    for part in [
        "admin",
        "(prod-1)",
        closed["id"].as_str().unwrap(),
        "Environment=Production",
        "UTC",
    ] {
        assert!(reason.contains(part), "{reason}");
    }
    let posted = receiver.events();
    assert_eq!(posted.len(), 1, "{posted:#?}");
    assert_eq!(posted[0]["seq"], alert["seq"]);
    // Every session's end is in the audit log too (they wait for a client: end them).
    for id in &ids {
        admin.terminate_session(id).await.unwrap();
    }
    wait_until("each session's end in the audit log", DEADLINE, || async {
        let out = env.cli_ok(&["audit", "list", "--action", "session.ended", "-o", "json"])?;
        let ended: Vec<serde_json::Value> = serde_json::from_str(&out)?;
        let all = ids.iter().all(|id| {
            ended.iter().any(|e| {
                e["resource"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(id.as_str())
            })
        });
        Ok(all.then_some(()))
    })
    .await
    .unwrap();
    // The session's own history has it too.
    let history = env.cli_ok(&["sessions", "show", &ids[0]]).unwrap();
    assert!(history.contains("outside_change_window"), "{history}");

    env.cli_ok(&["windows", "delete", closed["id"].as_str().unwrap()])
        .unwrap();
    let listed = env.cli_ok(&["windows", "list"]).unwrap();
    assert!(
        listed.contains("Environment=Staging") && !listed.contains("Production"),
        "{listed}"
    );
}
