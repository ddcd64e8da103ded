//! Composite documents: downloadContent over HTTPS (from a server in this test) and from a
//! document stored on the Drover server, runDocument of a stored and of a downloaded document,
//! and the built-in RunDocument; and an offline node that gets its invocation when it connects.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Duration;

use drover_testkit::{wait_status, wait_until, Env, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env() -> Env {
    Env::new(env!("CARGO_BIN_EXE_drover")).unwrap()
}

/// An HTTPS server on 127.0.0.1 serving `files` (path → body); returns its base URL and the
/// PEM of the CA that signed its certificate.
async fn https_server(files: Vec<(&'static str, String)>) -> anyhow::Result<(String, String)> {
    let ca = drover_pki::CertificateAuthority::generate("test CA")?;
    let issued = ca.issue_server(&["127.0.0.1".to_string()], Duration::from_secs(3600))?;
    let cfg = rustls::ServerConfig::builder_with_provider(drover_pki::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            drover_pki::certs_from_pem(&issued.cert_pem)?,
            drover_pki::key_from_pem(&issued.key_pem)?,
        )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://{}", listener.local_addr()?);
    let files = Arc::new(files);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, files) = (acceptor.clone(), files.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                let reply = match files.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_string()
                    }
                };
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Ok((url, ca.cert_pem().to_string()))
}

const GREET: &str = r#"schemaVersion: "2.2"
parameters:
  name: {type: String}
mainSteps:
  - action: aws:runShellScript
    name: greet
    inputs:
      runCommand: ["echo hello {{ name }}"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_documents_download_and_run_other_documents() -> anyhow::Result<()> {
    let (url, ca_pem) = https_server(vec![
        (
            "/tools/setup.sh",
            "echo setup ran from $(basename $(pwd))\n".to_string(),
        ),
        ("/remote.yaml", GREET.replace("hello", "remote hello")),
    ])
    .await?;
    let env = env();
    std::fs::write(env.path("test-ca.pem"), &ca_pem)?;
    let server = env.start_server(0, &[])?;
    // A node that is offline when the command is sent gets it when it connects.
    let id = env.register_agent(&server, "composer", &[])?;

    std::fs::write(env.path("greet.yaml"), GREET)?;
    env.cli_ok(&[
        "docs",
        "create",
        "Greet",
        "--file",
        &env.path("greet.yaml").to_string_lossy(),
    ])?;
    let composite = format!(
        r#"schemaVersion: "2.2"
mainSteps:
  - action: aws:downloadContent
    name: fetchTools
    inputs:
      sourceType: HTTP
      sourceInfo: {{"url": "{url}/tools/setup.sh"}}
      destinationPath: tools
  - action: aws:runShellScript
    name: setup
    inputs:
      runCommand: ["sh tools/setup.sh"]
  - action: aws:runDocument
    name: greetStored
    inputs:
      documentType: SSMDocument
      documentPath: Greet
      documentParameters: {{"name": "stored"}}
  - action: aws:downloadContent
    name: fetchDoc
    inputs:
      sourceType: SSMDocument
      sourceInfo: '{{"name": "Greet"}}'
      destinationPath: docs
  - action: aws:runDocument
    name: greetLocal
    inputs:
      documentType: LocalPath
      documentPath: docs/Greet.yaml
      documentParameters: '{{"name": "local"}}'
"#
    );
    std::fs::write(env.path("composite.yaml"), composite)?;
    env.cli_ok(&[
        "docs",
        "create",
        "Composite",
        "--file",
        &env.path("composite.yaml").to_string_lossy(),
    ])?;
    let cmd = env
        .cli_ok(&["run", "--no-wait", "--doc", "Composite", "--targets", &id])?
        .trim()
        .to_string();

    let ca_file = env.path("test-ca.pem").to_string_lossy().into_owned();
    let _agent = env.run_agent("composer", &[("SSL_CERT_FILE", &ca_file)])?;
    wait_status(&server, std::slice::from_ref(&id), "Online").await?;
    let client = server.client()?;
    let done = wait_until("the command to end", DEADLINE, || {
        let (c, cmd) = (client.clone(), cmd.clone());
        async move { Ok(Some(c.get_command(&cmd).await?).filter(|c| c.done)) }
    })
    .await?;
    let inv = client.get_invocation(&cmd, &id).await?;
    let steps: Vec<(String, String, String)> = inv
        .steps
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.status.clone(),
                format!("{}{}", s.stdout, s.stderr),
            )
        })
        .collect();
    assert_eq!(done.status, "Success", "{steps:?}");
    assert_eq!(
        steps,
        vec![
            ("fetchTools".into(), "Success".into(), String::new()),
            (
                "setup".into(),
                "Success".into(),
                "setup ran from work\n".into()
            ),
            (
                "greetStored".into(),
                "Success".into(),
                "hello stored\n".into()
            ),
            ("fetchDoc".into(), "Success".into(), String::new()),
            (
                "greetLocal".into(),
                "Success".into(),
                "hello local\n".into()
            ),
        ]
    );

    // The built-in RunDocument: a document over HTTPS, with its parameters.
    let out = env.cli_ok(&[
        "run",
        "-o",
        "text",
        "--targets",
        &id,
        "--doc",
        "RunDocument",
        "--param",
        "sourceType=HTTP",
        "--param",
        &format!("sourceInfo={{\"url\": \"{url}/remote.yaml\"}}"),
        "--param",
        "documentPath=remote.yaml",
        "--param",
        "documentParameters={\"name\": \"drover\"}",
    ])?;
    assert_eq!(out, "remote hello drover\n");

    // A download that fails fails its step, with the reason in the output.
    let out = env.cli(&[
        "run",
        "-o",
        "json",
        "--targets",
        &id,
        "--doc",
        "RunDocument",
        "--param",
        "sourceType=HTTP",
        "--param",
        &format!("sourceInfo={{\"url\": \"{url}/missing.yaml\"}}"),
        "--param",
        "documentPath=missing.yaml",
    ])?;
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let stderr = v["invocations"][0]["steps"][0]["stderr"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(stderr.contains("HTTP 404"), "{v}");
    Ok(())
}

