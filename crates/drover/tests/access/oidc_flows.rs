//! The two other federated logins, against the same real provider: the console's browser
//! redirect (cookies, CSRF) and the device-code login for a machine without a browser.

use std::os::unix::fs::PermissionsExt;

use drover_client::Client;
use drover_testkit::{Proc, DEADLINE};

use super::oidc::{oidc_server, start_idp};
use super::{env, http};

/// What a user does on another device: opens the provider's device page, enters the code,
/// confirms it, and signs in. Arguments: the page, the code, the user.
const DEVICE: &str = r#"#!/bin/sh
set -e
jar=$(mktemp)
xsrf() { sed -n 's/.*name="xsrf" value="\([^"]*\)".*/\1/p' | head -n 1; }
x=$(curl -sS -c "$jar" -b "$jar" "$1" | xsrf)
x=$(curl -sS -c "$jar" -b "$jar" --data-urlencode "xsrf=$x" --data-urlencode "user_code=$2" "$1" | xsrf)
page=$(curl -sS -c "$jar" -b "$jar" -L -o /dev/null -w '%{url_effective}' \
  --data-urlencode "xsrf=$x" --data-urlencode "user_code=$2" --data-urlencode "confirm=yes" "$1")
curl -sS -c "$jar" -b "$jar" -L -o /dev/null --data-urlencode "login=$3" "$page/login"
"#;

/// The console's login as HTTP sees it: its sign-in link, the provider's form, and back, with
/// the cookies kept in a jar the test reads. Arguments: the server, its CA, the cookie jar, the
/// user. (`a_real_browser_signs_in_to_the_console_through_the_provider` does the same in
/// chromium.)
const CONSOLE: &str = r#"#!/bin/sh
set -e
page=$(curl -sS --fail-with-body --cacert "$2" -c "$3" -b "$3" -L -o /dev/null -w '%{url_effective}' "$1/api/v1/auth/oidc/console")
curl -sS --cacert "$2" -c "$3" -b "$3" -L -o /dev/null -w '%{url_effective}' --data-urlencode "login=$4" "$page/login"
"#;

