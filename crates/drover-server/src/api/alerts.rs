//! `/api/v1/webhooks` and `/api/v1/change-windows`: where the audit log's events are posted,
//! and when sessions on tagged nodes are expected (`webhooks.rs`, `windows.rs`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use drover_api::{
    ChangeWindowView, CreateChangeWindow, CreateWebhook, DeliveryView, WebhookCreated,
    WebhookDetail, WebhookView,
};
use drover_store::alerts::{ChangeWindow, Delivery, HookState, Webhook};

use super::audited::{note, AuditNote};
use super::{rfc3339, validate, ApiError, Body, Query};
use crate::authz::{Action, Principal};
use crate::windows::Schedule;
use crate::{secrets, AppState};

/// Webhooks on one server: each is a task and an HTTP client's connections.
const MAX_WEBHOOKS: usize = 50;
const MAX_PATTERNS: usize = 32;
/// An event pattern: an action name's characters, and `*`.
pub const EVENT_PATTERN: &str = r"^[A-Za-z0-9_.*-]{1,128}$";
pub const WEBHOOK_ID: &str = r"^wh-[0-9a-f]{16}$";
pub const WINDOW_ID: &str = r"^cw-[0-9a-f]{16}$";
const MAX_URL: usize = 2048;
const MAX_WINDOWS: usize = 500;

fn millis(ms: i64) -> String {
    rfc3339(ms / 1000)
}

fn view(h: &Webhook) -> WebhookView {
    WebhookView {
        id: h.id.clone(),
        url: h.url.clone(),
        events: h.events.clone(),
        description: h.description.clone(),
        created_by: h.created_by.clone(),
        created_at: rfc3339(h.created_at),
        cursor: h.state.cursor,
        attempts: h.state.attempts,
        next_attempt_at: (h.state.attempts > 0).then(|| millis(h.state.next_at_ms)),
        last_error: h.state.last_error.clone(),
    }
}

fn delivery_view(d: Delivery) -> DeliveryView {
    DeliveryView {
        seq: d.seq,
        event: d.event,
        attempt: d.attempt,
        at: millis(d.at_ms),
        status: d.status,
        outcome: d.outcome,
        error: d.error,
        duration_ms: d.duration_ms,
    }
}

/// A receiver's URL: http or https, a host, no credentials (they would show in listings; the
/// signature is the receiver's proof of origin).
fn check_url(text: &str) -> Result<(), ApiError> {
    let bad = |why: &str| ApiError::BadRequest(format!("url: {why}"));
    validate::text("url", text, MAX_URL)?;
    let url = reqwest::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(bad("only https:// and http:// receivers are supported"));
    }
    if url.host_str().unwrap_or_default().is_empty() {
        return Err(bad("it names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "credentials in the URL would show in listings; the receiver checks the signature",
        ));
    }
    Ok(())
}

async fn hook(state: &AppState, id: &str) -> Result<Webhook, ApiError> {
    validate::pattern("id", WEBHOOK_ID, id, "a webhook ID (wh-...)")?;
    state
        .store
        .get_webhook(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("webhook {id} not found")))
}

