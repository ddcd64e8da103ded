//! The HTTP API under `/api/v1`, plus `/healthz` and `/metrics`. Errors map to statuses in one
//! place ([`ApiError`]); every handler takes a [`Principal`] and calls `authz::authorize` first.

mod access;
mod alerts;
mod assoc;
pub use access::expire_due;
pub use commands::DEFAULT_OUTPUT_LIMIT;
pub use identity::user_facts;
pub use params::PARAMETER_NAME;
pub use rules::matches as matches_rule;
mod activations;
mod audited;
pub(crate) use audited::view as audit_view;
mod commands;
mod documents;
mod federation;
mod identity;
mod node_table;
mod nodes;
mod openapi;
mod openapi_params;
mod params;
pub(crate) use params::context as parameter_context;
mod policies;
mod register;
pub(crate) mod rules;
mod sessions;
mod ssh;
mod users;
mod validate;

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::{Json, Router};
use drover_api::{ErrorBody, ErrorDetail, Health};

use crate::authz::{Action, Principal};
use crate::AppState;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/nodes", get(nodes::list))
        .route("/api/v1/node-table", get(node_table::table))
        .route("/api/v1/nodes/{id}", get(nodes::show))
        .route("/api/v1/nodes/{id}/tags", patch(nodes::tag))
        .route("/api/v1/nodes/{id}/deregister", post(nodes::deregister))
        .route(
            "/api/v1/activations",
            post(activations::create).get(activations::list),
        )
        .route("/api/v1/register", post(register::register))
        .route(
            "/api/v1/documents",
            post(documents::create).get(documents::list),
        )
        .route(
            "/api/v1/documents/{name}",
            get(documents::get)
                .put(documents::update)
                .delete(documents::delete),
        )
        .route(
            "/api/v1/documents/{name}/versions",
            get(documents::versions),
        )
        .route(
            "/api/v1/documents/{name}/default",
            put(documents::set_default),
        )
        .route("/api/v1/commands", post(commands::send).get(commands::list))
        .route("/api/v1/commands/{id}", get(commands::show))
        .route("/api/v1/commands/{id}/wait", get(commands::wait))
        .route("/api/v1/commands/{id}/cancel", post(commands::cancel))
        .route(
            "/api/v1/commands/{id}/invocations",
            get(commands::invocations),
        )
        .route(
            "/api/v1/commands/{id}/invocations/{node}",
            get(commands::invocation),
        )
        .route(
            "/api/v1/sessions",
            post(sessions::start).get(sessions::list),
        )
        .route("/api/v1/sessions/{id}", get(sessions::show))
        .route("/api/v1/sessions/{id}/terminate", post(sessions::terminate))
        .route("/api/v1/sessions/{id}/stream", get(sessions::stream))
        .route("/api/v1/sessions/{id}/tunnel", get(sessions::tunnel))
        .route("/api/v1/ssh/ca", get(ssh::ca))
        .route("/api/v1/ssh/certificate", post(ssh::certificate))
        .route("/api/v1/sessions/{id}/recording", get(sessions::recording))
        .route("/api/v1/auth/login", post(identity::login))
        .route("/api/v1/auth/logout", post(identity::logout))
        .route("/api/v1/auth/oidc/start", post(identity::oidc_start))
        .route("/api/v1/auth/oidc/finish", post(identity::oidc_finish))
        .route("/api/v1/auth/oidc/console", get(federation::console_start))
        .route(federation::CALLBACK, get(federation::console_callback))
        .route("/api/v1/auth/oidc/device", post(federation::device_start))
        .route(
            "/api/v1/auth/oidc/device/finish",
            post(federation::device_finish),
        )
        .route("/api/v1/auth/whoami", get(identity::whoami))
        .route("/api/v1/auth/methods", get(identity::methods))
        .route(
            "/api/v1/users",
            get(users::list_users).post(users::create_user),
        )
        .route(
            "/api/v1/users/{name}",
            get(users::show_user)
                .patch(users::update_user)
                .delete(users::delete_user),
        )
        .route(
            "/api/v1/users/{name}/tokens",
            get(users::list_tokens).post(users::create_token),
        )
        .route(
            "/api/v1/users/{name}/tokens/{token_id}/revoke",
            post(users::revoke_token),
        )
        .route(
            "/api/v1/groups",
            get(users::list_groups).post(users::create_group),
        )
        .route(
            "/api/v1/groups/{name}",
            axum::routing::delete(users::delete_group),
        )
        .route("/api/v1/policies", get(policies::list))
        .route("/api/v1/policies/validate", post(policies::validate_text))
        .route("/api/v1/policies/check", post(policies::check))
        .route(
            "/api/v1/policies/{name}",
            get(policies::get)
                .put(policies::put)
                .delete(policies::delete_policy),
        )
        .route(
            "/api/v1/access-requests",
            post(access::create).get(access::list),
        )
        .route("/api/v1/access-requests/{id}", get(access::show))
        .route(
            "/api/v1/access-requests/{id}/approve",
            post(access::approve),
        )
        .route("/api/v1/access-requests/{id}/deny", post(access::deny))
        .route("/api/v1/access-requests/{id}/revoke", post(access::revoke))
        .route(
            "/api/v1/webhooks",
            get(alerts::list_webhooks).post(alerts::create_webhook),
        )
        .route(
            "/api/v1/webhooks/{id}",
            get(alerts::show_webhook).delete(alerts::delete_webhook),
        )
        .route("/api/v1/webhooks/{id}/test", post(alerts::test_webhook))
        .route(
            "/api/v1/change-windows",
            get(alerts::list_windows).post(alerts::create_window),
        )
        .route(
            "/api/v1/change-windows/{id}",
            axum::routing::delete(alerts::delete_window),
        )
        .route(
            "/api/v1/parameters",
            get(params::get).post(params::put).delete(params::delete),
        )
        .route("/api/v1/parameters/by-path", get(params::by_path))
        .route("/api/v1/parameters/history", get(params::history))
        .route("/api/v1/parameters/labels", post(params::label))
        .route("/api/v1/associations", get(assoc::list).post(assoc::create))
        .route(
            "/api/v1/associations/{id}",
            get(assoc::show).patch(assoc::update).delete(assoc::delete),
        )
        .route("/api/v1/associations/{id}/run", post(assoc::run_now))
        .route(
            "/api/v1/associations/{id}/executions",
            get(assoc::executions),
        )
        .route("/api/v1/compliance", get(assoc::compliance))
        .route("/api/v1/compliance/summary", get(assoc::summary))
        .route("/api/v1/audit", get(audited::list))
        .route("/api/v1/audit/verify", get(audited::verify))
        .fallback(crate::console::serve)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audited::record,
        ))
        .layer(axum::middleware::map_response(no_store_by_default))
        .with_state(state)
}

