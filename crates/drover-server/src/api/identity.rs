//! Authentication: API tokens, console cookies (with CSRF tokens), password logins.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use drover_api::{
    AuthMethods, LoginRequest, LoginResponse, OidcFinishRequest, OidcMethod, OidcStartRequest,
    OidcStartResponse, TokenView, UserView, WhoAmI,
};
use drover_policy::UserFacts;
use drover_store::{ApiToken, User};

use super::{rfc3339, validate, Body};
use crate::accounts;
use crate::authz::{Action, Principal};
use crate::{secrets, AppState};

/// The console's session cookie. `__Host-`: the browser keeps it only when Secure, set by
/// this host, for path /.
pub const COOKIE: &str = "__Host-drover_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

use super::rules::USER_NAME;

pub fn user_facts(u: &User) -> UserFacts {
    UserFacts {
        name: u.name.clone(),
        source: u.source.clone(),
        attributes: u.attributes.clone(),
        groups: u.groups.clone(),
    }
}

/// The console cookie's token, if the request has one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// The principal behind a token: refused when unknown, revoked, expired, idle too long, or
/// its user disabled.
pub async fn principal(
    state: &AppState,
    token: &str,
    cookie: bool,
) -> Result<Principal, super::ApiError> {
    let found = state
        .store
        .find_token(&secrets::hash(token))
        .await?
        .ok_or(super::ApiError::Unauthorized)?;
    let now = secrets::now();
    // A console cookie is only a console cookie, and an API token never rides in a cookie.
    if !found.token.is_live(now) || found.user.disabled || cookie != (found.token.kind == "console")
    {
        return Err(super::ApiError::Unauthorized);
    }
    // The idle limit needs the last use; written at most once a minute per token.
    if found.token.idle_timeout_secs > 0 && now - found.token.last_used_at >= 60 {
        state.store.touch_token(&found.token.id, now).await?;
    }
    Ok(Principal {
        token_id: found.token.id.clone(),
        token_name: found.token.name.clone(),
        scope: found
            .token
            .scope
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect(),
        user: user_facts(&found.user),
        cookie,
        expires_at: (found.token.expires_at > 0).then_some(found.token.expires_at),
        token_kind: found.token.kind.clone(),
        source: String::new(),
    })
}

/// A change made with a console cookie carries the CSRF token issued with it.
pub async fn check_csrf(
    state: &AppState,
    who: &Principal,
    headers: &HeaderMap,
) -> Result<(), super::ApiError> {
    let refused = || {
        super::ApiError::Forbidden(
            "missing or wrong CSRF token: send the one the console login returned as X-CSRF-Token (on a WebSocket, as the subprotocol drover.csrf.TOKEN)"
                .into(),
        )
    };
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .or_else(|| super::offered_subprotocol(headers, super::SUBPROTOCOL_CSRF))
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .ok_or_else(refused)?;
    let tokens = state.store.list_tokens(&who.user.name).await?;
    let expected = tokens
        .iter()
        .find(|t| t.id == who.token_id)
        .map(|t| t.csrf_hash.clone())
        .unwrap_or_default();
    // Hashes of 256-bit secrets: comparing them leaks nothing about the secret.
    if expected.is_empty() || secrets::hash(sent) != expected {
        return Err(refused());
    }
    Ok(())
}

pub fn user_view(u: User) -> UserView {
    UserView {
        has_password: u.password_hash.is_some(),
        locked_until: (u.locked_until > secrets::now()).then(|| rfc3339(u.locked_until)),
        created_at: rfc3339(u.created_at),
        name: u.name,
        source: u.source,
        attributes: u.attributes,
        groups: u.groups,
        disabled: u.disabled,
    }
}

pub fn token_view(t: ApiToken) -> TokenView {
    let live = t.is_live(secrets::now());
    let when = |ts: i64| (ts > 0).then(|| rfc3339(ts));
    TokenView {
        live,
        created_at: rfc3339(t.created_at),
        expires_at: when(t.expires_at),
        revoked_at: when(t.revoked_at),
        last_used_at: when(t.last_used_at),
        id: t.id,
        name: t.name,
        user: t.user,
        kind: t.kind,
        scope: t.scope,
    }
}

