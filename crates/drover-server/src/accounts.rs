//! Users' credentials: passwords (argon2id), logins with a lockout after repeated failures,
//! and the tokens a user holds. The first start makes the first admin and the default policy.

use std::sync::{Arc, LazyLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use drover_store::{ApiToken, Store, User};

use crate::api::ApiError;
use crate::secrets;

/// Failed logins in a row that lock an account, and for how long.
pub const MAX_FAILED_LOGINS: i64 = 5;
pub const LOCKOUT_SECS: i64 = 15 * 60;
/// A CLI login's token lasts this long.
pub const LOGIN_LIFETIME_SECS: i64 = 12 * 3600;
/// A console session ends after this long, or this long unused.
pub const CONSOLE_LIFETIME_SECS: i64 = 12 * 3600;
pub const CONSOLE_IDLE_SECS: i64 = 30 * 60;

/// Verified against when the user does not exist or has no password, so that the answer takes
/// as long as for a real one and does not tell which names exist.
static DECOY: LazyLock<String> =
    LazyLock::new(|| hash_password("decoy password").unwrap_or_default());

pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("hashing a password: {e}")))
}

/// argon2's comparison is constant-time; it runs on the blocking pool (it takes tens of
/// milliseconds of CPU on purpose).
async fn verify(password: String, hash: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let real = hash.is_some();
        let hash = hash.unwrap_or_else(|| DECOY.clone());
        let ok = PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && real
    })
    .await
    .unwrap_or(false)
}