/// What the API answers is for the one who asked, now: a browser must not keep it (in its disk
/// cache after sign-out, say). The console's files set their own caching.
async fn no_store_by_default(mut resp: Response) -> Response {
    resp.headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(header::HeaderValue::from_static("no-store"));
    resp
}

/// Every error the API returns, and its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid API token: pass one as 'Authorization: Bearer <token>'")]
    Unauthorized,
    /// A login refused, whatever the reason: the answer tells an attacker nothing.
    #[error("wrong user name or password, or the account is locked or disabled")]
    LoginRefused,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("internal error; the server log has the details")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::Unauthorized | ApiError::LoginRefused => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "internal error serving a request");
        }
        let (status, code) = self.status_and_code();
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: self.to_string(),
            },
        };
        (status, Json(body)).into_response()
    }
}

impl From<drover_store::StoreError> for ApiError {
    fn from(e: drover_store::StoreError) -> Self {
        match e {
            drover_store::StoreError::NotFound(what) => {
                ApiError::NotFound(format!("{what} not found"))
            }
            drover_store::StoreError::Conflict(why) => ApiError::Conflict(why),
            missing @ drover_store::StoreError::Missing(_) => {
                ApiError::BadRequest(missing.to_string())
            }
            other => ApiError::Internal(format!("{:#}", anyhow_like(&other))),
        }
    }
}

