//! Webhooks and change windows over the API.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A webhook to create: where to post, and which events (audit actions; `*` matches any run
/// of characters: `access.*`, `*access_request`, `session.outside_change_window`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// `https://...` or `http://...`.
    pub url: String,
    pub events: Vec<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub created_by: String,
    pub created_at: String,
    /// The last audit entry it has handled.
    pub cursor: i64,
    /// Failed attempts at its next event (0 when all is well).
    pub attempts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    #[serde(default)]
    pub last_error: String,
}

/// A webhook just created: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookCreated {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// The HMAC-SHA256 key of its `Drover-Signature` header.
    pub secret: String,
}

/// One attempt to deliver one event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    /// The audit entry (0 for a test event).
    pub seq: i64,
    pub event: String,
    pub attempt: i64,
    pub at: String,
    /// The receiver's HTTP status, 0 if it answered none.
    pub status: i64,
    /// `delivered`, `failed` (retried later) or `gave_up`.
    pub outcome: String,
    #[serde(default)]
    pub error: String,
    pub duration_ms: i64,
}

/// A webhook with its newest deliveries, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookDetail {
    #[serde(flatten)]
    pub webhook: WebhookView,
    pub deliveries: Vec<DeliveryView>,
}

/// A change window to create: sessions on nodes tagged `tag` are expected on `days` from
/// `start` to `end` in `timezone`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChangeWindow {
    /// `KEY=VALUE`.
    pub tag: String,
    /// `mon-fri`, `mon,wed,fri`, `sat-sun`, `daily`.
    pub days: String,
    /// `HH:MM`, local time.
    pub start: String,
    /// `HH:MM`; at or before the start, the window closes the next day.
    pub end: String,
    /// An IANA time zone (`Europe/Berlin`), or `UTC`.
    pub timezone: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChangeWindowView {
    pub id: String,
    pub tag: String,
    pub days: String,
    pub start: String,
    pub end: String,
    pub timezone: String,
    pub description: String,
    pub created_by: String,
    pub created_at: String,
}