/// Sends `doc` (created as `name`) to `id` and returns its steps as (name, status, output) once
/// the command has ended.
async fn run_doc(
    env: &Env,
    server: &drover_testkit::Server,
    id: &str,
    name: &str,
    doc: &str,
) -> anyhow::Result<(String, Vec<(String, String, String)>)> {
    let file = env.path(&format!("{name}.yaml"));
    std::fs::write(&file, doc)?;
    env.cli_ok(&["docs", "create", name, "--file", &file.to_string_lossy()])?;
    let cmd = env
        .cli_ok(&["run", "--no-wait", "--doc", name, "--targets", id])?
        .trim()
        .to_string();
    let client = server.client()?;
    let done = wait_until("the command to end", DEADLINE, || {
        let (c, cmd) = (client.clone(), cmd.clone());
        async move { Ok(Some(c.get_command(&cmd).await?).filter(|c| c.done)) }
    })
    .await?;
    let inv = client.get_invocation(&cmd, id).await?;
    let steps = inv
        .steps
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.status.clone(),
                format!("{}{}", s.stdout, s.stderr),
            )
        })
        .collect();
    Ok((done.status, steps))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_over_the_agents_limit_is_refused_and_leaves_nothing() -> anyhow::Result<()> {
    let (url, ca_pem) = https_server(vec![("/big.bin", "x".repeat(2 << 20))]).await?;
    let env = env();
    std::fs::write(env.path("test-ca.pem"), &ca_pem)?;
    let server = env.start_server(0, &[])?;
    let id = env.register_agent(&server, "small", &[])?;
    let ca_file = env.path("test-ca.pem").to_string_lossy().into_owned();
    let _agent = env.run_agent(
        "small",
        &[
            ("SSL_CERT_FILE", &ca_file),
            ("DROVER_MAX_DOWNLOAD_BYTES", "1048576"),
        ],
    )?;
    wait_status(&server, std::slice::from_ref(&id), "Online").await?;
    let doc = format!(
        r#"schemaVersion: "2.2"
mainSteps:
  - action: aws:downloadContent
    name: fetchBig
    inputs:
      sourceType: HTTP
      sourceInfo: {{"url": "{url}/big.bin"}}
      destinationPath: /tmp
  - action: aws:runShellScript
    name: after
    inputs:
      runCommand: ["echo not reached"]
"#
    )
    .replace("/tmp", &env.path("dl").to_string_lossy());
    let (status, steps) = run_doc(&env, &server, &id, "FetchBig", &doc).await?;
    assert_eq!(status, "Failed");
    assert_eq!(steps[0].1, "Failed", "{steps:?}");
    assert!(
        steps[0]
            .2
            .contains("larger than this agent's limit of 1048576 bytes"),
        "{steps:?}"
    );
    let left: Vec<_> = std::fs::read_dir(env.path("dl"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_platform_ssm_documents_run_what_the_node_can_and_say_why_not() -> anyhow::Result<()>
{
    let env = env();
    let server = env.start_server(0, &[])?;
    let id = env.register_agent(&server, "linux", &[])?;
    // No PowerShell on this node, whatever the machine has.
    let _agent = env.run_agent("linux", &[("PATH", "/usr/bin:/bin")])?;
    wait_status(&server, std::slice::from_ref(&id), "Online").await?;
    let doc = r#"schemaVersion: "2.2"
description: A document written for both platforms, as SSM users write them.
mainSteps:
  - action: aws:runPowerShellScript
    name: windowsOnly
    precondition:
      StringEquals: [platformType, Windows]
    inputs:
      runCommand: ["Write-Output 'windows'"]
  - action: aws:configureDocker
    name: dockerOnWindows
    precondition:
      StringEquals: [platformType, Windows]
    inputs:
      action: Install
  - action: aws:runShellScript
    name: linux
    precondition:
      StringEquals: [platformType, Linux]
    inputs:
      runCommand: ["echo linux"]
  - action: aws:runPowerShellScript
    name: anywhere
    onFailure: continue
    inputs:
      runCommand: ["Write-Output 'pwsh'"]
  - action: aws:softwareInventory
    name: inventory
    inputs: {}
"#;
    let (status, steps) = run_doc(&env, &server, &id, "CrossPlatform", doc).await?;
    assert_eq!(status, "Failed", "{steps:?}");
    let summary: Vec<(&str, &str)> = steps
        .iter()
        .map(|(n, s, _)| (n.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("windowsOnly", "Skipped"),
            ("dockerOnWindows", "Skipped"),
            ("linux", "Success"),
            ("anywhere", "Failed"),
            ("inventory", "Failed"),
        ],
        "{steps:?}"
    );
    assert!(
        steps[4]
            .2
            .contains("aws:softwareInventory is not supported on this node"),
        "{steps:?}"
    );
    assert_eq!(steps[2].2, "linux\n");
    assert!(
        steps[3]
            .2
            .contains("aws:runPowerShellScript is not supported on this node"),
        "{steps:?}"
    );
    Ok(())
}