/// Creates a webhook; its secret is in the answer, and nowhere else ever after.
#[utoipa::path(post, operation_id = "create_webhook", path = "/api/v1/webhooks", request_body = CreateWebhook,
    responses((status = 201, body = WebhookCreated), (status = 400, body = drover_api::ErrorBody), (status = 409, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_webhook(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Body(req): Body<CreateWebhook>,
) -> Result<(StatusCode, axum::Extension<AuditNote>, Json<WebhookCreated>), ApiError> {
    state
        .authz
        .check_server(&who, Action::ManageWebhooks)
        .await?;
    // A webhook streams the audit log's entries out: making one takes reading them too.
    state.authz.check_server(&who, Action::ReadAudit).await?;
    check_url(&req.url)?;
    if let Ok(url) = reqwest::Url::parse(&req.url) {
        state
            .webhooks
            .check_literal(&url)
            .map_err(|e| ApiError::BadRequest(format!("url: {e}")))?;
    }
    if req.events.is_empty() || req.events.len() > MAX_PATTERNS {
        return Err(ApiError::BadRequest(format!(
            "events: 1 to {MAX_PATTERNS} patterns (audit actions; * matches any run of characters)"
        )));
    }
    for p in &req.events {
        validate::pattern(
            "events",
            EVENT_PATTERN,
            p,
            "an action name, with * as a wildcard",
        )?;
    }
    validate::text("description", &req.description, 256)?;
    if state.store.list_webhooks().await?.len() >= MAX_WEBHOOKS {
        return Err(ApiError::Conflict(format!(
            "this server has {MAX_WEBHOOKS} webhooks already; delete one first"
        )));
    }
    let id = format!("wh-{}", secrets::random_hex(8));
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            crate::sealing::Sealer::generate_key()
                .map_err(|e| ApiError::Internal(e.to_string()))?
        )
    );
    let sealed = state
        .sealer
        .seal(&crate::webhooks::secret_context(&id), secret.as_bytes())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let created = state
        .store
        .create_webhook(&Webhook {
            id: id.clone(),
            url: req.url,
            events: req.events,
            description: req.description,
            sealed_secret: sealed,
            created_by: who.user.name.clone(),
            created_at: secrets::now(),
            state: HookState::default(),
        })
        .await?;
    state.webhooks.changed();
    // The URL is not logged (its query may carry a receiver's token); the audit entry names
    // where events go, and it outlives the webhook.
    tracing::info!(webhook = %id, by = %who.user.name, "created a webhook");
    let host = reqwest::Url::parse(&created.url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    Ok((
        StatusCode::CREATED,
        note(format!(
            "webhook/{id} to {host}, events {}",
            created.events.join(",")
        )),
        Json(WebhookCreated {
            webhook: view(&created),
            secret,
        }),
    ))
}

#[utoipa::path(get, operation_id = "list_webhooks", path = "/api/v1/webhooks",
    responses((status = 200, body = Vec<WebhookView>)), security(("bearer" = [])))]
pub async fn list_webhooks(
    State(state): State<Arc<AppState>>,
    who: Principal,
) -> Result<Json<Vec<WebhookView>>, ApiError> {
    state
        .authz
        .check_server(&who, Action::ManageWebhooks)
        .await?;
    let hooks = state.store.list_webhooks().await?;
    Ok(Json(hooks.iter().map(view).collect()))
}

#[derive(Debug, serde::Deserialize)]
pub struct DeliveriesQuery {
    limit: Option<usize>,
}

