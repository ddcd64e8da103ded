//! Users, groups, API tokens and policies: who may act, and the policies that decide what.

use std::collections::BTreeMap;

/// A user. Local users log in with a password; users from an OpenID provider have none here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// `local` or `oidc`.
    pub source: String,
    /// The argon2id hash (PHC string); never the password.
    pub password_hash: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub groups: Vec<String>,
    pub disabled: bool,
    /// Failed password logins in a row, and until when logins are refused after too many.
    pub failed_logins: i64,
    pub locked_until: i64,
    pub created_at: i64,
    /// A federated user's identity at its provider (`ISSUER SUB`); empty for local users.
    pub subject: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub description: String,
    pub members: Vec<String>,
    pub created_at: i64,
}

/// An API token, or a login's session. Only the hash of the secret is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub hash: String,
    /// The user it acts for.
    pub user: String,
    /// `api` (made with `tokens create`), `login` (a CLI login) or `console` (a browser's
    /// cookie).
    pub kind: String,
    /// The actions it may take (a subset of its user's); empty for all of them.
    pub scope: Vec<String>,
    pub created_at: i64,
    /// 0: never.
    pub expires_at: i64,
    /// 0: not revoked.
    pub revoked_at: i64,
    pub last_used_at: i64,
    /// Ends this long after its last use (0: no idle limit).
    pub idle_timeout_secs: i64,
    /// For console cookies: the hash of the CSRF token that must come with every change.
    pub csrf_hash: String,
}

impl ApiToken {
    /// Usable at `now`: not revoked, not expired, not idle too long.
    pub fn is_live(&self, now: i64) -> bool {
        self.revoked_at == 0
            && (self.expires_at == 0 || now < self.expires_at)
            && (self.idle_timeout_secs == 0
                || now < self.last_used_at.max(self.created_at) + self.idle_timeout_secs)
    }
}

/// A token with its user, as authentication finds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    pub token: ApiToken,
    pub user: User,
}

/// A stored policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    pub name: String,
    pub text: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What a failed password login did to the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFailure {
    pub failed_logins: i64,
    /// Non-zero when this failure locked the account.
    pub locked_until: i64,
}

/// An edit of a user record, made inside the store's transaction.
pub type UserChange = Box<dyn for<'a> FnOnce(&'a mut User) + Send + 'static>;
