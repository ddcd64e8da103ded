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
/// An event still failing this long after its first failure is given up on.
const GIVE_UP_MS: i64 = 24 * 3_600_000;
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
pub fn payload(hook_id: &str, e: &AuditEntry) -> Vec<u8> {
    let mut v = serde_json::to_value(crate::api::audit_view(e.clone())).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("delivery".into(), delivery_id(hook_id, e.seq).into());
        o.insert("webhook".into(), hook_id.into());
    }
    v.to_string().into_bytes()
}

/// The `Drover-Delivery` of an event: the same on every retry.
fn delivery_id(hook_id: &str, seq: i64) -> String {
    format!("{hook_id}:{seq}")
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
        let http = crate::oidc::outbound_client(SEND_TIMEOUT)?
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
        loop {
            appended.borrow_and_update();
            let step = tokio::select! {
                s = self.step(&id) => s,
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
                _ = appended.changed(), if wake_at.is_none() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn step(&self, id: &str) -> Result<Step, StoreError> {
        let Some(hook) = self.store.get_webhook(id).await? else {
            return Ok(Step::Gone);
        };
        if hook.state.next_at_ms > now_ms() {
            return Ok(Step::RetryAt(hook.state.next_at_ms));
        }
        let entries = self
            .store
            .list_audit(&AuditQuery {
                after: Some(hook.state.cursor),
                limit: PAGE,
                ..AuditQuery::default()
            })
            .await?;
        if entries.is_empty() {
            return Ok(Step::CaughtUp);
        }
        let mut state = hook.state.clone();
        for e in &entries {
            if !wants(&hook.events, &e.event.action) {
                state.cursor = e.seq;
                continue;
            }
            let started = now_ms();
            let sent = self
                .send(&hook, &e.event.action, e.seq, &payload(&hook.id, e))
                .await;
            let now = now_ms();
            let attempt = state.attempts + 1;
            let first_failure = match state.failing_since_ms {
                0 => now,
                t => t,
            };
            let (outcome, status, error) = match &sent {
                Ok(status) => ("delivered", *status, String::new()),
                Err((status, e)) if now - first_failure >= GIVE_UP_MS => {
                    ("gave_up", *status, e.clone())
                }
                Err((status, e)) => ("failed", *status, e.clone()),
            };
            let delivery = Delivery {
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
                    failing_since_ms: first_failure,
                    next_at_ms: now + backoff_ms(attempt),
                    last_error: error,
                }
            } else {
                if outcome == "gave_up" {
                    tracing::warn!(webhook = %hook.id, seq = e.seq, "gave up on a webhook event after a day of retries");
                }
                HookState {
                    cursor: e.seq,
                    ..HookState::default()
                }
            };
            if !self
                .store
                .advance_webhook(&hook.id, &self.owner, &state, Some(&delivery))
                .await?
            {
                return Ok(Step::Gone);
            }
            if failed {
                return Ok(Step::RetryAt(state.next_at_ms));
            }
        }
        if state.cursor != hook.state.cursor
            && !self
                .store
                .advance_webhook(&hook.id, &self.owner, &state, None)
                .await?
        {
            return Ok(Step::Gone);
        }
        Ok(Step::More)
    }

    /// Posts one event, signed.
    async fn send(&self, hook: &Webhook, event: &str, seq: i64, body: &[u8]) -> Sent {
        let secret = self
            .sealer
            .open(&secret_context(&hook.id), &hook.sealed_secret)
            .map_err(|e| (0, format!("the webhook's secret: {e}")))?;
        let url = reqwest::Url::parse(&hook.url).map_err(|e| (0, format!("url: {e}")))?;
        // A literal address is never resolved, so the resolver's check does not see it.
        let literal = url
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<std::net::IpAddr>().ok());
        if let Some((ip, net)) = literal.and_then(|ip| drover_proto::denied(ip, &self.deny)) {
            return Err((0, format!("{ip} is in the deny list ({net})")));
        }
        let timestamp = now_ms() / 1000;
        let res = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Drover-Event", event)
            .header("Drover-Delivery", delivery_id(&hook.id, seq))
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
        let sent = self
            .send(hook, "webhook.test", 0, &payload(&hook.id, &entry))
            .await;
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
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff_ms(1), 1_000);
        assert_eq!(backoff_ms(2), 2_000);
        assert_eq!(backoff_ms(4), 8_000);
        assert_eq!(backoff_ms(20), MAX_BACKOFF_MS);
        assert_eq!(backoff_ms(i64::MAX), MAX_BACKOFF_MS);
        assert_eq!(backoff_ms(0), 1_000);
    }

    #[test]
    fn signatures_cover_the_timestamp_and_the_body() {
        let s = signature(b"k", 100, b"{}");
        assert!(s.starts_with("sha256=") && s.len() == 7 + 64, "{s}");
        assert_ne!(s, signature(b"k", 101, b"{}"));
        assert_ne!(s, signature(b"k", 100, b"{ }"));
        assert_ne!(s, signature(b"j", 100, b"{}"));
        // RFC 4231 test case 2, to pin the construction to plain HMAC-SHA256.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let tag = hmac::sign(&key, b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(tag.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
