//! Webhooks: the audit log's events, posted to operators' endpoints, signed, in order, at least
//! once, retried with backoff for a day.
//!
//! Each webhook is a cursor into the audit log (`drover_store::alerts`): the entries after it
//! that match its patterns are its queue, as durable as the log. A server process leases the
//! webhooks it delivers (so that a cluster delivers each from one place, in order) and runs a
//! task per webhook that sends its next event, and moves the cursor past it only once the
//! receiver answered 2xx, or a day of retries has passed.
//!
//! A receiver checks `Drover-Signature: sha256=<hex>`, the HMAC-SHA256 with the webhook's
//! secret of `<Drover-Timestamp>.<body>`, and refuses a timestamp more than a few minutes old
//! (a replay). `Drover-Delivery` (`<webhook>:<seq>`) is the same on every retry of an event, so
//! a receiver can drop the duplicates at-least-once delivery may bring.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use drover_store::alerts::{wants, Delivery, HookState, Webhook};
use drover_store::audit::{AuditEntry, AuditQuery};
use drover_store::{Store, StoreError};
use ipnet::IpNet;
use ring::hmac;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::sealing::Sealer;

/// How long a lease lasts; renewed every [`RENEW`].
const LEASE_MS: i64 = 30_000;
const RENEW: Duration = Duration::from_secs(10);
/// The first retry's delay; each next one doubles, up to [`MAX_BACKOFF_MS`].
const FIRST_BACKOFF_MS: i64 = 1_000;
const MAX_BACKOFF_MS: i64 = 5 * 60_000;
/// An event older than this whose delivery fails is given up on (so a receiver that was down
/// for days gets what is recent, after one attempt at each older event).
const GIVE_UP_MS: i64 = 24 * 3_600_000;
/// Skipped entries (not of a webhook's kinds) move its stored cursor at most this often; in
/// between its task remembers them (a restart reads them again, and skips them again).
const SKIP_PERSIST_MS: i64 = 10_000;
/// How long a receiver has to answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a caught-up webhook looks for entries that another server process wrote.
const POLL: Duration = Duration::from_secs(2);
/// Audit entries read at a time.
const PAGE: usize = 200;

pub fn now_ms() -> i64 {
    crate::audit::now_ms()
}

/// The context a webhook's secret is sealed in.
pub fn secret_context(id: &str) -> String {
    format!("webhook/{id}")
}

/// The delay before retry number `attempt` (1 after the first failure).
fn backoff_ms(attempt: i64) -> i64 {
    let doublings = u32::try_from(attempt.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    FIRST_BACKOFF_MS
        .saturating_mul(1_i64 << doublings)
        .min(MAX_BACKOFF_MS)
}

/// `sha256=<hex>` of `<timestamp>.<body>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(format!("{timestamp}.").as_bytes());
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign().as_ref()))
}

/// An event as posted: the audit entry as `drover audit export` shows it, with the webhook and
/// the delivery it goes out as.
pub fn payload(hook_id: &str, delivery: &str, e: &AuditEntry) -> Vec<u8> {
    let mut v = serde_json::to_value(crate::api::audit_view(e.clone())).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("delivery".into(), delivery.into());
        o.insert("webhook".into(), hook_id.into());
    }
    v.to_string().into_bytes()
}

/// The `Drover-Delivery` of an event: the same on every retry (a test event's is its own).
fn delivery_id(hook_id: &str, seq: i64) -> String {
    match seq {
        0 => format!("{hook_id}:test-{}", crate::secrets::random_hex(8)),
        _ => format!("{hook_id}:{seq}"),
    }
}

/// Resolves a receiver's name and refuses it if any address is denied (the cloud metadata
/// services, and the operator's `--forward-deny`), so that no name can rebind around the list.
struct DenyingResolver {
    deny: Arc<Vec<IpNet>>,
}

