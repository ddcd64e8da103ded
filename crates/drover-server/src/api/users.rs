//! Managing users, groups and API tokens.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use drover_api::{
    CreateGroupRequest, CreateTokenRequest, CreateUserRequest, CreatedToken, GroupView, TokenView,
    UpdateUserRequest, UserView,
};
use drover_policy::Resource;
use drover_store::{Group, User};

use super::identity::{find_user, token_view, user_view};
use super::rules::{GROUP_NAME, TOKEN_NAME, USER_NAME};
use super::{rfc3339, validate, Body, Path};
use crate::accounts;
use crate::authz::{Action, Principal};
use crate::{secrets, AppState};

/// The longest a token may last (ten years); a token may also never expire.
pub const MAX_TOKEN_LIFETIME: u64 = 10 * 365 * 86400;

fn new_password(p: &str) -> Result<(), super::ApiError> {
    let (min, max) = super::rules::PASSWORD;
    validate::pattern(
        "password",
        &super::rules::text(min, max),
        p,
        &format!("{min} to {max} characters, no control characters"),
    )
    .map_err(|_| {
        super::ApiError::BadRequest(format!(
            "invalid password: {min} to {max} characters, no control characters"
        ))
    })
}

fn group_view(g: Group) -> GroupView {
    GroupView {
        created_at: rfc3339(g.created_at),
        name: g.name,
        description: g.description,
        members: g.members,
    }
}

fn attributes(set: &BTreeMap<String, String>) -> Result<(), super::ApiError> {
    validate::tags(set)
        .map_err(|e| super::ApiError::BadRequest(e.to_string().replace("tag", "attribute")))
}

#[utoipa::path(get, path = "/api/v1/users",
    responses((status = 200, body = [UserView])), security(("bearer" = [])))]
pub async fn list_users(
    State(state): State<Arc<AppState>>,
    who: Principal,
) -> Result<Json<Vec<UserView>>, super::ApiError> {
    state.authz.check_server(&who, Action::ReadUsers).await?;
    let users = state.store.list_users().await?;
    Ok(Json(users.into_iter().map(user_view).collect()))
}

