//! Prometheus metrics. Counters are atomics updated on the hot path; encoding happens only when
//! `/metrics` is scraped.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Direction = Vec<(&'static str, &'static str)>;

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    pub agents_connected: Gauge,
    pub agent_connects: Counter,
    pub agent_disconnects: Counter,
    pub agent_refused: Family<Vec<(&'static str, String)>, Counter>,
    /// The two `tunnel_frames` counters, looked up once: every heartbeat counts.
    frames_in: Counter,
    frames_out: Counter,
    pub bytes: Family<Direction, Counter>,
    pub commands: Counter,
    pub invocations: Family<Vec<(&'static str, String)>, Counter>,
    pub pruned: Family<Direction, Counter>,
    sessions_started: Counter,
    sessions_active: Gauge,
    sessions_ended: Family<Vec<(&'static str, String)>, Counter>,
    session_bytes: Family<Direction, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("drover");
        let agents_connected = Gauge::default();
        let agent_connects = Counter::default();
        let agent_disconnects = Counter::default();
        let agent_refused = Family::default();
        let frames: Family<Direction, Counter> = Family::default();
        let bytes = Family::default();
        registry.register(
            "agents_connected",
            "Agents whose connection is open now",
            agents_connected.clone(),
        );
        registry.register(
            "agent_connects",
            "Agent connections accepted",
            agent_connects.clone(),
        );
        registry.register(
            "agent_disconnects",
            "Agent connections ended",
            agent_disconnects.clone(),
        );
        registry.register(
            "agent_refused",
            "Connections refused (caps, handshakes, agent checks), by reason",
            agent_refused.clone(),
        );
        registry.register(
            "tunnel_frames",
            "Control frames on agent tunnels, by direction",
            frames.clone(),
        );
        registry.register(
            "tunnel_bytes",
            "Bytes on agent tunnels (TLS plaintext, all streams), by direction",
            bytes.clone(),
        );
        let commands = Counter::default();
        let invocations = Family::default();
        registry.register("commands_sent", "Commands sent", commands.clone());
        registry.register(
            "invocations",
            "Invocations ended, by final status (Success, Failed, TimedOut, DeliveryTimedOut, Cancelled)",
            invocations.clone(),
        );
        let pruned = Family::default();
        registry.register(
            "history_pruned",
            "Command history removed by the retention policy: invocation outputs, invocations, commands",
            pruned.clone(),
        );
        let sessions_started = Counter::default();
        let sessions_active = Gauge::default();
        let sessions_ended = Family::default();
        let session_bytes = Family::default();
        registry.register(
            "sessions_started",
            "Sessions started",
            sessions_started.clone(),
        );
        registry.register(
            "sessions_active",
            "Sessions open now",
            sessions_active.clone(),
        );
        registry.register(
            "sessions_ended",
            "Sessions ended, by status (Terminated, Failed, TimedOut)",
            sessions_ended.clone(),
        );
        registry.register(
            "session_bytes",
            "Bytes relayed by sessions: in (client to node), out (node to client)",
            session_bytes.clone(),
        );
        let frames_in = frames.get_or_create(&vec![("direction", "in")]).clone();
        let frames_out = frames.get_or_create(&vec![("direction", "out")]).clone();
        Self {
            inner: Arc::new(Inner {
                frames_in,
                frames_out,
                pruned,
                sessions_started,
                sessions_active,
                sessions_ended,
                session_bytes,
                commands,
                invocations,
                registry,
                agents_connected,
                agent_connects,
                agent_disconnects,
                agent_refused,
                bytes,
            }),
        }
    }

    pub fn connected(&self) {
        self.inner.agents_connected.inc();
        self.inner.agent_connects.inc();
    }

    pub fn disconnected(&self) {
        self.inner.agents_connected.dec();
        self.inner.agent_disconnects.inc();
    }

    pub fn pruned(&self, p: &drover_store::Pruned) {
        for (what, n) in [
            ("output", p.outputs),
            ("invocation", p.invocations),
            ("command", p.commands),
        ] {
            self.inner
                .pruned
                .get_or_create(&vec![("what", what)])
                .inc_by(n);
        }
    }

    pub fn refused(&self, reason: &str) {
        self.inner
            .agent_refused
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    pub fn frame_in(&self) {
        self.inner.frames_in.inc();
    }

    pub fn frame_out(&self) {
        self.inner.frames_out.inc();
    }

    /// The counters for bytes in and out, to update without a label lookup per read.
    pub fn byte_counters(&self) -> (Counter, Counter) {
        // One statement per lookup: `get_or_create` returns a read guard on the family, and a
        // second lookup that must insert while the first guard lives would deadlock.
        let bytes_in = self
            .inner
            .bytes
            .get_or_create(&vec![("direction", "in")])
            .clone();
        let bytes_out = self
            .inner
            .bytes
            .get_or_create(&vec![("direction", "out")])
            .clone();
        (bytes_in, bytes_out)
    }

    pub fn command_sent(&self) {
        self.inner.commands.inc();
    }

    pub fn invocation_finished(&self, status: &str) {
        self.inner
            .invocations
            .get_or_create(&vec![("status", status.to_string())])
            .inc();
    }

    pub fn session_started(&self) {
        self.inner.sessions_started.inc();
        self.inner.sessions_active.inc();
    }

    pub fn session_ended(&self, status: &str) {
        self.inner.sessions_active.dec();
        self.inner
            .sessions_ended
            .get_or_create(&vec![("status", status.to_string())])
            .inc();
    }

    /// The counters of bytes relayed by sessions (in, out), counted as they pass.
    pub fn session_byte_counters(&self) -> (Counter, Counter) {
        // One lookup per statement, as in `byte_counters`.
        let bytes_in = self
            .inner
            .session_bytes
            .get_or_create(&vec![("direction", "in")])
            .clone();
        let bytes_out = self
            .inner
            .session_bytes
            .get_or_create(&vec![("direction", "out")])
            .clone();
        (bytes_in, bytes_out)
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.inner.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