impl reqwest::dns::Resolve for DenyingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let deny = self.deny.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for a in &addrs {
                if let Some((ip, net)) = drover_proto::denied(a.ip(), &deny) {
                    return Err(format!(
                        "{host} resolves to {ip}, which is in the deny list ({net})"
                    )
                    .into());
                }
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The outcome of one attempt: the status, or the status (0 if none) and what went wrong.
type Sent = Result<u16, (u16, String)>;

/// The error and its causes, on one line ("error sending request: ... Connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

pub struct Webhooks {
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    http: reqwest::Client,
    deny: Arc<Vec<IpNet>>,
    /// This server process, as the holder of leases.
    owner: String,
    /// Bumped by every audit append.
    appended: watch::Receiver<u64>,
    /// Webhooks were created or deleted here: take up the new ones now.
    changed: Notify,
}

/// Entries a webhook's task skipped but has not stored its cursor past yet.
#[derive(Default)]
struct Skipped {
    to: i64,
    stored_at_ms: i64,
}

enum Step {
    /// Delivered or skipped some: look again at once.
    More,
    CaughtUp,
    RetryAt(i64),
    /// Deleted, or its lease went to another process.
    Gone,
}

impl Webhooks {
    pub fn new(
        store: Arc<dyn Store>,
        sealer: Arc<Sealer>,
        owner: String,
        appended: watch::Receiver<u64>,
        extra_deny: &[String],
    ) -> Result<Self, crate::ServerError> {
        let deny = drover_proto::deny_list(extra_deny).map_err(|e| {
            crate::ServerError::Config(format!("deny list entry {e:?} is not a network"))
        })?;
        let deny = Arc::new(deny);
        // No proxy: a proxy would resolve the receiver's name itself, past the deny list.
        let http = crate::oidc::outbound_client(SEND_TIMEOUT)?
            .no_proxy()
            .dns_resolver(Arc::new(DenyingResolver { deny: deny.clone() }))
            .build()
            .map_err(|e| crate::ServerError::Config(format!("webhook HTTP client: {e}")))?;
        Ok(Self {
            store,
            sealer,
            http,
            deny,
            owner,
            appended,
            changed: Notify::new(),
        })
    }