fn script(env: &drover_testkit::Env, name: &str, text: &str) -> std::path::PathBuf {
    let path = env.path(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_login_needs_no_browser_on_the_machine() {
    let env = env();
    let (_idp, issuer) = start_idp();
    let server = oidc_server(&env, &issuer);
    env.cli_ok(&["groups", "create", "engineering"]).unwrap();
    let config = env.path("bob.toml");
    let mut cmd = env.command();
    cmd.env("DROVER_CONFIG", &config).args([
        "login",
        "--server",
        &server.url,
        "--ca-fingerprint",
        &server.fingerprint,
        "--oidc",
        "--device",
    ]);
    let mut login = Proc::spawn("login", cmd).unwrap();
    let line = login.wait_for_line("enter the code", DEADLINE).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "open").unwrap();
    let (page, code) = (words[at + 1], *words.last().unwrap());

    // Bob, on his phone.
    let device = script(&env, "device.sh", DEVICE);
    let out = std::process::Command::new(&device)
        .args([page, code, "bob"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status = login.wait_exit(DEADLINE).unwrap();
    assert!(status.success(), "{}", login.output());
    assert!(login.output().contains("as bob"), "{}", login.output());
    let saved = std::fs::read_to_string(&config).unwrap();
    let token = saved
        .lines()
        .find_map(|l| l.strip_prefix("token = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let bob = Client::new(&server.url, &server.fingerprint, Some(token)).unwrap();
    let me = bob.whoami().await.unwrap();
    assert_eq!(me.user.source, "oidc");
    assert_eq!(
        me.user.attributes.get("department").map(String::as_str),
        Some("Blue")
    );
    assert!(me.user.groups.contains(&"engineering".to_string()));

    // A device code nobody approved, or made up, gets no token.
    let forged = drover_api::OidcDeviceLogin {
        verification_uri: page.into(),
        verification_uri_complete: None,
        user_code: "XXXX-XXXX".into(),
        device_code: "made-up".into(),
        expires_in_secs: 30,
        interval_secs: 1,
    };
    let anon = Client::new(&server.url, &server.fingerprint, None).unwrap();
    let e = anon.oidc_device_finish(&forged).await.unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
}

/// The value of `name` in a curl cookie jar.
fn cookie(jar: &str, name: &str) -> String {
    jar.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 7 && f[5] == name).then(|| f[6].to_string())
        })
        .next_back()
        .unwrap_or_else(|| panic!("no cookie {name} in\n{jar}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_logs_in_through_the_provider() {
    let env = env();
    let (_idp, issuer) = start_idp();
    let server = oidc_server(&env, &issuer);
    env.cli_ok(&["groups", "create", "engineering"]).unwrap();
    let ca = env.path("server").join("ca.crt");
    assert!(ca.is_file(), "{}", ca.display());
    let jar = env.path("cookies.txt");
    let browser = script(&env, "console.sh", CONSOLE);
    let out = std::process::Command::new(&browser)
        .args([
            server.url.as_str(),
            &ca.to_string_lossy(),
            &jar.to_string_lossy(),
            "alice",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}\n{}", server.proc.output());
    // Back at the console's page, logged in.
    let landed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(landed.trim(), format!("{}/", server.url));
    let jar = std::fs::read_to_string(&jar).unwrap();
    let session = cookie(&jar, "__Host-drover_session");
    let csrf = cookie(&jar, "__Host-drover_csrf");
    // The session cookie is HttpOnly and Secure; the CSRF one is Secure, for the script.
    let line = |name: &str| jar.lines().find(|l| l.contains(name)).unwrap_or_default();
    assert!(
        line("drover_session").starts_with("#HttpOnly_127.0.0.1\tFALSE\t/\tTRUE\t"),
        "{jar}"
    );
    assert!(
        line("drover_csrf").starts_with("127.0.0.1\tFALSE\t/\tTRUE\t"),
        "{jar}"
    );
    let with = format!("__Host-drover_session={session}");
    let me = http::request(
        &server,
        "GET",
        "/api/v1/auth/whoami",
        &[("Cookie", &with)],
        None,
    )
    .await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert!(me.body.contains("\"name\":\"alice\""), "{}", me.body);
    // A change needs the CSRF token the console's script reads from its cookie.
    let body = r#"{"name":"from-the-console"}"#;
    let path = "/api/v1/users/alice/tokens";
    let bare = http::request(&server, "POST", path, &[("Cookie", &with)], Some(body)).await;
    assert_eq!(bare.status, 403, "{}", bare.body);
    let headers = [("Cookie", with.as_str()), ("X-CSRF-Token", csrf.as_str())];
    let ok = http::request(&server, "POST", path, &headers, Some(body)).await;
    assert_eq!(ok.status, 201, "{}", ok.body);

    // An answer to a login this browser did not begin, or with no login begun, is refused.
    let forged = "/api/v1/auth/oidc/callback?code=abc&state=not-this-one";
    let flow = "__Host-drover_oidc=aaaa.bbbb.cccc";
    let r = http::request(&server, "GET", forged, &[("Cookie", flow)], None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("not to this browser's login"), "{}", r.body);
    let r = http::request(&server, "GET", forged, &[], None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let refused = "/api/v1/auth/oidc/callback?error=access_denied";
    let r = http::request(&server, "GET", refused, &[("Cookie", flow)], None).await;
    assert!(
        r.status == 403 && r.body.contains("access_denied"),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_signs_in_to_the_console_through_the_provider() {
    let scripts = drover_testkit::browser::scripts(env!("CARGO_MANIFEST_DIR")).unwrap();
    let env = env();
    let (_idp, issuer) = start_idp();
    let server = oidc_server(&env, &issuer);
    env.cli_ok(&["groups", "create", "engineering"]).unwrap();
    let host = issuer
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap()
        .to_string();
    let (ok, out) = drover_testkit::browser::run(
        &scripts.join("oidc.mjs"),
        &[
            ("CONSOLE_URL", server.url.clone()),
            ("IDP_HOST", host),
            ("IDP_USER", "alice".into()),
        ],
    )
    .unwrap();
    println!("{out}");
    assert!(ok, "the browser's checks failed:\n{out}");
    assert_eq!(drover_testkit::browser::passed(&out), 4, "{out}");
}