#[utoipa::path(post, path = "/api/v1/auth/login", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = drover_api::ErrorBody)))]
pub async fn login(
    State(state): State<Arc<AppState>>,
    from: super::audited::Source,
    Body(req): Body<LoginRequest>,
) -> Result<Response, super::ApiError> {
    validate::pattern("user", USER_NAME, &req.user, "a user name")?;
    validate::text("password", &req.password, 1024)?;
    let how = if req.console { "console" } else { "password" };
    let checked = accounts::login(&state.store, &req.user, &req.password).await;
    super::audited::login(
        &state,
        &from,
        "login",
        &req.user,
        how,
        checked.as_ref().map(|_| ()),
    )
    .await;
    let user = checked?;
    if req.console {
        let (cookies, csrf, expires_at) = console_session(&state, &user.name, "console").await?;
        tracing::info!(user = %user.name, kind = "console", "logged in");
        let mut resp = Json(LoginResponse {
            user: user.name,
            token: None,
            csrf_token: Some(csrf),
            expires_at: rfc3339(expires_at),
        })
        .into_response();
        for c in cookies {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
        return Ok(resp);
    }
    let (secret, token) = accounts::new_token(
        &user.name,
        &format!("login {}", rfc3339(secrets::now())),
        "login",
        Vec::new(),
        Some(accounts::LOGIN_LIFETIME_SECS),
    );
    state.store.create_token(&token).await?;
    tracing::info!(user = %user.name, kind = "login", "logged in");
    Ok(Json(LoginResponse {
        user: user.name,
        token: Some(secret),
        csrf_token: None,
        expires_at: rfc3339(token.expires_at),
    })
    .into_response())
}

/// The console's CSRF token, in a cookie the console's own script can read (and a page of
/// another site cannot) to send back as `X-CSRF-Token`.
pub const CSRF_COOKIE: &str = "__Host-drover_csrf";

/// A console session for `user` (`how` names it in token listings): its token stored, and
/// the cookies that carry it: the session (HttpOnly) and its CSRF token. Returns them, the
/// CSRF token and when the session ends.
pub async fn console_session(
    state: &AppState,
    user: &str,
    how: &str,
) -> Result<(Vec<HeaderValue>, String, i64), super::ApiError> {
    let lifetime = accounts::CONSOLE_LIFETIME_SECS;
    let (secret, mut token) = accounts::new_token(
        user,
        &format!("{how} {}", rfc3339(secrets::now())),
        "console",
        Vec::new(),
        Some(lifetime),
    );
    let csrf = secrets::new_token();
    token.idle_timeout_secs = accounts::CONSOLE_IDLE_SECS;
    token.csrf_hash = secrets::hash(&csrf);
    state.store.create_token(&token).await?;
    let cookies = [
        format!("{COOKIE}={secret}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={lifetime}"),
        format!("{CSRF_COOKIE}={csrf}; Path=/; Secure; SameSite=Strict; Max-Age={lifetime}"),
    ]
    .iter()
    .map(|c| HeaderValue::from_str(c).map_err(|e| super::ApiError::Internal(e.to_string())))
    .collect::<Result<_, _>>()?;
    Ok((cookies, csrf, token.expires_at))
}

#[utoipa::path(post, path = "/api/v1/auth/logout",
    responses((status = 204)), security(("bearer" = [])))]
pub async fn logout(
    State(state): State<Arc<AppState>>,
    from: super::audited::Source,
    who: Principal,
) -> Result<Response, super::ApiError> {
    super::audited::login(
        &state,
        &from,
        "logout",
        &who.user.name,
        &who.token_kind,
        Ok(()),
    )
    .await;
    // A logout ends a login (a CLI login, a console session). An API token is revoked with
    // `tokens revoke`, on purpose: logging out of the admin token of `drover up` must not
    // lock its operator out.
    if who.token_kind != "api" {
        state
            .store
            .revoke_token(&who.user.name, &who.token_id, secrets::now())
            .await?;
        state
            .sessions
            .end_for_token(&who.token_id, &format!("{} logged out", who.user.name))
            .await;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    for clear in [
        format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"),
        format!("{CSRF_COOKIE}=; Path=/; Secure; SameSite=Strict; Max-Age=0"),
    ] {
        if let Ok(v) = HeaderValue::from_str(&clear) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(resp)
}

/// How users may sign in, for the console's login page; asks no credentials and says no more
/// than that page would show.
#[utoipa::path(get, path = "/api/v1/auth/methods", responses((status = 200, body = AuthMethods)))]
pub async fn methods(State(state): State<Arc<AppState>>) -> Json<AuthMethods> {
    let oidc = state.oidc.as_ref().map(|o| OidcMethod {
        name: o.issuer_host(),
    });
    Json(AuthMethods {
        password: true,
        oidc,
    })
}

#[utoipa::path(get, path = "/api/v1/auth/whoami",
    responses((status = 200, body = WhoAmI)), security(("bearer" = [])))]
