//! Sessions: the server brokers them. `open` checks the request, opens a stream on the node's
//! tunnel and asks the agent to start the session; a [`broker`] task then relays between that
//! stream and whichever client WebSocket is attached, records it, and ends it. The history
//! (and the events an audit log will take over) is in the store.
//!
//! Which sessions are live is known only to the server process that holds its node's tunnel;
//! a second replica will relay an attach to that peer, as it will for commands.

mod attach;
pub mod broker;
pub mod forward;
mod limits;
pub mod recording;
#[cfg(feature = "test-hooks")]
mod tap;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::WebSocket;
use drover_proto::{Message, SessionKind, SessionStart, StreamKind, StreamOpen, Terminal};
use drover_store::{DocumentVersion, NodeId, SessionEnd, SessionEvent, SessionRecord, Store};
use drover_tunnel::FrameCodec;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::api::ApiError;
use crate::authz::{Action, Authz, Principal};
use crate::commands::resolve::{self, SESSION_PREFERENCES};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::secrets;
use drover_docs::{Preferences, SessionType};
use forward::PortOpen;
use recording::{CastWriter, Recordings};

/// The user a root agent runs sessions as when the server names none (the agent's
/// `--session-user` default).
pub const DEFAULT_SESSION_USER: &str = "drover-user";

/// How long the agent has to start the session's process.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A live session, as the rest of the server reaches it.
struct Live {
    owner: String,
    /// The token that started it, and those its owner attached with: revoking any of them
    /// (or logging out of it) ends the session.
    token: String,
    attached: Vec<String>,
    /// The access request it runs under, if a grant allowed it: it ends with the grant.
    grant: Option<String>,
    attach: Attach,
    terminate: mpsc::Sender<String>,
}

/// How a client attaches: a WebSocket of session frames (shells and commands), or a
/// multiplexed connection of forwarded streams (port forwarding and SSH).
#[derive(Clone)]
enum Attach {
    Stream(mpsc::Sender<WebSocket>),
    Mux(mpsc::Sender<forward::ClientIo>),
}

/// What a client asks for, already checked at the boundary.
pub struct OpenRequest {
    pub node: NodeId,
    /// A session document and its parameters; none: the shell, or `command`'s built-in.
    pub document: Option<String>,
    pub parameters: BTreeMap<String, serde_json::Value>,
    pub command: Option<String>,
    /// The client's terminal; a command session without a PTY ignores it.
    pub terminal: Terminal,
    pub pty: bool,
    pub reason: String,
    /// The client can seal a port session end to end.
    pub e2e: bool,
    /// The access request whose grant allowed it (set by `open`): the session ends with it.
    pub grant: Option<String>,
}

/// What a session runs, decided from its document.
struct Plan {
    document: String,
    runs: Runs,
    prefs: Preferences,
}

impl Plan {
    /// The session's kind, as policies see it.
    fn kind(&self) -> &'static str {
        match &self.runs {
            Runs::Port(_) if self.document == "StartSSHSession" => "ssh",
            Runs::Port(_) => "port",
            Runs::Process {
                kind: SessionKind::Shell,
                ..
            } => "shell",
            Runs::Process { .. } => "command",
        }
    }
}

enum Runs {
    Process {
        kind: SessionKind,
        command: Option<String>,
        env: BTreeMap<String, String>,
    },
    Port(drover_docs::PortTarget),
}

pub struct Sessions {
    store: Arc<dyn Store>,
    audit: Arc<crate::audit::Audit>,
    registry: Registry,
    metrics: Metrics,
    recordings: Arc<dyn Recordings>,
    /// Networks forwarded connections may not reach, beyond the agents' own list.
    forward_deny: Vec<String>,
    /// The CA certificate clients pin (DER), for them to check an agent's end-to-end key.
    ca_der: Vec<u8>,
    live: Arc<Mutex<HashMap<String, Live>>>,
}

impl Sessions {
    pub fn new(
        store: Arc<dyn Store>,
        audit: Arc<crate::audit::Audit>,
        registry: Registry,
        metrics: Metrics,
        recordings: Arc<dyn Recordings>,
        forward_deny: Vec<String>,
        ca_der: Vec<u8>,
    ) -> Self {
        Self {
            store,
            audit,
            registry,
            metrics,
            recordings,
            forward_deny,
            ca_der,
            live: Arc::default(),
        }
    }