/// Password checks running at once. Each takes tens of milliseconds of CPU and 19 MiB on
/// purpose; past this many a login is answered 429 at once instead of queueing work that an
/// unauthenticated caller chose.
static CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Checks a password login. Every refusal says the same thing, whatever the reason (no such
/// user, wrong password, disabled, locked), and takes as long, so that it tells an attacker
/// nothing; the log says which.
///
/// The attempt is counted before the password is checked, in one transaction with the lock's
/// check: guesses sent in parallel are counted one by one, and the ones past the limit are
/// refused without being checked.
pub async fn login(store: &Arc<dyn Store>, name: &str, password: &str) -> Result<User, ApiError> {
    let _permit = CHECKS.try_acquire().map_err(|_| {
        ApiError::TooManyRequests("too many logins at once; try again in a moment".into())
    })?;
    let refused = || ApiError::LoginRefused;
    let now = secrets::now();
    let Some(user) = store.get_user(name).await? else {
        verify(password.to_string(), None).await;
        tracing::info!(user = %name, "login refused: no such user");
        return Err(refused());
    };
    let locked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = locked.clone();
    store
        .update_user(
            name,
            None,
            Box::new(move |u| {
                if u.locked_until > now {
                    seen.store(true, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                u.failed_logins += 1;
                if u.failed_logins >= MAX_FAILED_LOGINS {
                    u.locked_until = now + LOCKOUT_SECS;
                    u.failed_logins = 0;
                }
            }),
        )
        .await?;
    let locked = locked.load(std::sync::atomic::Ordering::Relaxed);
    let hash = if locked {
        None
    } else {
        user.password_hash.clone()
    };
    let ok = verify(password.to_string(), hash).await;
    if locked {
        tracing::info!(user = %name, "login refused: locked after failed logins");
        return Err(refused());
    }
    if !ok {
        tracing::info!(user = %name, "login refused: wrong password");
        return Err(refused());
    }
    // The right password: the attempt was no failure, and lifts a lock this burst set.
    store
        .update_user(
            name,
            None,
            Box::new(|u| {
                u.failed_logins = 0;
                u.locked_until = 0;
            }),
        )
        .await?;
    if user.disabled {
        tracing::info!(user = %name, "login refused: disabled");
        return Err(refused());
    }
    Ok(user)
}

/// A new token for `user`: the secret (shown once) and the record (stored hashed).
pub fn new_token(
    user: &str,
    name: &str,
    kind: &str,
    scope: Vec<String>,
    lifetime: Option<i64>,
) -> (String, ApiToken) {
    let secret = secrets::new_token();
    let now = secrets::now();
    let token = ApiToken {
        id: format!("tok-{}", secrets::random_hex(8)),
        name: name.to_string(),
        hash: secrets::hash(&secret),
        user: user.to_string(),
        kind: kind.to_string(),
        scope,
        created_at: now,
        expires_at: lifetime.map_or(0, |l| now + l),
        revoked_at: 0,
        last_used_at: 0,
        idle_timeout_secs: 0,
        csrf_hash: String::new(),
    };
    (secret, token)
}

/// First start: the first admin user (`admin`, in group `admins`) and its token, written to
/// `token_path`; and the default policy, unless policies were ever written.
pub async fn seed(
    store: &Arc<dyn Store>,
    token_path: &std::path::Path,
) -> Result<(), crate::ServerError> {
    if store.policy_version().await? == 0 {
        store
            .write_policy(
                "default",
                Some(drover_policy::DEFAULT_POLICY),
                secrets::now(),
            )
            .await?;
        tracing::info!("stored the default policy");
    }
    if store.count_users().await? == 0 {
        store
            .create_user(&User {
                name: "admin".into(),
                source: "local".into(),
                password_hash: None,
                attributes: Default::default(),
                groups: vec!["admins".into()],
                disabled: false,
                failed_logins: 0,
                locked_until: 0,
                created_at: secrets::now(),
                subject: String::new(),
            })
            .await?;
        let (secret, token) = new_token("admin", "admin", "api", Vec::new(), None);
        crate::datadir::write_private(token_path, format!("{secret}\n").as_bytes())?;
        store.create_token(&token).await?;
        tracing::info!(path = %token_path.display(), "created user admin and wrote its API token");
    }
    Ok(())
}

/// The user an identity provider vouched for: created at its first login, its attributes and
/// (when a groups claim is configured) its groups taken from the ID token at every login. A
/// local user of the same name is never taken over, and a disabled one stays out.
pub async fn federated(
    store: &Arc<dyn Store>,
    who: crate::oidc::Identity,
) -> Result<User, ApiError> {
    use crate::api::rules;
    if !rules::matches(rules::USER_NAME, &who.username) {
        tracing::warn!(user = %who.username, "federated login refused: not a valid Drover user name");
        return Err(ApiError::Unauthorized);
    }
    if let Some(u) = store.get_user(&who.username).await? {
        if u.source != "oidc" {
            tracing::warn!(user = %u.name, "federated login refused: a local user has this name");
            return Err(ApiError::Unauthorized);
        }
        // A name is the provider's to rename; the subject is not. Another person now holding
        // this name at the provider does not get this user.
        if u.subject != who.subject {
            tracing::warn!(user = %u.name, "federated login refused: the name belongs to another subject");
            return Err(ApiError::Unauthorized);
        }
    }
    let attributes: std::collections::BTreeMap<String, String> = who
        .attributes
        .into_iter()
        .filter(|(k, v)| {
            rules::matches(rules::TAG_KEY, k) && rules::matches(&rules::tag_value(), v)
        })
        .collect();
    // Only groups that exist: the provider's groups were mapped by the operator's list.
    let existing: Vec<String> = store
        .list_groups()
        .await?
        .into_iter()
        .map(|g| g.name)
        .collect();
    let groups = who.groups.map(|g| {
        g.into_iter()
            .filter(|g| existing.contains(g))
            .collect::<Vec<_>>()
    });
    let new = User {
        name: who.username.clone(),
        source: "oidc".into(),
        password_hash: None,
        attributes: Default::default(),
        groups: Vec::new(),
        disabled: false,
        failed_logins: 0,
        locked_until: 0,
        created_at: secrets::now(),
        subject: who.subject.clone(),
    };
    let user = store
        .update_user(
            &who.username,
            Some(new),
            Box::new(move |u| {
                u.attributes = attributes;
                if let Some(g) = groups {
                    u.groups = g;
                }
            }),
        )
        .await?;
    if user.disabled {
        tracing::info!(user = %user.name, "federated login refused: disabled");
        return Err(ApiError::Unauthorized);
    }
    Ok(user)
}
