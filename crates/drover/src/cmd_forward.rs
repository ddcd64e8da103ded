//! `drover forward NODE --remote-port P`: local TCP connections forwarded through the node to
//! a port on it or on a host it reaches; and `drover ssh-proxy HOST PORT`, OpenSSH's
//! ProxyCommand, which forwards its standard input and output the same way to the node's sshd.
//!
//! Each local connection is a stream of its own on one multiplexed connection to the server,
//! which splices it to a stream on the node's tunnel. A connection the node refuses closes that
//! one local connection with a message; the forward stays up. The session's connection may
//! drop: the forward attaches again for up to 30 seconds (connections open at the time are
//! lost, as with any TCP path that breaks; new ones wait for the new attachment).

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use drover_api::{SessionView, StartSession};
use drover_client::{Client, ConnectError, PortTunnel};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long the forward tries to attach again after its connection drops.
const RESUME_FOR: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// The node: its ID or its unique name.
    pub node: String,
    /// The port to reach, on the node or on --remote-host.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u16).range(1..))]
    pub remote_port: u16,
    /// The local port to listen on; 0 or none picks a free one and prints it.
    #[arg(long, default_value_t = 0)]
    pub local_port: u16,
    /// A host the node connects to (a database, an admin UI), instead of the node itself.
    #[arg(long)]
    pub remote_host: Option<String>,
    /// The local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Why: kept in the session history.
    #[arg(long)]
    pub reason: Option<String>,
    /// A Port session document of your own (NAME or NAME:VERSION) instead of the built-ins.
    #[arg(long = "doc", conflicts_with_all = ["remote_host"])]
    pub document: Option<String>,
    /// Parameter of that document as NAME=VALUE.
    #[arg(long = "param", requires = "document")]
    pub params: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SshProxyArgs {
    /// The node: its ID or its unique name (OpenSSH's %h).
    pub node: String,
    /// The port of sshd on the node (OpenSSH's %p).
    #[arg(default_value_t = 22)]
    pub port: u16,
    /// Why: kept in the session history.
    #[arg(long)]
    pub reason: Option<String>,
}

fn start_request(args: &ForwardArgs) -> anyhow::Result<StartSession> {
    let mut parameters = crate::cmd_run::parse_params(&args.params, &[])?;
    let document = match (&args.document, &args.remote_host) {
        (Some(d), _) => d.clone(),
        (None, Some(host)) => {
            parameters.insert("host".into(), Value::String(host.clone()));
            "StartPortForwardingSessionToRemoteHost".into()
        }
        (None, None) => "StartPortForwardingSession".into(),
    };
    if args.document.is_none() {
        parameters.insert(
            "portNumber".into(),
            Value::String(args.remote_port.to_string()),
        );
    }
    Ok(port_session(&args.node, document, parameters, &args.reason))
}

/// A port session's start: this client seals it end to end when the node can.
fn port_session(
    node: &str,
    document: String,
    parameters: std::collections::BTreeMap<String, Value>,
    reason: &Option<String>,
) -> StartSession {
    StartSession {
        node: node.to_string(),
        document: Some(document),
        parameters,
        reason: reason.clone(),
        e2e: Some(true),
        ..StartSession::default()
    }
}

