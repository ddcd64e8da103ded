//! The agent's connection loop: dial out, open the control stream, say hello, then keep the
//! connection alive with heartbeats, report inventory changes and renew the certificate, until
//! told to stop. Any loss is followed by a reconnect after a jittered backoff, forever; only a
//! refusal that cannot change (deregistered, unknown node) ends the loop.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_proto::{Hello, Inventory, Message, RefuseCode, StreamKind, StreamOpen};
use drover_tunnel::dial::{self, Endpoint};
use drover_tunnel::{FrameCodec, Framed, Role, Stream, Tunnel, TunnelConfig};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::executor::ExecCtx;
use crate::identity::Identity;
use crate::invocations::Runner;
use crate::session::Sessions;
use crate::{inventory, AgentError};

/// Where the agent's inventory comes from: this machine, or a fixed one (the agent simulator,
/// where thousands of agents share one machine but must look like distinct nodes).
#[derive(Debug, Clone)]
pub enum InventorySource {
    Machine,
    Fixed(Inventory),
}

impl InventorySource {
    fn read(&self) -> Inventory {
        match self {
            InventorySource::Machine => inventory::collect(),
            InventorySource::Fixed(inv) => inv.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    pub proxy: Option<Endpoint>,
    pub dial_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How often the inventory is re-read and, if changed, reported.
    pub inventory_interval: Duration,
    pub inventory: InventorySource,
    pub tunnel: TunnelConfig,
    /// What a script's exit code 194 does.
    pub reboot: RebootMode,
    /// Largest file a downloadContent step may fetch, in bytes.
    pub max_download_bytes: u64,
    /// The OS user sessions run as when the server names none and the agent runs as root.
    pub session_user: String,
    /// The parameter (under `/drover/agents/`) the agent takes its settings from.
    pub settings_parameter: Option<String>,
    /// What applies a new log level (installed by the binary).
    pub settings_hook: crate::settings::SettingsHook,
}

/// Default for [`AgentConfig::max_download_bytes`]: packages and installers fit, a runaway
/// download does not fill the disk.
pub const DEFAULT_MAX_DOWNLOAD_BYTES: u64 = 4 << 30;

/// How the agent reboots the node when a script asks (exit code 194).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootMode {
    /// Reboot the machine (`systemctl reboot`, else `shutdown -r now`).
    Machine,
    /// Only end the agent (with [`AgentEvent::RebootRequested`]); its supervisor starts it again
    /// and it resumes. For containers and tests, where the machine is not the agent's to reboot.
    RestartAgent,
}

impl AgentConfig {
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            proxy: None,
            dial_timeout: Duration::from_secs(20),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            inventory_interval: Duration::from_secs(300),
            inventory: InventorySource::Machine,
            tunnel: TunnelConfig::default(),
            reboot: RebootMode::Machine,
            max_download_bytes: DEFAULT_MAX_DOWNLOAD_BYTES,
            session_user: "drover-user".into(),
            settings_parameter: None,
            settings_hook: Default::default(),
        }
    }
}

/// What happened, for those who watch (the CLI logs them; the simulator counts them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    Connected {
        node_id: String,
    },
    Disconnected {
        reason: String,
    },
    Renewed {
        not_after: i64,
    },
    /// A script asked for a reboot and the mode is [`RebootMode::RestartAgent`]: `run` returns.
    RebootRequested,
}

impl Outcome {
    /// Lost before the server welcomed us.
    fn lost(reason: String) -> Self {
        Outcome::Lost {
            reason,
            was_up: false,
        }
    }
}

enum Outcome {
    /// Told to stop.
    Stopped,
    /// The server refused us for good.
    Refused(String),
    /// The connection ended or could not be made; `was_up` if it had been welcomed.
    Lost { reason: String, was_up: bool },
}