    /// Takes up a webhook created (or lets go of one deleted) without waiting for the next
    /// lease renewal.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// Delivers the webhooks this process holds until `stop`; then lets go of them, so that a
    /// restart (or a peer) takes them up at once.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tasks: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            let now = now_ms();
            match self
                .store
                .lease_webhooks(&self.owner, now, now + LEASE_MS)
                .await
            {
                Ok(held) => {
                    tasks.retain(|id, t| {
                        let keep = !t.is_finished() && held.iter().any(|h| &h.id == id);
                        if !keep {
                            t.abort();
                        }
                        keep
                    });
                    for h in held {
                        tasks.entry(h.id.clone()).or_insert_with(|| {
                            tokio::spawn(self.clone().deliver(h.id, stop.clone()))
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not lease webhooks"),
            }
            tokio::select! {
                _ = tokio::time::sleep(RENEW) => {}
                _ = self.changed.notified() => {}
                _ = stop.cancelled() => break,
            }
        }
        for (_, t) in tasks {
            let _ = t.await;
        }
        if let Err(e) = self.store.lease_webhooks(&self.owner, 0, 0).await {
            tracing::warn!(error = %e, "could not let go of webhooks");
        }
    }

    /// One webhook's loop: send what is due, wait for more.
    async fn deliver(self: Arc<Self>, id: String, stop: CancellationToken) {
        let mut appended = self.appended.clone();
        let mut skipped = Skipped::default();
        loop {
            appended.borrow_and_update();
            let step = tokio::select! {
                s = self.step(&id, &mut skipped) => s,
                _ = stop.cancelled() => return,
            };
            let wake_at = match step {
                Ok(Step::More) => continue,
                Ok(Step::Gone) => return,
                Ok(Step::CaughtUp) => None,
                Ok(Step::RetryAt(at)) => Some(at),
                Err(e) => {
                    tracing::warn!(webhook = %id, error = %e, "webhook delivery stalled");
                    Some(now_ms() + FIRST_BACKOFF_MS)
                }
            };
            let sleep = match wake_at {
                Some(at) => Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)),
                None => POLL,
            };
            tokio::select! {
                changed = appended.changed(), if wake_at.is_none() => {
                    if changed.is_err() {
                        // The audit log is gone (shutting down): poll until stopped.
                        tokio::time::sleep(POLL).await;
                    }
                }
                _ = tokio::time::sleep(sleep) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Logs a gap in the log (entries pruned before this webhook got to them) as given up.
    async fn gap(&self, hook: &Webhook, from: i64, to: i64) -> Result<bool, StoreError> {
        tracing::warn!(webhook = %hook.id, from, to, "audit entries were pruned before their webhook delivered them");
        let d = Delivery {
            hook_id: hook.id.clone(),
            seq: to,
            event: "webhook.gap".into(),
            attempt: 0,
            at_ms: now_ms(),
            status: 0,
            outcome: "gave_up".into(),
            error: format!("entries {from} to {to} were pruned from the audit log before delivery"),
            duration_ms: 0,
        };
        let state = HookState {
            cursor: to,
            ..HookState::default()
        };
        self.store
            .advance_webhook(&hook.id, &self.owner, now_ms(), &state, Some(&d))
            .await
    }

    async fn step(&self, id: &str, skipped: &mut Skipped) -> Result<Step, StoreError> {
        let Some(hook) = self.store.get_webhook(id).await? else {
            return Ok(Step::Gone);
        };
        if hook.state.next_at_ms > now_ms() {
            return Ok(Step::RetryAt(hook.state.next_at_ms));
        }
        let from = hook.state.cursor.max(skipped.to);
        let entries = self
            .store
            .list_audit(&AuditQuery {
                after: Some(from),
                limit: PAGE,
                ..AuditQuery::default()
            })
            .await?;
        let Some(first) = entries.first() else {
            return Ok(Step::CaughtUp);
        };
        // Sequence numbers have no holes but the ones retention makes.
        if first.seq > from + 1 && !self.gap(&hook, from + 1, first.seq - 1).await? {
            return Ok(Step::Gone);
        }
        let mut state = hook.state.clone();
        state.cursor = from.max(state.cursor);
        for e in &entries {
            if !wants(&hook.events, &e.event.action) {
                state.cursor = e.seq;
                continue;
            }
            let started = now_ms();
            let delivery = delivery_id(&hook.id, e.seq);
            let body = payload(&hook.id, &delivery, e);
            let sent = self.send(&hook, &e.event.action, &delivery, &body).await;
            let now = now_ms();
            let attempt = state.attempts + 1;
            let (outcome, status, error) = match &sent {
                Ok(status) => ("delivered", *status, String::new()),
                Err((status, e_)) if now - e.event.at_ms >= GIVE_UP_MS => {
                    ("gave_up", *status, e_.clone())
                }
                Err((status, e_)) => ("failed", *status, e_.clone()),
            };
            let d = Delivery {
                hook_id: hook.id.clone(),
                seq: e.seq,
                event: e.event.action.clone(),
                attempt,
                at_ms: started,
                status: i64::from(status),
                outcome: outcome.into(),
                error: error.clone(),
                duration_ms: now - started,
            };
            let failed = outcome == "failed";
            state = if failed {
                HookState {
                    cursor: state.cursor,
                    attempts: attempt,
                    failing_since_ms: match state.failing_since_ms {
                        0 => now,
                        t => t,
                    },
                    next_at_ms: now + backoff_ms(attempt),
                    last_error: error,
                }
            } else {
                if outcome == "gave_up" {
                    tracing::warn!(webhook = %hook.id, seq = e.seq, "gave up on a webhook event older than a day");
                }
                HookState {
                    cursor: e.seq,
                    ..HookState::default()
                }
            };
            if !self
                .store
                .advance_webhook(&hook.id, &self.owner, now, &state, Some(&d))
                .await?
            {
                return Ok(Step::Gone);
            }
            *skipped = Skipped::default();
            if failed {
                return Ok(Step::RetryAt(state.next_at_ms));
            }
        }
        // Only skipped entries since the last write: remember them, and store them now and
        // then (writing once per entry would cost every webhook a write per audit entry).
        if state.cursor > hook.state.cursor {
            let now = now_ms();
            if now - skipped.stored_at_ms >= SKIP_PERSIST_MS {
                if !self
                    .store
                    .advance_webhook(&hook.id, &self.owner, now, &state, None)
                    .await?
                {
                    return Ok(Step::Gone);
                }
                skipped.stored_at_ms = now;
            }
            skipped.to = state.cursor;
        }
        Ok(Step::More)
    }

    /// Refuses a URL whose host is an address in the deny list (a name is checked each time it
    /// is resolved; a literal address never is).
    pub fn check_literal(&self, url: &reqwest::Url) -> Result<(), String> {
        let literal = url
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<std::net::IpAddr>().ok());
        match literal.and_then(|ip| drover_proto::denied(ip, &self.deny)) {
            Some((ip, net)) => Err(format!("{ip} is in the deny list ({net})")),
            None => Ok(()),
        }
    }

    /// Posts one event, signed.
    async fn send(&self, hook: &Webhook, event: &str, delivery: &str, body: &[u8]) -> Sent {
        let secret = self
            .sealer
            .open(&secret_context(&hook.id), &hook.sealed_secret)
            .map_err(|e| (0, format!("the webhook's secret: {e}")))?;
        let url = reqwest::Url::parse(&hook.url).map_err(|e| (0, format!("url: {e}")))?;
        // A literal address is never resolved, so the resolver's check does not see it.
        self.check_literal(&url).map_err(|e| (0, e))?;
        let timestamp = now_ms() / 1000;
        let res = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Drover-Event", event)
            .header("Drover-Delivery", delivery)
            .header("Drover-Timestamp", timestamp.to_string())
            .header("Drover-Signature", signature(&secret, timestamp, body))
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| (0, chain(&e)))?;
        let status = res.status();
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err((status.as_u16(), format!("the receiver answered {status}")))
        }
    }