/// Renders an error with its whole source chain.
fn anyhow_like(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// A JSON body whose rejection is an [`ApiError`] naming what is wrong with it.
pub struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| {
                let t = t.trim();
                t.eq_ignore_ascii_case("application/json") || t.ends_with("+json")
            });
        if !json {
            return Err(ApiError::BadRequest(
                "expected a JSON body with 'Content-Type: application/json'".into(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        // Every body is a JSON object: serde would also build a struct from an array. Parsed
        // straight into `T`, so a key given twice is refused, not silently overridden.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::BadRequest(
                "the request body must be a JSON object".into(),
            ));
        }
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
    }
}

/// Query parameters whose rejection is an [`ApiError`] (a JSON body naming the parameter).
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// Path parameters whose rejection is an [`ApiError`].
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        // Only a session stream may carry its token in a WebSocket subprotocol.
        let stream = parts.uri.path().ends_with("/stream");
        let mut who = authenticate(state, &parts.headers, stream).await?;
        who.source = audited::source(&parts.extensions);
        // A browser sends its cookie with any request, also one another site makes it send:
        // a change made with the cookie must also carry the CSRF token, which only the
        // console's own page can read (it came in the login's body).
        // A session stream is a GET, but another site's page could open it as a WebSocket
        // with the cookie (same-site pages send SameSite cookies): it must show the token
        // too, as a subprotocol, since a browser's WebSocket cannot carry a header.
        if who.cookie
            && (stream
                || !matches!(
                    parts.method,
                    axum::http::Method::GET | axum::http::Method::HEAD
                ))
        {
            identity::check_csrf(state, &who, &parts.headers).await?;
        }
        mark_authenticated(parts);
        audited::attribute(&parts.extensions, &who);
        Ok(who)
    }
}

/// Frees the connection's unauthenticated slot: it has shown a valid token.
fn mark_authenticated(parts: &Parts) {
    if let Some(conn) = parts.extensions.get::<crate::admission::HttpConnection>() {
        conn.authenticated();
    }
}

/// The prefix of the WebSocket subprotocol that carries a token.
pub const SUBPROTOCOL_BEARER: &str = "drover.bearer.";
/// The prefix of the WebSocket subprotocol that carries the console's CSRF token.
pub const SUBPROTOCOL_CSRF: &str = "drover.csrf.";

/// The value of a WebSocket subprotocol offered with `prefix`.
pub(super) fn offered_subprotocol<'h>(headers: &'h HeaderMap, prefix: &str) -> Option<&'h str> {
    headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').find_map(|p| p.trim().strip_prefix(prefix)))
}

/// Finds the principal behind the request's bearer token (or console cookie).
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    subprotocol_ok: bool,
) -> Result<Principal, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // A browser cannot set headers on a WebSocket; it offers the token as a subprotocol
    // (`drover.bearer.<token>`) beside the real one, as Kubernetes' API server allows.
    let offered = || {
        if !subprotocol_ok {
            return None;
        }
        offered_subprotocol(headers, SUBPROTOCOL_BEARER)
    };
    let (token, cookie) = match bearer.or_else(offered) {
        Some(t) => (Some(t), false),
        None => (identity::session_cookie(headers), true),
    };
    let token = token
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .ok_or(ApiError::Unauthorized)?;
    identity::principal(state, token, cookie).await
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")), security(("bearer" = [])))]
async fn metrics(State(state): State<Arc<AppState>>, parts: Parts) -> Result<Response, ApiError> {
    if !state.config.metrics_public {
        let who = authenticate(&state, &parts.headers, false).await?;
        mark_authenticated(&parts);
        state.authz.check_server(&who, Action::ReadMetrics).await?;
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response())
}

/// Checks a tag filter's key and value (for targets).
pub fn validate_tag(k: &str, v: &str) -> Result<(), ApiError> {
    validate::tag_key(k)?;
    validate::tag_value(k, v)
}

/// Formats Unix seconds as RFC 3339.
pub fn rfc3339(ts: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ts.to_string())
}