/// Runs the agent until `shutdown` is cancelled or the server refuses it for good.
pub async fn run(
    mut config: AgentConfig,
    shutdown: CancellationToken,
    events: Option<mpsc::Sender<AgentEvent>>,
) -> Result<(), AgentError> {
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_max);
    let emit = |e: AgentEvent| {
        if let Some(tx) = &events {
            let _ = tx.try_send(e);
        }
    };
    // Scripts run in their own directories: every journal path must be absolute.
    config.state_dir = std::path::absolute(&config.state_dir)
        .map_err(AgentError::io("resolve", &config.state_dir))?;
    let identity = Identity::load(&config.state_dir)?;
    let (reboot_tx, mut reboot_rx) = mpsc::channel(4);
    let runner = Runner::new(ExecCtx {
        state_dir: config.state_dir.clone(),
        node_id: identity.state.node_id.clone(),
        platform_type: if cfg!(target_os = "macos") {
            "MacOS"
        } else {
            "Linux"
        },
        reboot: reboot_tx,
        restart_is_reboot: config.reboot == RebootMode::RestartAgent,
        max_download_bytes: config.max_download_bytes,
    });
    runner.recover();
    tokio::spawn(crate::journal::prune_now_and_then(
        config.state_dir.clone(),
        crate::invocations::TOMBSTONE_DAYS,
        shutdown.child_token(),
    ));
    let sessions = Sessions::new(config.session_user.clone(), shutdown.child_token());
    loop {
        let identity = match Identity::load(&config.state_dir) {
            Ok(identity) => identity,
            // A passing failure to read the identity must not end the agent for good.
            Err(e @ AgentError::Io { .. }) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %crate::error_chain(&e), retry_in = ?delay, "could not read the node identity");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        };
        let outcome = tokio::select! {
            o = connect_once(&config, identity, &shutdown, &emit, (&runner, &sessions)) => o,
            Some(()) = reboot_rx.recv() => match config.reboot {
                RebootMode::RestartAgent => {
                    tracing::warn!("a script asked for a reboot: stopping the agent so that it restarts");
                    emit(AgentEvent::RebootRequested);
                    return Ok(());
                }
                RebootMode::Machine => {
                    reboot_machine().await;
                    continue;
                }
            },
        };
        match outcome {
            Outcome::Stopped => return Ok(()),
            Outcome::Refused(why) => {
                emit(AgentEvent::Disconnected {
                    reason: why.clone(),
                });
                return Err(AgentError::Refused(why));
            }
            Outcome::Lost { reason, was_up } => {
                if was_up {
                    backoff.reset();
                }
                emit(AgentEvent::Disconnected {
                    reason: reason.clone(),
                });
                let delay = backoff.next_delay();
                tracing::warn!(%reason, retry_in = ?delay, "connection to the server lost");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    }
}

/// The heartbeat interval the server asked for, kept within 1 s and 1 day: a peer's number
/// must not overflow the agent's clock arithmetic (three intervals of silence end a connection).
fn heartbeat_interval(secs: u64) -> Duration {
    Duration::from_secs(secs.clamp(1, 86_400))
}

/// Reboots the machine; the journal resumes the invocation after boot.
async fn reboot_machine() {
    tracing::warn!("a script asked for a reboot: rebooting the machine");
    for (cmd, args) in [
        ("systemctl", &["reboot"][..]),
        ("shutdown", &["-r", "now"][..]),
    ] {
        match tokio::process::Command::new(cmd).args(args).status().await {
            Ok(s) if s.success() => return,
            Ok(s) => tracing::error!(%cmd, status = %s, "reboot command failed"),
            Err(e) => tracing::error!(%cmd, error = %e, "could not run the reboot command"),
        }
    }
}