/// A webhook and its delivery log, newest attempt first.
#[utoipa::path(get, operation_id = "show_webhook", path = "/api/v1/webhooks/{id}",
    params(("id" = String, Path), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = WebhookDetail), (status = 404, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn show_webhook(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Json<WebhookDetail>, ApiError> {
    state
        .authz
        .check_server(&who, Action::ManageWebhooks)
        .await?;
    let h = hook(&state, &id).await?;
    let limit = validate::range("limit", q.limit.unwrap_or(50), 1..=1000)?;
    let deliveries = state.store.list_deliveries(&id, limit).await?;
    Ok(Json(WebhookDetail {
        webhook: view(&h),
        deliveries: deliveries.into_iter().map(delivery_view).collect(),
    }))
}

/// Sends a `webhook.test` event now and answers how the receiver took it.
#[utoipa::path(post, operation_id = "test_webhook", path = "/api/v1/webhooks/{id}/test", params(("id" = String, Path)),
    responses((status = 200, body = DeliveryView), (status = 404, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn test_webhook(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Json<DeliveryView>, ApiError> {
    state
        .authz
        .check_server(&who, Action::ManageWebhooks)
        .await?;
    let h = hook(&state, &id).await?;
    let d = state.webhooks.test(&h, &who.user.name).await?;
    Ok(Json(delivery_view(d)))
}

#[utoipa::path(delete, operation_id = "delete_webhook", path = "/api/v1/webhooks/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn delete_webhook(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .authz
        .check_server(&who, Action::ManageWebhooks)
        .await?;
    validate::pattern("id", WEBHOOK_ID, &id, "a webhook ID (wh-...)")?;
    state.store.delete_webhook(&id).await?;
    state.webhooks.changed();
    tracing::info!(webhook = %id, by = %who.user.name, "deleted a webhook");
    Ok(StatusCode::NO_CONTENT)
}

fn window_view(w: ChangeWindow) -> ChangeWindowView {
    ChangeWindowView {
        id: w.id,
        tag: format!("{}={}", w.tag_key, w.tag_value),
        days: w.days,
        start: w.start,
        end: w.end,
        timezone: w.timezone,
        description: w.description,
        created_by: w.created_by,
        created_at: rfc3339(w.created_at),
    }
}

/// Creates a change window for the nodes with a tag.
#[utoipa::path(post, operation_id = "create_change_window", path = "/api/v1/change-windows", request_body = CreateChangeWindow,
    responses((status = 201, body = ChangeWindowView), (status = 400, body = drover_api::ErrorBody), (status = 409, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_window(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Body(req): Body<CreateChangeWindow>,
) -> Result<
    (
        StatusCode,
        axum::Extension<AuditNote>,
        Json<ChangeWindowView>,
    ),
    ApiError,
> {
    state
        .authz
        .check_server(&who, Action::ManageChangeWindows)
        .await?;
    let (key, value) = req.tag.split_once('=').ok_or_else(|| {
        ApiError::BadRequest("tag: KEY=VALUE, as in Environment=Production".into())
    })?;
    super::validate_tag(key, value)?;
    Schedule::parse(&req.days, &req.start, &req.end, &req.timezone)
        .map_err(ApiError::BadRequest)?;
    validate::text("description", &req.description, 256)?;
    if state.store.list_change_windows().await?.len() >= MAX_WINDOWS {
        return Err(ApiError::Conflict(format!(
            "this server has {MAX_WINDOWS} change windows already; delete one first"
        )));
    }
    let w = ChangeWindow {
        id: format!("cw-{}", secrets::random_hex(8)),
        tag_key: key.to_string(),
        tag_value: value.to_string(),
        days: req.days.trim().to_ascii_lowercase(),
        start: req.start,
        end: req.end,
        timezone: req.timezone,
        description: req.description,
        created_by: who.user.name.clone(),
        created_at: secrets::now(),
    };
    state.store.create_change_window(&w).await?;
    tracing::info!(window = %w.id, by = %who.user.name, "created a change window");
    Ok((
        StatusCode::CREATED,
        note(format!("change-window/{}", w.id)),
        Json(window_view(w)),
    ))
}

#[utoipa::path(get, operation_id = "list_change_windows", path = "/api/v1/change-windows",
    responses((status = 200, body = Vec<ChangeWindowView>)), security(("bearer" = [])))]
pub async fn list_windows(
    State(state): State<Arc<AppState>>,
    who: Principal,
) -> Result<Json<Vec<ChangeWindowView>>, ApiError> {
    state
        .authz
        .check_server(&who, Action::ManageChangeWindows)
        .await?;
    let windows = state.store.list_change_windows().await?;
    Ok(Json(windows.into_iter().map(window_view).collect()))
}

#[utoipa::path(delete, operation_id = "delete_change_window", path = "/api/v1/change-windows/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn delete_window(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .authz
        .check_server(&who, Action::ManageChangeWindows)
        .await?;
    validate::pattern("id", WINDOW_ID, &id, "a change window ID (cw-...)")?;
    state.store.delete_change_window(&id).await?;
    tracing::info!(window = %id, by = %who.user.name, "deleted a change window");
    Ok(StatusCode::NO_CONTENT)
}