    /// The server-wide preferences: the default version of `SessionManagerRunShell`.
    async fn preferences(&self) -> Result<Preferences, ApiError> {
        let Some(d) = self.store.get_document(SESSION_PREFERENCES.0, None).await? else {
            return Ok(Preferences::default());
        };
        let doc = drover_docs::parse_session(&d.content)
            .map_err(|e| ApiError::Internal(format!("{} no longer parses: {e}", d.name)))?;
        Preferences::from_inputs(&doc.inputs)
            .map_err(|e| ApiError::Internal(format!("{}: {e}", d.name)))
    }

    /// Decides what the session runs: its document, kind, command line and preferences.
    async fn plan(&self, req: &OpenRequest) -> Result<Plan, ApiError> {
        let (name, params) = match (&req.document, &req.command) {
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest(
                    "give a session document or a command, not both".into(),
                ))
            }
            (Some(d), None) => (d.clone(), req.parameters.clone()),
            (None, Some(c)) if req.parameters.is_empty() => (
                if req.pty {
                    "StartInteractiveCommand"
                } else {
                    "StartNonInteractiveCommand"
                }
                .to_string(),
                BTreeMap::from([("command".to_string(), serde_json::Value::String(c.clone()))]),
            ),
            (None, None) if req.parameters.is_empty() => {
                (SESSION_PREFERENCES.0.to_string(), BTreeMap::new())
            }
            (None, _) => {
                return Err(ApiError::BadRequest(
                    "parameters: only a session document takes parameters".into(),
                ))
            }
        };
        let record = match resolve::find(self.store.as_ref(), &name).await {
            // Deleted by an operator: the defaults, as before it was first created.
            Err(ApiError::NotFound(_)) if name == SESSION_PREFERENCES.0 => DocumentVersion {
                name: name.clone(),
                version: 0,
                content: SESSION_PREFERENCES.1.to_string(),
                format: "YAML".into(),
                description: String::new(),
                created_at: 0,
                is_default: true,
                latest_version: 0,
            },
            other => other?,
        };
        if !drover_docs::is_session_document(&record.content) {
            return Err(ApiError::BadRequest(format!(
                "{name} is a command document: run it with `drover run`, not as a session"
            )));
        }
        let doc = drover_docs::parse_session(&record.content)
            .map_err(|e| ApiError::Internal(format!("{name} no longer parses: {e}")))?;
        let values = drover_docs::validate_declared(&doc.parameters, &params)
            .map_err(|e| ApiError::BadRequest(format!("invalid parameters: {e}")))?;
        let mut prefs = self.preferences().await?;
        let runs = match doc.session_type {
            SessionType::StandardStream => {
                // A shell document of its own may set its own profile and make the limits
                // stricter; who a session runs as and whether it is recorded stay the
                // server-wide preferences'.
                let own = Preferences::from_inputs(&doc.inputs)
                    .map_err(|e| ApiError::Internal(format!("{name}: {e}")))?;
                prefs = limits::stricter(prefs, own);
                Runs::Process {
                    kind: SessionKind::Shell,
                    command: None,
                    env: BTreeMap::new(),
                }
            }
            t @ (SessionType::InteractiveCommands | SessionType::NonInteractiveCommands) => {
                let (line, env) = doc
                    .resolve_command(&values)
                    .map_err(|e| ApiError::Internal(format!("{name}: {e}")))?;
                let kind = if t == SessionType::InteractiveCommands {
                    SessionKind::Interactive
                } else {
                    SessionKind::NonInteractive
                };
                Runs::Process {
                    kind,
                    command: Some(line),
                    env,
                }
            }
            SessionType::Port => Runs::Port(
                doc.port_target(&values)
                    .map_err(|e| ApiError::BadRequest(format!("{name}: {e}")))?,
            ),
        };
        Ok(Plan {
            document: record.name,
            runs,
            prefs,
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a session event and its audit entry; a start outside the node's change windows
    /// adds `outside_change_window` (`session.outside_change_window` in the audit log).
    async fn event(&self, session_id: &str, event: &str, actor: &str, node: &str, detail: &str) {
        let mut events = vec![(event.to_string(), detail.to_string())];
        if event == "started" {
            let alert = crate::windows::alert(self.store.as_ref(), actor, node).await;
            events.extend(alert.map(|a| ("outside_change_window".to_string(), a)));
        }
        for (event, detail) in events {
            let e = SessionEvent {
                at: secrets::now(),
                session_id: session_id.to_string(),
                event,
                actor: actor.to_string(),
                node_id: node.to_string(),
                detail,
            };
            if let Err(err) = self.store.add_session_event(&e).await {
                tracing::warn!(error = %err, event = %e.event, "could not store a session event");
            }
            // Every session event is an audit entry too.
            let audit = crate::audit::session_event(session_id, &e.event, actor, node, &e.detail);
            self.audit.record(audit).await;
        }
    }

    /// The OS user an SSH certificate names: the run-as user when run-as is on, else the
    /// user sessions run as by default on a root agent.
    pub async fn ssh_principal(&self) -> Result<String, ApiError> {
        let prefs = self.preferences().await?;
        Ok(if prefs.run_as_enabled {
            prefs.run_as_default_user
        } else {
            DEFAULT_SESSION_USER.to_string()
        })
    }

    /// Records that an SSH certificate was issued (no session exists yet).
    pub async fn ssh_certificate_issued(&self, who: &Principal, node: &str, detail: &str) {
        self.event("", "ssh_certificate", &who.user.name, node, detail)
            .await;
    }

    /// Records a refusal (authorization, an offline node, a failed start) with who and why.
    pub async fn refused(&self, who: &Principal, node: &str, why: &str) {
        // The node is as the client gave it: keep the record short.
        let node: String = node.chars().take(256).collect();
        self.event("", "refused", &who.user.name, &node, why).await;
    }

    /// Starts a session on the node and its broker; the client attaches next. A sealed port
    /// session comes with what the client needs to check the agent's key.
    /// `who` must be allowed to StartSession on the node, with the session's document and kind
    /// (`shell`, `command`, `port` or `ssh`); a refusal is recorded like any other.
    pub async fn open(
        &self,
        who: &Principal,
        mut req: OpenRequest,
        authz: &Authz,
    ) -> Result<(SessionRecord, Option<drover_api::E2eOffer>), ApiError> {
        let node = req.node.to_string();
        let Some(facts) = self.store.get_node(&req.node).await? else {
            return Err(ApiError::NotFound(format!("node {node}")));
        };
        let plan = self.plan(&req).await?;
        let ctx = drover_policy::Context {
            document: Some(plan.document.clone()),
            kind: Some(plan.kind().into()),
        };
        let resource = drover_policy::Resource::Node(crate::authz::node_facts(&facts));
        let checked = authz
            .check_granted(who, Action::StartSession, &resource, &ctx)
            .await;
        if let Ok(Some(grant)) = &checked {
            // Its history says under which request, and why.
            req.reason = match req.reason.as_str() {
                "" => format!("access request {}: {}", grant.id, grant.reason),
                r => format!("access request {}: {} ({r})", grant.id, grant.reason),
            };
            req.grant = Some(grant.id.clone());
        }
        if let Err(e) = checked {
            self.refused(who, &node, &e.to_string()).await;
            // A node the user may not even see is "not found", as everywhere else.
            let visible = authz
                .check(who, Action::ReadNode, &resource, &Default::default())
                .await
                .is_ok();
            return Err(if visible {
                e
            } else {
                ApiError::NotFound(format!("node {node} not found"))
            });
        }
        let Some((tunnel, node_key)) = self.registry.tunnel_and_key(&req.node) else {
            let why = match self.store.get_node(&req.node).await? {
                None => return Err(ApiError::NotFound(format!("node {node}"))),
                Some(n) => format!("node {node} is {:?} (its agent is not connected)", n.status),
            };
            self.refused(who, &node, &why).await;
            return Err(ApiError::Conflict(why));
        };
        // Microseconds first, so that IDs sort by start even within a second (history is listed
        // newest first, and paged, by ID).
        let micros = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
        let id = format!("s-{:013x}{}", micros.max(0), secrets::random_hex(5));
        let (kind, command, plan_env) = match plan.runs {
            Runs::Port(target) => {
                let port = PortOpen {
                    id,
                    document: plan.document,
                    prefs: plan.prefs,
                    target,
                    tunnel,
                    node_key,
                };
                return self.open_port(who, &req, port).await;
            }
            Runs::Process { kind, command, env } => (kind, command, env),
        };
        let prefs = &plan.prefs;
        let run_as = prefs
            .run_as_enabled
            .then(|| prefs.run_as_default_user.clone());
        let terminal = (kind != SessionKind::NonInteractive).then(|| req.terminal.clone());
        // Every kind is recorded when recording is on: a command without a PTY can read a
        // shell's commands from its input as well as a terminal can.
        let recorded = prefs.record_sessions;
        let record = SessionRecord {
            id: id.clone(),
            user: who.user.name.clone(),
            node_id: node.clone(),
            kind: format!("{kind:?}"),
            document: plan.document.clone(),
            reason: req.reason.clone(),
            run_as: run_as.clone().unwrap_or_default(),
            started_at: secrets::now(),
            ended_at: None,
            status: "Connecting".into(),
            detail: String::new(),
            exit_code: None,
            bytes_in: 0,
            bytes_out: 0,
            recorded,
            target: String::new(),
            connections: 0,
            end_to_end: false,
        };
        self.store.create_session(&record).await?;
        let mut env = prefs.shell_environment.clone();
        env.extend(plan_env);
        let start = SessionStart {
            session_id: id.clone(),
            kind,
            command,
            terminal: terminal.clone(),
            run_as,
            env,
            workdir: prefs.working_directory.clone(),
            profile: if kind == SessionKind::Shell {
                prefs.shell_profile.clone()
            } else {
                String::new()
            },
        };
        let agent = match tokio::time::timeout(START_TIMEOUT, start_on(&tunnel, start)).await {
            Ok(Ok(a)) => a,
            Ok(Err(why)) => return Err(self.failed_start(who, &id, &node, why).await),
            Err(_) => {
                let why = "the agent did not start the session in time".to_string();
                return Err(self.failed_start(who, &id, &node, why).await);
            }
        };
        let recorder = match recorded {
            true => match self.recordings.create(&id).await {
                Ok(sink) => Some(
                    CastWriter::start(
                        sink,
                        req.terminal.cols,
                        req.terminal.rows,
                        &req.terminal.term,
                        record.started_at,
                        prefs.record_input,
                    )
                    .await,
                ),
                Err(e) => {
                    // Recording is required when on: no recording, no session.
                    let why = format!("could not create the session's recording: {e}");
                    return Err(self.failed_start(who, &id, &node, why).await);
                }
            },
            _ => None,
        };
        self.metrics.session_started();
        self.event(&id, "started", &who.user.name, &node, &req.reason)
            .await;
        let (attach_tx, attach) = mpsc::channel(4);
        let (terminate_tx, terminate) = mpsc::channel(4);
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        self.live().insert(
            id.clone(),
            Live {
                owner: who.user.name.clone(),
                token: who.token_id.clone(),
                attached: Vec::new(),
                grant: req.grant.clone(),
                attach: Attach::Stream(attach_tx),
                terminate: terminate_tx,
            },
        );
        let limits = limits::of(prefs);
        let ctl = broker::Control {
            attach,
            terminate,
            connected: Some(connected_tx),
            bytes: self.metrics.session_byte_counters(),
        };
        self.spawn_broker(
            &id,
            &node,
            connected,
            broker::run(agent, recorder, limits, ctl),
        );
        self.recheck_grant(&id, req.grant.as_deref()).await;
        Ok((record, None))
    }

    /// Runs a session's broker on a task of its own, then records how the session ended.
    fn spawn_broker(
        &self,
        id: &str,
        node: &str,
        connected: tokio::sync::oneshot::Receiver<()>,
        broker: impl std::future::Future<Output = broker::Outcome> + Send + 'static,
    ) {
        let (store, metrics, live) = (self.store.clone(), self.metrics.clone(), self.live.clone());
        let audit = self.audit.clone();
        let (sid, node) = (id.to_string(), node.to_string());
        tokio::spawn(async move {
            let store2 = store.clone();
            let sid2 = sid.clone();
            tokio::spawn(async move {
                if connected.await.is_ok() {
                    let _ = store2.set_session_status(&sid2, "Connected").await;
                }
            });
            let out = broker.await;
            live.lock().unwrap_or_else(|e| e.into_inner()).remove(&sid);
            let end = SessionEnd {
                status: out.closed.status.clone(),
                detail: out.closed.message.clone(),
                exit_code: out.closed.exit_code.map(i64::from),
                ended_at: secrets::now(),
                bytes_in: i64::try_from(out.bytes_in).unwrap_or(i64::MAX),
                bytes_out: i64::try_from(out.bytes_out).unwrap_or(i64::MAX),
                connections: i64::try_from(out.connections).unwrap_or(i64::MAX),
            };
            metrics.session_ended(&end.status);
            if let Err(e) = store.end_session(&sid, &end).await {
                tracing::warn!(session = %sid, error = %e, "could not store the end of a session");
            }
            let detail = match end.exit_code {
                Some(c) => format!("{}: exit status {c}", end.status),
                None => format!("{}: {}", end.status, end.detail),
            };
            let _ = store
                .add_session_event(&SessionEvent {
                    at: end.ended_at,
                    session_id: sid.clone(),
                    event: "ended".into(),
                    actor: String::new(),
                    node_id: node.clone(),
                    detail: detail.clone(),
                })
                .await;
            let ended = crate::audit::session_event(&sid, "ended", "", &node, &detail);
            audit.record(ended).await;
            tracing::info!(session = %sid, status = %end.status, "session ended");
        });
    }

    async fn failed_start(&self, who: &Principal, id: &str, node: &str, why: String) -> ApiError {
        let end = SessionEnd {
            status: "Failed".into(),
            detail: why.clone(),
            exit_code: None,
            ended_at: secrets::now(),
            bytes_in: 0,
            bytes_out: 0,
            connections: 0,
        };
        let _ = self.store.end_session(id, &end).await;
        self.event(id, "refused", &who.user.name, node, &why).await;
        ApiError::Conflict(format!("the session could not start: {why}"))
    }

    /// Ends every live session (the server is stopping).
    pub async fn shutdown(&self) {
        let all: Vec<_> = self.live().values().map(|l| l.terminate.clone()).collect();
        for tx in all {
            let _ = tx.send("the server is stopping".into()).await;
        }
    }

    pub fn recordings(&self) -> &Arc<dyn Recordings> {
        &self.recordings
    }
}

/// Opens the session's stream and waits for the agent to say the process runs.
async fn start_on(
    tunnel: &drover_tunnel::Tunnel,
    start: SessionStart,
) -> Result<drover_tunnel::SessionFramed<drover_tunnel::Stream>, String> {
    let s = tunnel
        .open()
        .await
        .map_err(|e| format!("could not open a stream to the node: {e}"))?;
    let mut framed = FrameCodec::framed(s);
    framed
        .feed(Message::Open(StreamOpen {
            kind: StreamKind::Session,
        }))
        .await
        .map_err(|e| e.to_string())?;
    framed
        .send(Message::SessionStart(start))
        .await
        .map_err(|e| e.to_string())?;
    match framed.next().await {
        Some(Ok(Message::SessionStarted)) => Ok(drover_tunnel::into_session(framed)),
        Some(Ok(Message::Error { code, message })) if code == "unsupported_stream" => Err(format!(
            "the agent on this node is too old for sessions ({message}); upgrade it"
        )),
        Some(Ok(Message::Error { message, .. })) => Err(message),
        Some(Ok(other)) => Err(format!("the agent answered {}", other.kind())),
        Some(Err(e)) => Err(format!("bad answer from the agent: {e}")),
        None => Err("the node closed the stream".into()),
    }
}