pub async fn whoami(
    State(state): State<Arc<AppState>>,
    who: Principal,
) -> Result<Json<WhoAmI>, super::ApiError> {
    let user = find_user(&state, &who.user.name).await?;
    let token = state
        .store
        .list_tokens(&who.user.name)
        .await?
        .into_iter()
        .find(|t| t.id == who.token_id)
        .ok_or(super::ApiError::Unauthorized)?;
    // Decided without `check`, which logs every refusal: these are questions, not requests.
    // A document action is asked of a document with no name: a policy that allows it only by
    // name prefix does not match, so the console offers it to those allowed it outright.
    let mut server_actions = Vec::new();
    let mut document_actions = Vec::new();
    let no_name = drover_policy::Resource::Document {
        name: String::new(),
    };
    for action in Action::all() {
        let (resource, list) = match action.resource() {
            drover_policy::ResourceKind::Server => {
                (&drover_policy::Resource::Server, &mut server_actions)
            }
            drover_policy::ResourceKind::Document => (&no_name, &mut document_actions),
            _ => continue,
        };
        let allowed = crate::authz::scoped(&who, action).is_ok()
            && state
                .authz
                .explain(&who.user, action, resource, &Default::default())
                .await?
                .allowed;
        if allowed {
            list.push(action.name().to_string());
        }
    }
    Ok(Json(WhoAmI {
        user: user_view(user),
        token: token_view(token),
        server_actions,
        document_actions,
    }))
}

pub async fn find_user(state: &AppState, name: &str) -> Result<User, super::ApiError> {
    validate::pattern("user", USER_NAME, name, "a user name")?;
    state
        .store
        .get_user(name)
        .await?
        .ok_or_else(|| super::ApiError::NotFound(format!("user {name:?} not found")))
}

pub(super) fn oidc(state: &AppState) -> Result<&crate::oidc::Oidc, super::ApiError> {
    state.oidc.as_ref().ok_or_else(|| {
        super::ApiError::NotFound(
            "this server has no identity provider (see drover server --oidc-issuer)".into(),
        )
    })
}

/// Random values the CLI makes: 32 to 128 URL-safe characters (RFC 7636's verifier alphabet).
const OIDC_VALUE: &str = r"^[A-Za-z0-9._~-]{32,128}$";

#[utoipa::path(post, path = "/api/v1/auth/oidc/start", request_body = OidcStartRequest,
    responses((status = 200, body = OidcStartResponse), (status = 404, body = drover_api::ErrorBody)))]
pub async fn oidc_start(
    State(state): State<Arc<AppState>>,
    Body(req): Body<OidcStartRequest>,
) -> Result<Json<OidcStartResponse>, super::ApiError> {
    let redirect = crate::oidc::check_redirect(&req.redirect_uri)?;
    for (field, v) in [
        ("state", &req.state),
        ("nonce", &req.nonce),
        ("code_challenge", &req.code_challenge),
    ] {
        validate::pattern(
            field,
            OIDC_VALUE,
            v,
            "32 to 128 letters, digits and . _ ~ -",
        )?;
    }
    let url = oidc(&state)?
        .authorization_url(redirect, req.state, req.nonce, req.code_challenge)
        .await?;
    Ok(Json(OidcStartResponse {
        authorization_url: url,
    }))
}

#[utoipa::path(post, path = "/api/v1/auth/oidc/finish", request_body = OidcFinishRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = drover_api::ErrorBody)))]
pub async fn oidc_finish(
    State(state): State<Arc<AppState>>,
    from: super::audited::Source,
    Body(req): Body<OidcFinishRequest>,
) -> Result<Json<LoginResponse>, super::ApiError> {
    let redirect = crate::oidc::check_redirect(&req.redirect_uri)?;
    validate::pattern(
        "code",
        &super::rules::text(1, 2048),
        &req.code,
        "the code the identity provider sent",
    )?;
    for (field, v) in [("code_verifier", &req.code_verifier), ("nonce", &req.nonce)] {
        validate::pattern(
            field,
            OIDC_VALUE,
            v,
            "32 to 128 letters, digits and . _ ~ -",
        )?;
    }
    let answer = oidc(&state)?
        .finish(req.code, req.code_verifier, req.nonce, redirect)
        .await;
    let user = super::audited::federated(&state, &from, "oidc", answer).await?;
    let (secret, token) = accounts::new_token(
        &user.name,
        &format!("oidc login {}", rfc3339(secrets::now())),
        "login",
        Vec::new(),
        Some(accounts::LOGIN_LIFETIME_SECS),
    );
    state.store.create_token(&token).await?;
    tracing::info!(user = %user.name, "logged in through the identity provider");
    Ok(Json(LoginResponse {
        user: user.name,
        token: Some(secret),
        csrf_token: None,
        expires_at: rfc3339(token.expires_at),
    }))
}