async fn connect_once(
    config: &AgentConfig,
    mut identity: Identity,
    shutdown: &CancellationToken,
    emit: &impl Fn(AgentEvent),
    workers: (&Arc<Runner>, &Arc<Sessions>),
) -> Outcome {
    let lost = Outcome::lost;
    let target = match Endpoint::parse(&identity.state.server, 443) {
        Ok(t) => t,
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    let tls = match identity.client_auth().and_then(|auth| {
        drover_client::pinned_tls(
            &identity.state.ca_fingerprint,
            &[drover_proto::ALPN_AGENT],
            Some(auth),
        )
        .map_err(AgentError::from)
    }) {
        Ok(cfg) => Arc::new(cfg),
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    // A proxy the agent was started with wins over one its central settings name; one from the
    // settings that does not work is passed by, straight to the server: a wrong value must not
    // cut the fleet off from the server that could correct it.
    let central = config
        .settings_parameter
        .as_ref()
        .and_then(|_| crate::settings::saved_proxy(&config.state_dir))
        .filter(|_| config.proxy.is_none());
    let proxy = config.proxy.clone().or_else(|| central.clone());
    let dialled = tokio::select! {
        r = dial::dial(&target, proxy.as_ref(), tls.clone(), config.dial_timeout) => r,
        _ = shutdown.cancelled() => return Outcome::Stopped,
    };
    let dialled = match (dialled, &central) {
        (Err(e), Some(p)) => {
            tracing::warn!(proxy = %format!("{}:{}", p.host, p.port), error = %crate::error_chain(&e), "the proxy from the central settings failed; connecting directly");
            tokio::select! {
                r = dial::dial(&target, None, tls, config.dial_timeout) => r,
                _ = shutdown.cancelled() => return Outcome::Stopped,
            }
        }
        (r, _) => r,
    };
    let tls = match dialled {
        Ok(t) => t,
        Err(e) => return lost(crate::error_chain(&e)),
    };
    let (tunnel, mut incoming, driver) = Tunnel::start(tls, Role::Agent, &config.tunnel);
    let mut driver = tokio::spawn(driver);
    let outcome = session(
        config,
        &mut identity,
        &tunnel,
        &mut incoming,
        shutdown,
        emit,
        workers,
    )
    .await;
    tunnel.close();
    if tokio::time::timeout(Duration::from_secs(2), &mut driver)
        .await
        .is_err()
    {
        tracing::debug!("tunnel driver did not finish in time");
        driver.abort();
    }
    outcome
}

async fn session(
    config: &AgentConfig,
    identity: &mut Identity,
    tunnel: &Tunnel,
    incoming: &mut drover_tunnel::Incoming,
    shutdown: &CancellationToken,
    emit: &impl Fn(AgentEvent),
    (runner, sessions): (&Arc<Runner>, &Arc<Sessions>),
) -> Outcome {
    let lost = Outcome::lost;
    let stream = match tunnel.open().await {
        Ok(s) => s,
        Err(e) => return lost(crate::error_chain(&e)),
    };
    let mut framed = FrameCodec::framed(stream);
    let mut inv = config.inventory.read();
    let hello = [
        Message::Open(StreamOpen {
            kind: StreamKind::Control,
        }),
        Message::Hello(Hello {
            min_version: drover_proto::MIN_PROTOCOL_VERSION,
            max_version: drover_proto::PROTOCOL_VERSION,
            inventory: inv.clone(),
            e2e_key: sessions.signed_e2e_key(identity),
            settings_parameter: config.settings_parameter.clone(),
        }),
    ];
    for m in hello {
        if let Err(e) = framed.feed(m).await {
            return lost(format!("could not send hello: {e}"));
        }
    }
    if let Err(e) = framed.flush().await {
        return lost(format!("could not send hello: {e}"));
    }
    let welcome = tokio::select! {
        r = tokio::time::timeout(config.dial_timeout, framed.next()) => r,
        _ = shutdown.cancelled() => return Outcome::Stopped,
    };
    let welcome = match welcome {
        Err(_) => return lost("no answer to hello in time".into()),
        Ok(None) => return lost("the server closed the connection during hello".into()),
        Ok(Some(Err(e))) => return lost(format!("bad frame from the server: {e}")),
        Ok(Some(Ok(Message::Welcome(w)))) => w,
        Ok(Some(Ok(Message::Refused(r)))) => return refused(r),
        Ok(Some(Ok(other))) => return lost(format!("expected welcome, got {}", other.kind())),
    };
    tracing::info!(node = %welcome.node_id, server = %identity.state.server, version = welcome.version, "connected");
    emit(AgentEvent::Connected {
        node_id: welcome.node_id.clone(),
    });
    let apply_settings = |s: &drover_proto::AgentSettings| {
        let name = config.settings_parameter.as_deref().unwrap_or_default();
        crate::settings::apply(&config.state_dir, &config.settings_hook, name, s);
    };
    match (&welcome.settings, &config.settings_parameter) {
        (Some(s), _) => apply_settings(s),
        // The parameter is gone or unusable: nothing central is kept in force.
        (None, Some(_)) => crate::settings::forget(&config.state_dir),
        (None, None) => {}
    }
    let up = |reason: String| Outcome::Lost {
        reason,
        was_up: true,
    };

    let heartbeat = heartbeat_interval(welcome.heartbeat_secs);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inventory_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + config.inventory_interval,
        config.inventory_interval,
    );
    let mut last_heard = Instant::now();
    let mut seq = 0u64;
    // The key of a renewal in flight: kept in memory until the certificate for it arrives.
    let mut pending_key: Option<String> = None;
    // Tasks serving streams the server opened; dropped (and so aborted) with the connection.
    let mut streams = tokio::task::JoinSet::new();
    if let Err(e) = maybe_renew(identity, &mut framed, &mut pending_key).await {
        return up(e);
    }

    loop {
        tokio::select! {
            frame = framed.next() => {
                let msg = match frame {
                    None => return up("the server closed the control stream".into()),
                    Some(Err(e)) => return up(format!("bad frame from the server: {e}")),
                    Some(Ok(m)) => m,
                };
                last_heard = Instant::now();
                match msg {
                    Message::Ping { seq } => {
                        if let Err(e) = framed.send(Message::Pong { seq }).await {
                            return up(format!("send failed: {e}"));
                        }
                    }
                    Message::Pong { .. } => {}
                    Message::CertificateIssued(issued) => match pending_key.take() {
                        Some(key) => match Identity::save(&identity.dir, &identity.state, &issued.cert_pem, &key, None) {
                            Ok(next) => {
                                tracing::info!(not_after = issued.not_after, "renewed the node certificate");
                                emit(AgentEvent::Renewed { not_after: next.not_after });
                                *identity = next;
                                // Saved durably: the server may retire the previous certificate.
                                if welcome.version >= 2 {
                                    if let Err(e) = framed.send(Message::CertificateSaved).await {
                                        return up(format!("send failed: {e}"));
                                    }
                                }
                            }
                            Err(e) => tracing::error!(error = %crate::error_chain(&e), "could not save the renewed certificate"),
                        },
                        None => tracing::warn!("ignored a certificate that was not asked for"),
                    },
                    Message::Settings(s) if config.settings_parameter.is_some() => apply_settings(&s),
                    Message::Refused(r) => return refused(r),
                    Message::Goodbye { reason } => return up(format!("server said goodbye: {reason}")),
                    Message::Error { code, message } => {
                        tracing::warn!(%code, %message, "the server reported an error");
                        pending_key = None;
                    }
                    other => tracing::warn!(kind = other.kind(), "ignored an unexpected message"),
                }
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > heartbeat * 3 {
                    return up(format!("no heartbeat from the server for {:?}", last_heard.elapsed()));
                }
                seq += 1;
                if let Err(e) = framed.send(Message::Ping { seq }).await {
                    return up(format!("send failed: {e}"));
                }
                if let Err(e) = maybe_renew(identity, &mut framed, &mut pending_key).await {
                    return up(e);
                }
            }
            _ = inventory_tick.tick() => {
                let next = config.inventory.read();
                if next != inv {
                    inv = next;
                    if let Err(e) = framed.send(Message::Inventory(inv.clone())).await {
                        return up(format!("send failed: {e}"));
                    }
                }
            }
            stream = incoming.accept() => match stream {
                Some(s) => {
                    streams.spawn(serve_stream(runner.clone(), sessions.clone(), s));
                }
                None => {
                    // The server may have said why just before closing: read what is buffered.
                    return match tokio::time::timeout(Duration::from_millis(500), framed.next()).await {
                        Ok(Some(Ok(Message::Refused(r)))) => refused(r),
                        Ok(Some(Ok(Message::Goodbye { reason }))) => up(format!("server said goodbye: {reason}")),
                        _ => up("the tunnel closed".into()),
                    };
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            _ = shutdown.cancelled() => {
                // Open sessions tell their users why they end before the tunnel goes.
                sessions.wait_ended(Duration::from_secs(5)).await;
                let _ = framed.send(Message::Goodbye { reason: "agent stopping".into() }).await;
                return Outcome::Stopped;
            }
        };
    }
}

fn refused(r: drover_proto::Refused) -> Outcome {
    match r.code {
        RefuseCode::Deregistered | RefuseCode::UnknownNode => Outcome::Refused(r.message),
        // Version or other: the server may change (be upgraded); keep trying, slowly.
        _ => Outcome::Lost {
            reason: format!("refused: {}", r.message),
            was_up: false,
        },
    }
}

/// Asks for a new certificate once two thirds of the current one's lifetime have passed.
async fn maybe_renew(
    identity: &Identity,
    framed: &mut Framed<Stream>,
    pending_key: &mut Option<String>,
) -> Result<(), String> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if pending_key.is_some() || !identity.wants_renewal(now) {
        return Ok(());
    }
    let key = drover_pki::NodeKey::generate().map_err(|e| e.to_string())?;
    framed
        .send(Message::RenewCertificate {
            csr_pem: key.csr_pem.clone(),
        })
        .await
        .map_err(|e| format!("send failed: {e}"))?;
    *pending_key = Some(key.key_pem);
    tracing::info!("asked the server to renew the node certificate");
    Ok(())
}

/// A stream the server opened: its first frame says what it is for.
async fn serve_stream(runner: Arc<Runner>, sessions: Arc<Sessions>, stream: Stream) {
    let mut framed = FrameCodec::framed(stream);
    let first = tokio::time::timeout(Duration::from_secs(10), framed.next()).await;
    let message = match first {
        Ok(Some(Ok(Message::Open(open)))) if open.kind == StreamKind::Invocation => {
            match tokio::time::timeout(Duration::from_secs(10), framed.next()).await {
                Ok(Some(Ok(Message::Invoke(invoke)))) => {
                    crate::invocations::serve(runner, framed, invoke).await;
                    return;
                }
                _ => "expected invoke after open".to_string(),
            }
        }
        Ok(Some(Ok(Message::Open(open)))) if open.kind == StreamKind::Session => {
            match tokio::time::timeout(Duration::from_secs(10), framed.next()).await {
                Ok(Some(Ok(Message::SessionStart(start)))) => {
                    sessions.start(framed, start);
                    return;
                }
                _ => "expected session_start after open".to_string(),
            }
        }
        Ok(Some(Ok(Message::Open(open)))) if open.kind == StreamKind::Forward => {
            match tokio::time::timeout(Duration::from_secs(10), framed.next()).await {
                Ok(Some(Ok(Message::ForwardConnect(req)))) => {
                    crate::forward::serve(framed, req, sessions.e2e.as_ref()).await;
                    return;
                }
                _ => "expected forward_connect after open".to_string(),
            }
        }
        Ok(Some(Ok(Message::Open(open)))) => {
            format!("stream kind {:?} is not served by this agent", open.kind)
        }
        Ok(Some(Ok(other))) => format!("expected open, got {}", other.kind()),
        Ok(Some(Err(e))) => format!("bad frame: {e}"),
        Ok(None) | Err(_) => return,
    };
    let _ = framed
        .send(Message::Error {
            code: "unsupported_stream".into(),
            message,
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_heartbeat_a_server_sends_is_safe_to_count_with() {
        for secs in [0, 1, 30, u64::MAX] {
            let h = heartbeat_interval(secs);
            // What the connection computes with it must not overflow.
            let _ = tokio::time::Instant::now() + h * 3;
            assert!(h >= Duration::from_secs(1) && h <= Duration::from_secs(86_400));
        }
    }
}
