//! Users, groups, API tokens, logins and policies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub name: String,
    /// `local` or `oidc`.
    pub source: String,
    pub attributes: BTreeMap<String, String>,
    pub groups: Vec<String>,
    pub disabled: bool,
    /// Whether a password is set (never the password or its hash).
    pub has_password: bool,
    /// RFC 3339, while failed logins keep it locked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Changes to a user; what is absent stays as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    #[serde(default)]
    pub set_attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub unset_attributes: Vec<String>,
    #[serde(default)]
    pub add_groups: Vec<String>,
    #[serde(default)]
    pub remove_groups: Vec<String>,
    /// Disabling refuses the user's tokens at once and ends its open sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Lifts a lockout after failed logins.
    #[serde(default)]
    pub unlock: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GroupView {
    pub name: String,
    pub description: String,
    pub members: Vec<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub user: String,
    /// `api`, `login` or `console`.
    pub kind: String,
    /// The actions it may take; empty for all of its user's.
    pub scope: Vec<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
    /// Neither revoked nor expired.
    pub live: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub name: String,
    /// Action names (`ReadNode`, ...), or `read` for every read-only action; empty for all of
    /// the user's actions.
    #[serde(default)]
    pub scope: Vec<String>,
    /// Lifetime in seconds; absent for a token that never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

/// A new token: the secret is shown this once and never again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub view: TokenView,
}

/// How users may sign in to this server: what a login page offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuthMethods {
    /// Local users' passwords (always offered).
    pub password: bool,
    /// The identity provider, when the server has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcMethod>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OidcMethod {
    /// What to call it on a button: the provider's host name.
    pub name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
    /// For the console: the session is a cookie (HttpOnly, Secure, SameSite=Strict), and the
    /// body carries the CSRF token that every change must send as `X-CSRF-Token`.
    #[serde(default)]
    pub console: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    pub user: String,
    /// The session's token (absent for a console login, whose token is the cookie).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
    pub expires_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub user: UserView,
    pub token: TokenView,
    /// The actions on the server itself (`ReadAudit`, `ManageUsers`, ...) this token may take
    /// now: what the console offers. The server decides each request again.
    #[serde(default)]
    pub server_actions: Vec<String>,
    /// The actions on documents (`CreateDocument`, ...) this token may take whatever the
    /// document's name: what the console offers before a name is given.
    #[serde(default)]
    pub document_actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PolicyView {
    pub name: String,
    pub text: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyText {
    pub text: String,
}

/// A place in a policy and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyProblem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ValidateResponse {
    pub valid: bool,
    pub problems: Vec<PolicyProblem>,
}

/// A decision to explain: a stored user, an action and its resource.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    pub user: String,
    pub action: String,
    /// For node actions: a node ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The document (of a command or session, or the resource of a document action), or the
    /// parameter of a parameter action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
    /// A session's kind: `shell`, `command`, `port` or `ssh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// For command and session actions: the command or session ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// For ManageTokens: whose tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckResponse {
    /// `allow` or `deny`.
    pub decision: String,
    /// The policies that decided it; empty when none applied (denied by default).
    pub reasons: Vec<String>,
    /// Policies that failed to evaluate for this request (counted as not applying).
    pub errors: Vec<String>,
}

/// Begins a federated login: the CLI made the state, nonce and PKCE verifier and keeps them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcStartRequest {
    /// Where the identity provider sends the browser back: the CLI's loopback listener.
    pub redirect_uri: String,
    pub state: String,
    pub nonce: String,
    /// BASE64URL(SHA-256(verifier)).
    pub code_challenge: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OidcStartResponse {
    /// Open this in a browser.
    pub authorization_url: String,
}

/// Ends a federated login with what the identity provider sent back.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcFinishRequest {
    pub code: String,
    pub code_verifier: String,
    pub nonce: String,
    pub redirect_uri: String,
}

/// A device login (RFC 8628) the identity provider began: show the user the URL and the code;
/// hand the whole of it back to `/api/v1/auth/oidc/device/finish`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcDeviceLogin {
    pub verification_uri: String,
    /// The URL with the code in it, when the provider offers one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_uri_complete: Option<String>,
    pub user_code: String,
    /// The provider's code for this login: only the server can redeem it (with its client
    /// secret).
    pub device_code: String,
    pub expires_in_secs: u64,
    pub interval_secs: u64,
}
