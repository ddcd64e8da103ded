//! Federated logins other than the CLI's loopback one: the console's browser redirect, and
//! the device-code login for a machine without a browser. Like the CLI's, they keep nothing
//! on the server between steps, so any server of a cluster can finish what another began:
//! the console's login state rides in a short-lived cookie of its own, a device login's in
//! the CLI's hands.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use drover_api::{LoginResponse, OidcDeviceLogin};
use openidconnect::core::CoreDeviceAuthorizationResponse;
use openidconnect::{PkceCodeChallenge, RedirectUrl};
use serde::Deserialize;

use super::identity::{console_session, oidc};
use super::{rfc3339, validate, ApiError, Body};
use crate::{accounts, secrets, AppState};

/// The console login under way: `STATE.NONCE.VERIFIER`. `SameSite=Lax`, because the provider
/// sends the browser back with a top-level navigation from its own site; ten minutes to sign in.
const FLOW_COOKIE: &str = "__Host-drover_oidc";
const FLOW_SECS: u32 = 600;
pub const CALLBACK: &str = "/api/v1/auth/oidc/callback";

/// Device logins waited on at once: each holds a request open for up to 15 minutes, for a
/// caller who need not be anyone yet.
static DEVICE_WAITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(64);
/// ... and from one address, so that one caller cannot take them all.
const DEVICE_WAITS_PER_ADDRESS: usize = 4;
static WAITING: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, usize>>> =
    std::sync::LazyLock::new(Default::default);

/// One address's share of the device waits, given back when dropped.
struct AddressSlot(String);

impl AddressSlot {
    fn take(address: &str) -> Option<Self> {
        let mut waiting = WAITING.lock().unwrap_or_else(|e| e.into_inner());
        let n = waiting.entry(address.to_string()).or_insert(0);
        if *n >= DEVICE_WAITS_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(Self(address.to_string()))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut waiting = WAITING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = waiting.get_mut(&self.0) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                waiting.remove(&self.0);
            }
        }
    }
}

/// Where the provider sends the console back: the configured address, or the one the browser
/// used (a forged Host only misleads its own sender, and the provider accepts only the
/// callbacks registered with it).
fn console_redirect(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<RedirectUrl, ApiError> {
    let base = match state
        .config
        .oidc
        .as_ref()
        .and_then(|o| o.console_url.clone())
    {
        Some(url) => url,
        None => {
            // HTTP/2 names the host in the request's authority, HTTP/1.1 in `Host`.
            let host = uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
                .unwrap_or_default();
            validate::pattern(
                "Host",
                r"^([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(:[0-9]{1,5})?$",
                host,
                "a host name or address, and a port",
            )?;
            format!("https://{host}")
        }
    };
    RedirectUrl::new(format!("{}{CALLBACK}", base.trim_end_matches('/')))
        .map_err(|e| ApiError::Internal(format!("the console's callback: {e}")))
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))
}

fn redirect(to: &str, cookies: Vec<HeaderValue>) -> Result<Response, ApiError> {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let location =
        HeaderValue::from_str(to).map_err(|e| ApiError::Internal(format!("a redirect: {e}")))?;
    resp.headers_mut().insert(header::LOCATION, location);
    for c in cookies {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(resp)
}

fn flow_cookie(value: &str, max_age: u32) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&format!(
        "{FLOW_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}"
    ))
    .map_err(|e| ApiError::Internal(e.to_string()))
}

/// The console's "sign in with the identity provider": sends the browser to the provider.
#[utoipa::path(get, path = "/api/v1/auth/oidc/console",
    responses((status = 303, description = "To the identity provider"), (status = 404, body = drover_api::ErrorBody)))]
pub async fn console_start(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let provider = oidc(&state)?;
    let callback = console_redirect(&state, &uri, &headers)?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (flow, nonce) = (secrets::new_token(), secrets::new_token());
    let url = provider
        .authorization_url(
            callback,
            flow.clone(),
            nonce.clone(),
            challenge.as_str().to_string(),
        )
        .await?;
    let cookie = flow_cookie(&format!("{flow}.{nonce}.{}", verifier.secret()), FLOW_SECS)?;
    redirect(&url, vec![cookie])
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// Where the provider sends the browser back: checks that the answer is to this browser's
/// login, redeems the code, and starts a console session (cookies), then opens the console.
#[utoipa::path(get, path = "/api/v1/auth/oidc/callback",
    params(("code" = Option<String>, Query), ("state" = Option<String>, Query), ("error" = Option<String>, Query)),
    responses((status = 303, description = "To the console, logged in"), (status = 401, body = drover_api::ErrorBody), (status = 404, body = drover_api::ErrorBody)))]