pub async fn forward(args: ForwardArgs) -> anyhow::Result<ExitCode> {
    let client = crate::client_config::client()?;
    // Bind first: a port in use fails before any session starts on the node.
    let listener = TcpListener::bind(SocketAddr::new(args.bind, args.local_port))
        .await
        .with_context(|| format!("listening on {}:{}", args.bind, args.local_port))?;
    let local = listener.local_addr()?;
    let session = client
        .start_session(&start_request(&args)?)
        .await
        .with_context(|| format!("starting port forwarding on {}", args.node))?;
    let mut tunnel = client
        .attach_port(&session.id)
        .await
        .with_context(|| format!("attaching to session {}", session.id))?;
    let expected = match (&args.document, &args.remote_host) {
        (Some(_), _) => session.target.clone(),
        (None, host) => drover_proto::target_label(
            // As the server reads it: an IPv6 address with or without its brackets.
            host.as_deref()
                .unwrap_or(drover_docs::LOCAL_HOST)
                .trim_start_matches('[')
                .trim_end_matches(']'),
            args.remote_port,
        ),
    };
    let agent_key = sealed(&client, &args.node, &session, &expected, &mut tunnel).await?;
    println!(
        "Forwarding {local} to {} through {} (session {}). Ctrl-C ends it.",
        session.target, session.node, session.id
    );
    let (current, watcher) = watch::channel(Some(Arc::new(tunnel)));
    let mut connections = JoinSet::new();
    let mut stop = stop_signals()?;
    loop {
        let attached = current.borrow().clone();
        let Some(tunnel) = attached else {
            // Attach again, for a while; connections accepted meanwhile wait.
            match reattach(&client, &session.id).await {
                Some(mut t) => {
                    if let Some(k) = &agent_key {
                        t.seal_with(k.clone(), expected.clone());
                    }
                    eprintln!("drover: attached again to session {}", session.id);
                    current.send_replace(Some(Arc::new(t)));
                    continue;
                }
                None => return Ok(ended(&client, &session.id).await),
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = accepted.context("accepting a local connection")?;
                let _ = socket.set_nodelay(true);
                connections.spawn(carry(socket, peer, watcher.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = tunnel.closed() => {
                if session_ended(&client, &session.id).await {
                    return Ok(ended(&client, &session.id).await);
                }
                eprintln!("drover: the connection to the server dropped; attaching again");
                current.send_replace(None);
            }
            _ = stop.recv() => {
                tunnel.goodbye("ended by the user").await;
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

/// Carries one local connection through the session.
async fn carry(
    mut socket: TcpStream,
    peer: SocketAddr,
    mut tunnel: watch::Receiver<Option<Arc<PortTunnel>>>,
) {
    let t = match tunnel.wait_for(Option::is_some).await {
        Ok(t) => t.clone(),
        Err(_) => return,
    };
    let Some(t) = t else { return };
    match t.carry(&mut socket).await {
        Ok(()) => {}
        Err(ConnectError::Refused { message, .. }) => {
            eprintln!("drover: connection from {peer} not forwarded: {message}");
        }
        Err(e) => eprintln!("drover: connection from {peer} lost: {e}"),
    }
}

/// Checks a sealed session's agent key and seals the tunnel with it; says so on one line.
/// A key that does not check out ends the session: never a silent fallback to plain.
async fn sealed(
    client: &Client,
    asked_node: &str,
    session: &SessionView,
    target: &str,
    tunnel: &mut PortTunnel,
) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(offer) = &session.e2e else {
        eprintln!(
            "drover: session {} is not end-to-end encrypted (the server can read it)",
            session.id
        );
        return Ok(None);
    };
    // What the server says must be what was asked for: the node (when named by its ID) and the
    // target, to which the handshake is bound.
    let asked_id = asked_node.starts_with("n-");
    if (asked_id && asked_node != session.node) || session.target != target {
        tunnel.goodbye("the session is not the one asked for").await;
        anyhow::bail!(
            "the server started a session to {} on {}; asked for {target} on {asked_node}",
            session.target,
            session.node
        );
    }
    match client.check_e2e(&session.node, offer) {
        Ok((key, fp)) => {
            eprintln!(
                "drover: session {} is end-to-end encrypted (agent key sha256:{})",
                session.id,
                fp.get(..16).unwrap_or(&fp)
            );
            tunnel.seal_with(key.clone(), target.to_string());
            Ok(Some(key))
        }
        Err(e) => {
            tunnel
                .goodbye("the agent's end-to-end key did not check out")
                .await;
            Err(e).context("checking the node's end-to-end key")
        }
    }
}

async fn reattach(client: &Client, id: &str) -> Option<PortTunnel> {
    let until = tokio::time::Instant::now() + RESUME_FOR;
    let mut wait = Duration::from_millis(100);
    while tokio::time::Instant::now() < until {
        match client.attach_port(id).await {
            Ok(t) => return Some(t),
            // The session is over, or was never ours: no point in trying again.
            Err(e) if matches!(e.status(), Some(403 | 404 | 409)) => return None,
            Err(_) => {}
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
    None
}

async fn session_ended(client: &Client, id: &str) -> bool {
    matches!(
        client.get_session(id).await,
        Ok(SessionView {
            ended_at: Some(_),
            ..
        })
    )
}

/// Says how the session ended, and exits with 0 only for an end the user asked for.
async fn ended(client: &Client, id: &str) -> ExitCode {
    match client.get_session(id).await {
        Ok(s) if s.ended_at.is_some() => {
            eprintln!("drover: session {id} ended: {}: {}", s.status, s.detail);
        }
        _ => eprintln!("drover: lost session {id}"),
    }
    ExitCode::from(1)
}

/// Ctrl-C, SIGTERM and SIGHUP end the forward cleanly.
fn stop_signals() -> anyhow::Result<tokio::sync::mpsc::Receiver<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ] {
        let mut s = signal(kind).context("installing a signal handler")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            s.recv().await;
            let _ = tx.send(()).await;
        });
    }
    Ok(rx)
}

/// OpenSSH's ProxyCommand: standard input and output become one connection to the node's sshd.
pub async fn ssh_proxy(args: SshProxyArgs) -> anyhow::Result<ExitCode> {
    // ssh sends its ProxyCommand SIGHUP when it exits: end the session then, not 30 s later.
    let mut stop = stop_signals()?;
    let client = crate::client_config::client()?;
    let session = client
        .start_session(&port_session(
            &args.node,
            "StartSSHSession".into(),
            [("portNumber".into(), Value::String(args.port.to_string()))].into(),
            &args.reason,
        ))
        .await
        .with_context(|| format!("starting an SSH session on {}", args.node))?;
    let mut tunnel = client
        .attach_port(&session.id)
        .await
        .with_context(|| format!("attaching to session {}", session.id))?;
    let target = drover_proto::target_label(drover_docs::LOCAL_HOST, args.port);
    sealed(&client, &args.node, &session, &target, &mut tunnel).await?;
    let mut stdio = crate::stdio::Stdio::open()?;
    let result = tokio::select! {
        r = tunnel.carry(&mut stdio) => r,
        _ = stop.recv() => Ok(()),
    };
    tunnel.goodbye("the SSH connection ended").await;
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ ConnectError::Refused { .. }) => {
            anyhow::bail!(
                "connecting to sshd on {} port {}: {e}",
                args.node,
                args.port
            )
        }
        Err(e) => Err(e).context("relaying the SSH connection"),
    }
}