#[utoipa::path(get, path = "/api/v1/users/{name}", params(("name" = String, Path, description = "User name")),
    responses((status = 200, body = UserView), (status = 404, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn show_user(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(name): Path<String>,
) -> Result<Json<UserView>, super::ApiError> {
    if name != who.user.name {
        state.authz.check_server(&who, Action::ReadUsers).await?;
    }
    Ok(Json(user_view(find_user(&state, &name).await?)))
}

/// Only an administrator makes, changes or removes an administrator, or grants the group:
/// whoever else may manage users (a help desk) cannot make themselves one.
fn guard_admins(who: &Principal, touches_admins: bool) -> Result<(), super::ApiError> {
    if touches_admins && !who.user.groups.iter().any(|g| g == ADMINS) {
        return Err(super::ApiError::Forbidden(format!(
            "only a member of {ADMINS} may grant {ADMINS} or change its members"
        )));
    }
    Ok(())
}

const ADMINS: &str = "admins";

#[utoipa::path(post, path = "/api/v1/users", request_body = CreateUserRequest,
    responses((status = 201, body = UserView), (status = 409, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn create_user(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Body(req): Body<CreateUserRequest>,
) -> Result<(StatusCode, Json<UserView>), super::ApiError> {
    state.authz.check_server(&who, Action::ManageUsers).await?;
    guard_admins(&who, req.groups.iter().any(|g| g == ADMINS))?;
    validate::pattern(
        "name",
        USER_NAME,
        &req.name,
        "1 to 128 letters, digits and . _ @ + - (starting with a letter or digit)",
    )?;
    attributes(&req.attributes)?;
    for g in &req.groups {
        validate::pattern("group", GROUP_NAME, g, "a group name")?;
    }
    let password_hash = match &req.password {
        Some(p) => {
            new_password(p)?;
            Some(accounts::hash_password(p)?)
        }
        None => None,
    };
    let user = User {
        name: req.name.clone(),
        source: "local".into(),
        password_hash,
        attributes: req.attributes,
        groups: req.groups,
        disabled: false,
        failed_logins: 0,
        locked_until: 0,
        created_at: secrets::now(),
        subject: String::new(),
    };
    state.store.create_user(&user).await?;
    tracing::info!(user = %user.name, by = %who.user.name, "created a user");
    Ok((
        StatusCode::CREATED,
        Json(user_view(find_user(&state, &req.name).await?)),
    ))
}

#[utoipa::path(patch, path = "/api/v1/users/{name}", params(("name" = String, Path, description = "User name")),
    request_body = UpdateUserRequest,
    responses((status = 200, body = UserView), (status = 404, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn update_user(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(name): Path<String>,
    Body(req): Body<UpdateUserRequest>,
) -> Result<Json<UserView>, super::ApiError> {
    state.authz.check_server(&who, Action::ManageUsers).await?;
    validate::pattern("user", USER_NAME, &name, "a user name")?;
    attributes(&req.set_attributes)?;
    for k in &req.unset_attributes {
        validate::tag_key(k)?;
    }
    for g in req.add_groups.iter().chain(&req.remove_groups) {
        validate::pattern("group", GROUP_NAME, g, "a group name")?;
    }
    let password_hash = match &req.password {
        Some(p) => {
            new_password(p)?;
            Some(accounts::hash_password(p)?)
        }
        None => None,
    };
    let current = find_user(&state, &name).await?;
    let is_admin = |groups: &[String]| groups.iter().any(|g| g == ADMINS);
    guard_admins(&who, is_admin(&current.groups) || is_admin(&req.add_groups))?;
    let mut after = current.attributes.clone();
    after.extend(req.set_attributes.clone());
    if after.len() > validate::MAX_TAGS {
        return Err(super::ApiError::BadRequest(format!(
            "too many attributes (at most {})",
            validate::MAX_TAGS
        )));
    }
    let disabling = req.disabled == Some(true);
    let change = req.clone();
    let user = state
        .store
        .update_user(
            &name,
            None,
            Box::new(move |u| {
                u.attributes.extend(change.set_attributes);
                for k in &change.unset_attributes {
                    u.attributes.remove(k);
                }
                u.groups.extend(change.add_groups);
                u.groups.retain(|g| !change.remove_groups.contains(g));
                if let Some(d) = change.disabled {
                    u.disabled = d;
                }
                if password_hash.is_some() {
                    u.password_hash = password_hash;
                }
                if change.unlock {
                    u.locked_until = 0;
                    u.failed_logins = 0;
                }
            }),
        )
        .await?;
    if disabling {
        let ended = state
            .sessions
            .end_for_user(
                &name,
                &format!("user {name} was disabled by {}", who.user.name),
            )
            .await;
        tracing::info!(user = %name, by = %who.user.name, sessions_ended = ended, "disabled a user");
    }
    Ok(Json(user_view(user)))
}

#[utoipa::path(delete, path = "/api/v1/users/{name}", params(("name" = String, Path, description = "User name")),
    responses((status = 204), (status = 404, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn delete_user(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, super::ApiError> {
    state.authz.check_server(&who, Action::ManageUsers).await?;
    validate::pattern("user", USER_NAME, &name, "a user name")?;
    if name == who.user.name {
        return Err(super::ApiError::Conflict(
            "you cannot delete yourself; ask another administrator".into(),
        ));
    }
    let target = find_user(&state, &name).await?;
    guard_admins(&who, target.groups.iter().any(|g| g == ADMINS))?;
    state.store.delete_user(&name).await?;
    let ended = state
        .sessions
        .end_for_user(
            &name,
            &format!("user {name} was deleted by {}", who.user.name),
        )
        .await;
    // Its requests and grants go with it: a user made later under the same name inherits
    // nothing.
    let requests = state
        .store
        .list_access_requests(None, Some(&name), 1000)
        .await?;
    for r in requests
        .iter()
        .filter(|r| r.status == "Pending" || r.status == "Approved")
    {
        let by = who.user.name.clone();
        let _ = state
            .store
            .update_access_request(
                &r.id,
                Box::new(move |r| {
                    r.status = "Revoked".into();
                    r.ended_by = by;
                    r.ended_reason = "the user was deleted".into();
                    Ok(())
                }),
            )
            .await;
    }
    tracing::info!(user = %name, by = %who.user.name, sessions_ended = ended, "deleted a user");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/groups",
    responses((status = 200, body = [GroupView])), security(("bearer" = [])))]
pub async fn list_groups(
    State(state): State<Arc<AppState>>,
    who: Principal,
) -> Result<Json<Vec<GroupView>>, super::ApiError> {
    state.authz.check_server(&who, Action::ReadUsers).await?;
    Ok(Json(
        state
            .store
            .list_groups()
            .await?
            .into_iter()
            .map(group_view)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/groups", request_body = CreateGroupRequest,
    responses((status = 201, body = GroupView), (status = 409, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn create_group(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Body(req): Body<CreateGroupRequest>,
) -> Result<(StatusCode, Json<GroupView>), super::ApiError> {
    state.authz.check_server(&who, Action::ManageUsers).await?;
    validate::pattern(
        "name",
        GROUP_NAME,
        &req.name,
        "1 to 64 letters, digits and . _ -",
    )?;
    validate::text("description", &req.description, 1024)?;
    let g = Group {
        name: req.name,
        description: req.description,
        members: Vec::new(),
        created_at: secrets::now(),
    };
    state.store.create_group(&g).await?;
    Ok((StatusCode::CREATED, Json(group_view(g))))
}

#[utoipa::path(delete, path = "/api/v1/groups/{name}", params(("name" = String, Path, description = "Group name")),
    responses((status = 204), (status = 404, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn delete_group(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, super::ApiError> {
    state.authz.check_server(&who, Action::ManageUsers).await?;
    validate::pattern("group", GROUP_NAME, &name, "a group name")?;
    if name == ADMINS {
        // The default policy grants everything through it, and the first admin is in it:
        // deleting it would leave nobody able to manage the server.
        return Err(super::ApiError::Conflict(format!(
            "the {ADMINS} group cannot be deleted; remove its members instead"
        )));
    }
    state.store.delete_group(&name).await?;
    tracing::info!(group = %name, by = %who.user.name, "deleted a group");
    Ok(StatusCode::NO_CONTENT)
}

async fn may_manage_tokens(
    state: &AppState,
    who: &Principal,
    owner: &str,
) -> Result<(), super::ApiError> {
    validate::pattern("user", USER_NAME, owner, "a user name")?;
    let ctx = drover_policy::Context::default();
    state
        .authz
        .check(
            who,
            Action::ManageTokens,
            &Resource::User {
                name: owner.to_string(),
            },
            &ctx,
        )
        .await
}

#[utoipa::path(get, path = "/api/v1/users/{name}/tokens", params(("name" = String, Path, description = "User name")),
    responses((status = 200, body = [TokenView])), security(("bearer" = [])))]
pub async fn list_tokens(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(name): Path<String>,
) -> Result<Json<Vec<TokenView>>, super::ApiError> {
    may_manage_tokens(&state, &who, &name).await?;
    Ok(Json(
        state
            .store
            .list_tokens(&name)
            .await?
            .into_iter()
            .map(token_view)
            .collect(),
    ))
}

/// `read` means every read-only action.
fn scope(names: &[String]) -> Result<Vec<String>, super::ApiError> {
    let mut out = Vec::new();
    for n in names {
        if n == "read" {
            out.extend(
                Action::all()
                    .filter(|a| a.is_read_only())
                    .map(|a| a.name().to_string()),
            );
        } else {
            let a: Action = n.parse().map_err(|_| super::ApiError::BadRequest(format!("unknown action {n:?} in scope: an action name (ReadNode, SendCommand, ...) or read")))?;
            out.push(a.name().to_string());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[utoipa::path(post, path = "/api/v1/users/{name}/tokens", params(("name" = String, Path, description = "User name")),
    request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedToken)), security(("bearer" = [])))]
pub async fn create_token(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(name): Path<String>,
    Body(req): Body<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), super::ApiError> {
    may_manage_tokens(&state, &who, &name).await?;
    validate::pattern(
        "name",
        TOKEN_NAME,
        &req.name,
        "1 to 64 letters, digits, spaces and . _ : -",
    )?;
    let mut scope = scope(&req.scope)?;
    // A token made with a scoped token is never wider than the token that made it.
    if !who.scope.is_empty() {
        let mine: Vec<String> = who.scope.iter().map(|a| a.name().to_string()).collect();
        if scope.is_empty() {
            scope = mine;
        } else if let Some(extra) = scope.iter().find(|a| !mine.contains(a)) {
            return Err(super::ApiError::Forbidden(format!(
                "this token may not make a token that may {extra}"
            )));
        }
    }
    let mut lifetime = match req.expires_in_secs {
        Some(s) => Some(validate::range("expires_in_secs", s, 1..=MAX_TOKEN_LIFETIME)? as i64),
        None => None,
    };
    // Nor does it outlive the token that made it (a 12-hour login cannot mint a forever token).
    if let Some(parent_expiry) = who.expires_at {
        let left = (parent_expiry - secrets::now()).max(1);
        lifetime = Some(lifetime.map_or(left, |l| l.min(left)));
    }
    find_user(&state, &name).await?;
    let (secret, token) = accounts::new_token(&name, &req.name, "api", scope, lifetime);
    state.store.create_token(&token).await?;
    tracing::info!(user = %name, token = %token.id, by = %who.user.name, "created an API token");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: secret,
            view: token_view(token),
        }),
    ))
}

#[utoipa::path(post, path = "/api/v1/users/{name}/tokens/{token_id}/revoke",
    params(("name" = String, Path, description = "User name"), ("token_id" = String, Path, description = "Token ID, or name (every live token of that name)")),
    responses((status = 204), (status = 404, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn revoke_token(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path((name, token)): Path<(String, String)>,
) -> Result<StatusCode, super::ApiError> {
    may_manage_tokens(&state, &who, &name).await?;
    validate::text("token", &token, 128)?;
    // By ID or by name (every live token of that name): the sessions they started end too.
    let now = secrets::now();
    let revoked: Vec<String> = state
        .store
        .list_tokens(&name)
        .await?
        .into_iter()
        .filter(|t| (t.id == token || t.name == token) && t.revoked_at == 0)
        .map(|t| t.id)
        .collect();
    state.store.revoke_token(&name, &token, now).await?;
    let mut ended = 0;
    for id in &revoked {
        let why = format!("its token was revoked by {}", who.user.name);
        ended += state.sessions.end_for_token(id, &why).await;
    }
    // The IDs revoked, not the path's text: a secret sent there by mistake stays out of the log.
    tracing::info!(user = %name, tokens = ?revoked, by = %who.user.name, sessions_ended = ended, "revoked an API token");
    Ok(StatusCode::NO_CONTENT)
}
