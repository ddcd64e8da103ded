//! Tokens (scoped, expired, revoked), logins (lockout), disabled users, console cookies.

use drover_api::{CreateGroupRequest, CreateTokenRequest, LoginRequest, StartSession};
use drover_client::Client;
use drover_testkit::{pids_with_cmdline, wait_status, wait_until, Server, DEADLINE};

use super::{env, http};

fn token_req(name: &str, scope: &[&str], expires: Option<u64>) -> CreateTokenRequest {
    CreateTokenRequest {
        name: name.into(),
        scope: scope.iter().map(|s| s.to_string()).collect(),
        expires_in_secs: expires,
    }
}

fn client(server: &Server, secret: String) -> Client {
    Client::new(&server.url, &server.fingerprint, Some(secret)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_expired_and_revoked_tokens() {
    let env = env();
    let server = env.start_server(0, &[]).unwrap();
    env.cli_ok(&["users", "create", "carol", "--group", "admins"])
        .unwrap();
    let admin = server.client().unwrap();

    // Read only: reading works, a change is refused naming the scope.
    let read = admin
        .create_token("carol", &token_req("ro", &["read"], None))
        .await
        .unwrap();
    assert!(read.view.scope.contains(&"ReadNode".to_string()));
    let ro = client(&server, read.token);
    ro.list_nodes(&[]).await.unwrap();
    ro.list_documents().await.unwrap();
    let group = CreateGroupRequest {
        name: "x".into(),
        description: String::new(),
    };
    let e = ro.create_group(&group).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(e.to_string().contains("scoped"), "{e}");
    // Nor can it make itself a wider token.
    let e = ro
        .create_token("carol", &token_req("wider", &["ManageUsers"], None))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");

    // Expiring in a second: it works, then it is refused.
    let short = admin
        .create_token("carol", &token_req("short", &[], Some(1)))
        .await
        .unwrap();
    let short = client(&server, short.token);
    wait_until("the token to expire", DEADLINE, || async {
        Ok(matches!(short.whoami().await, Err(e) if e.status() == Some(401)).then_some(()))
    })
    .await
    .unwrap();

    // Revoked by name through the CLI: refused at once.
    let live = admin
        .create_token("carol", &token_req("gone", &[], None))
        .await
        .unwrap();
    let live = client(&server, live.token);
    assert_eq!(live.whoami().await.unwrap().user.name, "carol");
    env.cli_ok(&["tokens", "revoke", "gone", "--user", "carol"])
        .unwrap();
    assert_eq!(live.whoami().await.unwrap_err().status(), Some(401));
    let list = env.cli_ok(&["tokens", "list", "--user", "carol"]).unwrap();
    assert!(
        list.contains("revoked") && list.contains("expired"),
        "{list}"
    );
}

fn login(user: &str, password: &str) -> LoginRequest {
    LoginRequest {
        user: user.into(),
        password: password.into(),
        console: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_logins_lock_the_account() {
    let env = env();
    let server = env.start_server(0, &[]).unwrap();
    let mut create = env.command();
    create.args(["users", "create", "dora", "--password-stdin"]);
    let out = pipe(create, "correct horse battery\n");
    assert!(out.contains("created user dora"), "{out}");
    let anon = Client::new(&server.url, &server.fingerprint, None).unwrap();
    // The right password works, and its token acts for dora.
    let ok = anon
        .login(&login("dora", "correct horse battery"))
        .await
        .unwrap();
    let dora = client(&server, ok.token.unwrap());
    assert_eq!(dora.whoami().await.unwrap().user.name, "dora");
    // Five wrong ones lock the account: then even the right one is refused, with the same
    // answer as a wrong one (and as an unknown user).
    for _ in 0..5 {
        let e = anon
            .login(&login("dora", "wrong password!"))
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(401));
    }
    let locked = anon
        .login(&login("dora", "correct horse battery"))
        .await
        .unwrap_err();
    let unknown = anon.login(&login("nobody", "whatever")).await.unwrap_err();
    assert_eq!(locked.to_string(), unknown.to_string());
    let shown = env.cli_ok(&["users", "show", "dora"]).unwrap();
    assert!(shown.contains("locked until"), "{shown}");
    // An administrator setting a new password lifts the lockout.
    let mut passwd = env.command();
    passwd.args(["users", "passwd", "dora", "--password-stdin"]);
    pipe(passwd, "a new long password\n");
    anon.login(&login("dora", "a new long password"))
        .await
        .unwrap();
    // The CLI logs in the same way, and logging out revokes that token.
    let config = env.path("dora.toml");
    let mut cli = env.command();
    cli.env("DROVER_CONFIG", &config).args([
        "login",
        "--server",
        &server.url,
        "--ca-fingerprint",
        &server.fingerprint,
        "--user",
        "dora",
        "--password-stdin",
    ]);
    let out = pipe(cli, "a new long password\n");
    assert!(out.contains("as dora"), "{out}");
    let whoami = env
        .command()
        .env("DROVER_CONFIG", &config)
        .arg("whoami")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&whoami.stdout).contains("dora"));
    let out = env
        .command()
        .env("DROVER_CONFIG", &config)
        .arg("logout")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A short password is refused, naming the rule.
    let mut weak = env.command();
    weak.args(["users", "create", "weak", "--password-stdin"]);
    let out = pipe(weak, "short\n");
    assert!(out.contains("12 to 1024 characters"), "{out}");
}

/// Runs `cmd` with `input` on its standard input; returns stdout and stderr.
fn pipe(mut cmd: std::process::Command, input: &str) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_or_revoked_token_is_refused_at_once_and_sessions_end() {
    let env = env();
    let server = env.start_server(0, &[]).unwrap();
    let node = env.register_agent(&server, "n1", &[]).unwrap();
    let _agent = env.run_agent("n1", &[]).unwrap();
    wait_status(&server, std::slice::from_ref(&node), "Online")
        .await
        .unwrap();
    env.cli_ok(&["users", "create", "erin", "--group", "admins"])
        .unwrap();
    let admin = server.client().unwrap();
    let t = admin
        .create_token("erin", &token_req("t", &[], None))
        .await
        .unwrap();
    let erin = client(&server, t.token);
    let marker = "sleep 4242";
    let s = erin
        .start_session(&StartSession {
            node: node.clone(),
            command: Some(marker.into()),
            pty: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    // Another user's token may not attach to erin's session.
    let other = admin
        .create_token("admin", &token_req("other", &[], None))
        .await
        .unwrap();
    let other = client(&server, other.token);
    let e = other
        .attach_session(&s.id)
        .await
        .err()
        .expect("attach refused");
    assert!(e.to_string().contains("someone else"), "{e}");
    // Erin attaches; the command runs on the node.
    let _socket = erin.attach_session(&s.id).await.unwrap();
    wait_until("the session's process", DEADLINE, || async {
        Ok((!pids_with_cmdline(marker).is_empty()).then_some(()))
    })
    .await
    .unwrap();

    env.cli_ok(&["users", "disable", "erin"]).unwrap();
    assert_eq!(erin.whoami().await.unwrap_err().status(), Some(401));
    let ended = wait_until("the session to end", DEADLINE, || async {
        let v = admin.get_session(&s.id).await?;
        Ok(v.ended_at.is_some().then_some(v))
    })
    .await
    .unwrap();
    assert!(ended.detail.contains("disabled"), "{ended:?}");
    // The session's events are audit entries too.
    let log = env
        .cli_ok(&["audit", "list", "--action", "session.", "-o", "json"])
        .unwrap();
    assert!(
        log.contains("session.started") && log.contains(&format!("session/{}", s.id)),
        "{log}"
    );
    wait_until("the session's process to go", DEADLINE, || async {
        Ok(pids_with_cmdline(marker).is_empty().then_some(()))
    })
    .await
    .unwrap();
    // Enabled again, the same token works.
    env.cli_ok(&["users", "enable", "erin"]).unwrap();
    assert_eq!(erin.whoami().await.unwrap().user.name, "erin");

    // Revoking the token a session was started with ends that session too.
    let s = erin
        .start_session(&StartSession {
            node: node.clone(),
            command: Some(marker.into()),
            pty: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    let _socket = erin.attach_session(&s.id).await.unwrap();
    wait_until("the session's process", DEADLINE, || async {
        Ok((!pids_with_cmdline(marker).is_empty()).then_some(()))
    })
    .await
    .unwrap();
    env.cli_ok(&["tokens", "revoke", "t", "--user", "erin"])
        .unwrap();
    let ended = wait_until("the session to end", DEADLINE, || async {
        let v = admin.get_session(&s.id).await?;
        Ok(v.ended_at.is_some().then_some(v))
    })
    .await
    .unwrap();
    assert!(ended.detail.contains("token was revoked"), "{ended:?}");
    wait_until("the session's process to go", DEADLINE, || async {
        Ok(pids_with_cmdline(marker).is_empty().then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_cookies_need_the_csrf_token_for_changes() {
    let env = env();
    let server = env.start_server(0, &[]).unwrap();
    let mut create = env.command();
    create.args([
        "users",
        "create",
        "fay",
        "--group",
        "admins",
        "--password-stdin",
    ]);
    pipe(create, "fay's long password\n");
    let body = r#"{"user":"fay","password":"fay's long password","console":true}"#;
    let login = http::request(&server, "POST", "/api/v1/auth/login", &[], Some(body)).await;
    assert_eq!(login.status, 200, "{}", login.body);
    let set = login.header("set-cookie").unwrap().to_string();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "__Host-"] {
        assert!(set.contains(attr), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    let reply: serde_json::Value = serde_json::from_str(&login.body).unwrap();
    assert!(reply.get("token").is_none(), "{reply}");
    let csrf = reply["csrf_token"].as_str().unwrap().to_string();

    // Reading with the cookie works.
    let me = http::request(
        &server,
        "GET",
        "/api/v1/auth/whoami",
        &[("Cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(me.status, 200, "{}", me.body);
    // A change with the cookie alone is refused: another site could make a browser send it.
    let group = r#"{"name":"ops"}"#;
    let forged = http::request(
        &server,
        "POST",
        "/api/v1/groups",
        &[("Cookie", &cookie)],
        Some(group),
    )
    .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.body.contains("CSRF"), "{}", forged.body);
    let wrong = http::request(
        &server,
        "POST",
        "/api/v1/groups",
        &[("Cookie", &cookie), ("X-CSRF-Token", "drv_guess")],
        Some(group),
    )
    .await;
    assert_eq!(wrong.status, 403, "{}", wrong.body);
    // With the token from the login, it is done.
    let made = http::request(
        &server,
        "POST",
        "/api/v1/groups",
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        Some(group),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    // The cookie's token is no bearer token, and a bearer token is no cookie.
    let secret = cookie.split_once('=').unwrap().1;
    let bearer = format!("Bearer {secret}");
    let as_bearer = http::request(
        &server,
        "GET",
        "/api/v1/auth/whoami",
        &[("Authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(as_bearer.status, 401);
    let api_cookie = format!("__Host-drover_session={}", server.token);
    let as_cookie = http::request(
        &server,
        "GET",
        "/api/v1/auth/whoami",
        &[("Cookie", &api_cookie)],
        None,
    )
    .await;
    assert_eq!(as_cookie.status, 401);
}