pub async fn console_callback(
    State(state): State<Arc<AppState>>,
    from: super::audited::Source,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    let provider = oidc(&state)?;
    if let Some(e) = &q.error {
        // Only a well-formed error code is repeated: the query is anyone's to write.
        let code = e
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_')
            .then_some(e.as_str())
            .filter(|e| e.len() <= 64)
            .unwrap_or("an invalid error");
        tracing::info!(error = %code, "the identity provider refused a console login");
        return Err(ApiError::Forbidden(format!(
            "the identity provider refused the login: {code}"
        )));
    }
    let flow = cookie_value(&headers, FLOW_COOKIE).unwrap_or_default();
    let mut parts = flow.splitn(3, '.');
    let (Some(expected), Some(nonce), Some(verifier)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ApiError::Forbidden(
            "no console login is under way in this browser (it expired after 10 minutes, or \
             cookies are blocked): start again"
                .into(),
        ));
    };
    // The state proves the answer is to this browser's login, not one an attacker began and
    // is now feeding to a victim. Hashes of 256-bit values: comparing them leaks nothing.
    let answered = q.state.as_deref().unwrap_or_default();
    if secrets::hash(answered) != secrets::hash(expected) {
        return Err(ApiError::Forbidden(
            "the answer is not to this browser's login; start again".into(),
        ));
    }
    let code = q
        .code
        .filter(|c| !c.is_empty() && c.len() <= 2048)
        .ok_or_else(|| ApiError::BadRequest("the identity provider sent no code".into()))?;
    let callback = console_redirect(&state, &uri, &headers)?;
    let answer = provider
        .finish(code, verifier.to_string(), nonce.to_string(), callback)
        .await;
    let user = super::audited::federated(&state, &from, "oidc console", answer).await?;
    let (mut cookies, _, _) = console_session(&state, &user.name, "console oidc").await?;
    cookies.push(flow_cookie("", 0)?);
    tracing::info!(user = %user.name, kind = "console", "logged in through the identity provider");
    redirect("/", cookies)
}

/// Begins a device login: the provider's code for the user to enter, and where.
#[utoipa::path(post, path = "/api/v1/auth/oidc/device",
    responses((status = 200, body = OidcDeviceLogin), (status = 404, body = drover_api::ErrorBody), (status = 409, body = drover_api::ErrorBody)))]
pub async fn device_start(
    State(state): State<Arc<AppState>>,
) -> Result<Json<OidcDeviceLogin>, ApiError> {
    let d = oidc(&state)?.device_start().await?;
    Ok(Json(OidcDeviceLogin {
        verification_uri: d.verification_uri().to_string(),
        verification_uri_complete: d
            .verification_uri_complete()
            .map(|u| u.secret().to_string()),
        user_code: d.user_code().secret().to_string(),
        device_code: d.device_code().secret().to_string(),
        expires_in_secs: d.expires_in().as_secs(),
        interval_secs: d.interval().as_secs(),
    }))
}

/// Finishes a device login: holds the request until the user has approved it at the
/// provider (a login token), refused it, or it expired (401).
#[utoipa::path(post, path = "/api/v1/auth/oidc/device/finish", request_body = OidcDeviceLogin,
    responses((status = 200, body = LoginResponse), (status = 401, body = drover_api::ErrorBody), (status = 404, body = drover_api::ErrorBody), (status = 409, body = drover_api::ErrorBody), (status = 429, body = drover_api::ErrorBody)))]
pub async fn device_finish(
    State(state): State<Arc<AppState>>,
    from: super::audited::Source,
    conn: Option<axum::Extension<crate::admission::HttpConnection>>,
    Body(req): Body<OidcDeviceLogin>,
) -> Result<Json<LoginResponse>, ApiError> {
    let provider = oidc(&state)?;
    let field = super::rules::text(1, 2048);
    validate::pattern(
        "device_code",
        &field,
        &req.device_code,
        "the provider's code",
    )?;
    validate::pattern("user_code", &field, &req.user_code, "the provider's code")?;
    validate::pattern("verification_uri", &field, &req.verification_uri, "a URL")?;
    // The provider's pace, never faster than RFC 8628's default of 5 s, whatever the request
    // says (it comes back from the client, which could lower it).
    let interval = validate::range("interval_secs", req.interval_secs, 0..=60)?.max(5);
    let expires = validate::range("expires_in_secs", req.expires_in_secs, 1..=3600)?;
    let details: CoreDeviceAuthorizationResponse = serde_json::from_value(serde_json::json!({
        "device_code": req.device_code,
        "user_code": req.user_code,
        "verification_uri": req.verification_uri,
        "expires_in": expires,
        "interval": interval,
    }))
    .map_err(|e| ApiError::BadRequest(format!("invalid device login: {e}")))?;
    let busy =
        || ApiError::TooManyRequests("too many device logins at once; try again later".into());
    let _mine = AddressSlot::take(&from.0).ok_or_else(busy)?;
    let _permit = DEVICE_WAITS.try_acquire().map_err(|_| busy())?;
    // The wait outlasts the time an unauthenticated connection is given; the permits above
    // bound how many such waits there are, so this one may keep its connection.
    if let Some(axum::Extension(conn)) = conn {
        conn.authenticated();
    }
    let answer = provider.device_finish(&details).await;
    let user = super::audited::federated(&state, &from, "oidc device", answer).await?;
    let (secret, token) = accounts::new_token(
        &user.name,
        &format!("oidc device login {}", rfc3339(secrets::now())),
        "login",
        Vec::new(),
        Some(accounts::LOGIN_LIFETIME_SECS),
    );
    state.store.create_token(&token).await?;
    tracing::info!(user = %user.name, "logged in through the identity provider's device login");
    Ok(Json(LoginResponse {
        user: user.name,
        token: Some(secret),
        csrf_token: None,
        expires_at: rfc3339(token.expires_at),
    }))
}