    /// Sends a `webhook.test` event now, outside the webhook's queue, and logs it.
    pub async fn test(&self, hook: &Webhook, actor: &str) -> Result<Delivery, StoreError> {
        let entry = AuditEntry {
            seq: 0,
            event: drover_store::audit::AuditEvent {
                at_ms: now_ms(),
                actor: actor.to_string(),
                actor_kind: "user".into(),
                action: "webhook.test".into(),
                resource: format!("webhook/{}", hook.id),
                outcome: "success".into(),
                reason: "a test event, sent on request".into(),
                ..Default::default()
            },
            prev_hash: String::new(),
            hash: String::new(),
        };
        let started = now_ms();
        let delivery = delivery_id(&hook.id, 0);
        let body = payload(&hook.id, &delivery, &entry);
        let sent = self.send(hook, "webhook.test", &delivery, &body).await;
        let (status, outcome, error) = match sent {
            Ok(s) => (s, "delivered", String::new()),
            Err((s, e)) => (s, "failed", e),
        };
        let d = Delivery {
            hook_id: hook.id.clone(),
            seq: 0,
            event: "webhook.test".into(),
            attempt: 1,
            at_ms: started,
            status: i64::from(status),
            outcome: outcome.into(),
            error,
            duration_ms: now_ms() - started,
        };
        self.store.log_delivery(&d).await?;
        Ok(d)
    }
}

#[cfg(test)]
mod tests;
