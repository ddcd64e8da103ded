//! SQLite for users, groups, API tokens and policies: plain functions on a connection, called
//! by `SqliteStore` on its blocking thread.

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::sqlite_commands::db;
use crate::*;

/// Users, groups, tokens of users, and policies. The admin token of before becomes the token
/// of the first admin user, `admin`, in group `admins` (the default policy gives it all).
pub(crate) const MIGRATION_IDENTITY: &str = r#"
CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    source        TEXT NOT NULL,
    password_hash TEXT,
    attributes    TEXT NOT NULL DEFAULT '{}',
    disabled      INTEGER NOT NULL DEFAULT 0,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until  INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    -- A federated user's identity at its provider: `ISSUER SUB`, never reassigned.
    subject       TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE TABLE user_groups (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL
) STRICT;
CREATE TABLE group_members (
    group_name TEXT NOT NULL REFERENCES user_groups(name) ON DELETE CASCADE,
    user_name  TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    PRIMARY KEY (group_name, user_name)
) STRICT, WITHOUT ROWID;
CREATE INDEX group_members_user ON group_members(user_name);
ALTER TABLE api_tokens ADD COLUMN user_name TEXT NOT NULL DEFAULT 'admin';
ALTER TABLE api_tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'api';
ALTER TABLE api_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT '';
ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_tokens ADD COLUMN revoked_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_tokens ADD COLUMN last_used_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_tokens ADD COLUMN idle_timeout INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_tokens ADD COLUMN csrf_hash TEXT NOT NULL DEFAULT '';
CREATE INDEX api_tokens_user ON api_tokens(user_name);
INSERT INTO users (name, source, created_at)
    SELECT 'admin', 'local', MIN(created_at) FROM api_tokens HAVING COUNT(*) > 0;
INSERT INTO user_groups (name, description, created_at) VALUES
    ('admins', 'may do everything (policy default/admins)', unixepoch()),
    ('viewers', 'see the fleet and change nothing (policy default/viewers)', unixepoch());
INSERT INTO group_members (group_name, user_name) SELECT 'admins', name FROM users;
CREATE TABLE policies (
    name       TEXT PRIMARY KEY,
    text       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
-- Bumped by every policy change, so a server notices another's change with one small read.
-- 0: never written, and the server seeds the default policy.
CREATE TABLE policy_version (n INTEGER NOT NULL) STRICT;
INSERT INTO policy_version (n) VALUES (0);
ALTER TABLE commands ADD COLUMN sender TEXT NOT NULL DEFAULT '';
"#;

const USER_COLS: &str = "name, source, password_hash, attributes, disabled, failed_logins, \
     locked_until, created_at, subject, \
     (SELECT COALESCE(json_group_array(group_name), '[]') FROM \
        (SELECT group_name FROM group_members m WHERE m.user_name = users.name ORDER BY group_name))";

fn user_row(r: &Row<'_>) -> rusqlite::Result<User> {
    let attrs: String = r.get(3)?;
    let groups: String = r.get(9)?;
    Ok(User {
        name: r.get(0)?,
        source: r.get(1)?,
        password_hash: r.get(2)?,
        attributes: serde_json::from_str(&attrs).unwrap_or_default(),
        disabled: r.get(4)?,
        failed_logins: r.get(5)?,
        locked_until: r.get(6)?,
        created_at: r.get(7)?,
        subject: r.get(8)?,
        groups: serde_json::from_str(&groups).unwrap_or_default(),
    })
}

const TOKEN_COLS: &str = "id, name, hash, user_name, kind, scope, created_at, expires_at, \
     revoked_at, last_used_at, idle_timeout, csrf_hash";

fn token_row(r: &Row<'_>) -> rusqlite::Result<ApiToken> {
    let scope: String = r.get(5)?;
    Ok(ApiToken {
        id: r.get(0)?,
        name: r.get(1)?,
        hash: r.get(2)?,
        user: r.get(3)?,
        kind: r.get(4)?,
        scope: scope
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        created_at: r.get(6)?,
        expires_at: r.get(7)?,
        revoked_at: r.get(8)?,
        last_used_at: r.get(9)?,
        idle_timeout_secs: r.get(10)?,
        csrf_hash: r.get(11)?,
    })
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn get_user(c: &Connection, name: &str) -> Result<Option<User>, StoreError> {
    c.prepare_cached(&format!("SELECT {USER_COLS} FROM users WHERE name = ?1"))
        .and_then(|mut st| st.query_row([name], user_row).optional())
        .map_err(db("read a user"))
}

pub(crate) fn list_users(c: &Connection) -> Result<Vec<User>, StoreError> {
    let mut st = c
        .prepare_cached(&format!("SELECT {USER_COLS} FROM users ORDER BY name"))
        .map_err(db("list users"))?;
    let rows = st.query_map([], user_row).map_err(db("list users"))?;
    rows.collect::<Result<_, _>>().map_err(db("list users"))
}

fn missing_groups(c: &Connection, groups: &[String]) -> Result<(), StoreError> {
    for g in groups {
        let exists: bool = c
            .query_row(
                "SELECT COUNT(*) > 0 FROM user_groups WHERE name = ?1",
                [g],
                |r| r.get(0),
            )
            .map_err(db("read a group"))?;
        if !exists {
            return Err(StoreError::Missing(format!("group {g:?}")));
        }
    }
    Ok(())
}

/// Creates a user (Conflict if the name is taken) in the given groups, which must exist.
pub(crate) fn create_user(c: &mut Connection, u: &User) -> Result<(), StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("create a user"))?;
    if get_user(&tx, &u.name)?.is_some() {
        return Err(StoreError::Conflict(format!("user {:?} exists", u.name)));
    }
    missing_groups(&tx, &u.groups)?;
    tx.execute(
        "INSERT INTO users (name, source, password_hash, attributes, disabled, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            u.name,
            u.source,
            u.password_hash,
            json(&u.attributes),
            u.disabled,
            u.created_at
        ],
    )
    .map_err(db("create a user"))?;
    // Groups are a set: a group named twice is one membership (it was a 500, from the
    // membership's primary key, until schemathesis sent `["0", "0"]`).
    for g in &u.groups {
        tx.execute(
            "INSERT OR IGNORE INTO group_members (group_name, user_name) VALUES (?1, ?2)",
            params![g, u.name],
        )
        .map_err(db("add a group member"))?;
    }
    tx.commit().map_err(db("create a user"))
}

/// Changes a user in one transaction: `f` gets the current record and edits it. Groups are
/// replaced by the new record's (they must exist); `create_as` creates a missing user first.
pub(crate) fn update_user(
    c: &mut Connection,
    name: &str,
    create_as: Option<&User>,
    f: impl FnOnce(&mut User),
) -> Result<User, StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("change a user"))?;
    let mut user = match (get_user(&tx, name)?, create_as) {
        (Some(u), _) => u,
        (None, Some(new)) => {
            tx.execute(
                "INSERT INTO users (name, source, created_at, subject) VALUES (?1, ?2, ?3, ?4)",
                params![new.name, new.source, new.created_at, new.subject],
            )
            .map_err(db("create a user"))?;
            User {
                groups: Vec::new(),
                ..new.clone()
            }
        }
        (None, None) => return Err(StoreError::NotFound(format!("user {name:?}"))),
    };
    let before = user.groups.clone();
    f(&mut user);
    user.groups.sort();
    user.groups.dedup();
    if user.groups != before {
        missing_groups(&tx, &user.groups)?;
        tx.execute("DELETE FROM group_members WHERE user_name = ?1", [name])
            .map_err(db("change a user's groups"))?;
        for g in &user.groups {
            tx.execute(
                "INSERT INTO group_members (group_name, user_name) VALUES (?1, ?2)",
                params![g, name],
            )
            .map_err(db("change a user's groups"))?;
        }
    }
    tx.execute(
        "UPDATE users SET password_hash = ?2, attributes = ?3, disabled = ?4, failed_logins = ?5, \
         locked_until = ?6 WHERE name = ?1",
        params![
            name,
            user.password_hash,
            json(&user.attributes),
            user.disabled,
            user.failed_logins,
            user.locked_until
        ],
    )
    .map_err(db("change a user"))?;
    tx.commit().map_err(db("change a user"))?;
    Ok(user)
}

pub(crate) fn delete_user(c: &mut Connection, name: &str) -> Result<(), StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("delete a user"))?;
    tx.execute("DELETE FROM api_tokens WHERE user_name = ?1", [name])
        .map_err(db("delete a user's tokens"))?;
    let n = tx
        .execute("DELETE FROM users WHERE name = ?1", [name])
        .map_err(db("delete a user"))?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("user {name:?}")));
    }
    tx.commit().map_err(db("delete a user"))
}

pub(crate) fn list_groups(c: &Connection) -> Result<Vec<Group>, StoreError> {
    let mut st = c
        .prepare_cached(
            "SELECT g.name, g.description, g.created_at, \
             (SELECT COALESCE(json_group_array(user_name), '[]') FROM \
                (SELECT user_name FROM group_members m WHERE m.group_name = g.name ORDER BY user_name)) \
             FROM user_groups g ORDER BY g.name",
        )
        .map_err(db("list groups"))?;
    let rows = st
        .query_map([], |r| {
            let members: String = r.get(3)?;
            Ok(Group {
                name: r.get(0)?,
                description: r.get(1)?,
                created_at: r.get(2)?,
                members: serde_json::from_str(&members).unwrap_or_default(),
            })
        })
        .map_err(db("list groups"))?;
    rows.collect::<Result<_, _>>().map_err(db("list groups"))
}

pub(crate) fn create_group(c: &Connection, g: &Group) -> Result<(), StoreError> {
    let n = c
        .execute(
            "INSERT OR IGNORE INTO user_groups (name, description, created_at) VALUES (?1, ?2, ?3)",
            params![g.name, g.description, g.created_at],
        )
        .map_err(db("create a group"))?;
    if n == 0 {
        return Err(StoreError::Conflict(format!("group {:?} exists", g.name)));
    }
    Ok(())
}

pub(crate) fn delete_group(c: &Connection, name: &str) -> Result<(), StoreError> {
    let n = c
        .execute("DELETE FROM user_groups WHERE name = ?1", [name])
        .map_err(db("delete a group"))?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("group {name:?}")));
    }
    Ok(())
}

pub(crate) fn create_token(c: &Connection, t: &ApiToken) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO api_tokens (id, name, hash, role, created_at, user_name, kind, scope, \
         expires_at, revoked_at, last_used_at, idle_timeout, csrf_hash) \
         VALUES (?1, ?2, ?3, 'user', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            t.id,
            t.name,
            t.hash,
            t.created_at,
            t.user,
            t.kind,
            t.scope.join(","),
            t.expires_at,
            t.revoked_at,
            t.last_used_at,
            t.idle_timeout_secs,
            t.csrf_hash
        ],
    )
    .map_err(db("create an API token"))?;
    Ok(())
}

pub(crate) fn find_token(c: &Connection, hash: &str) -> Result<Option<TokenOwner>, StoreError> {
    let token = c
        .prepare_cached(&format!(
            "SELECT {TOKEN_COLS} FROM api_tokens WHERE hash = ?1"
        ))
        .and_then(|mut st| st.query_row([hash], token_row).optional())
        .map_err(db("look up an API token"))?;
    let Some(token) = token else { return Ok(None) };
    Ok(get_user(c, &token.user)?.map(|user| TokenOwner { token, user }))
}

pub(crate) fn list_tokens(c: &Connection, user: &str) -> Result<Vec<ApiToken>, StoreError> {
    let mut st = c
        .prepare_cached(&format!(
            "SELECT {TOKEN_COLS} FROM api_tokens WHERE user_name = ?1 ORDER BY created_at, id"
        ))
        .map_err(db("list API tokens"))?;
    let rows = st
        .query_map([user], token_row)
        .map_err(db("list API tokens"))?;
    rows.collect::<Result<_, _>>()
        .map_err(db("list API tokens"))
}

/// Revokes a token of `user` (by ID or name); NotFound when it has none such.
pub(crate) fn revoke_token(
    c: &Connection,
    user: &str,
    token: &str,
    at: i64,
) -> Result<(), StoreError> {
    let n = c
        .execute(
            "UPDATE api_tokens SET revoked_at = ?3 WHERE user_name = ?1 AND (id = ?2 OR name = ?2) \
             AND revoked_at = 0",
            params![user, token, at],
        )
        .map_err(db("revoke an API token"))?;
    if n == 0 {
        return Err(StoreError::NotFound(format!(
            "live token {token:?} of user {user:?}"
        )));
    }
    Ok(())
}

pub(crate) fn list_policies(c: &Connection) -> Result<(i64, Vec<StoredPolicy>), StoreError> {
    let version = policy_version(c)?;
    let mut st = c
        .prepare_cached("SELECT name, text, created_at, updated_at FROM policies ORDER BY name")
        .map_err(db("list policies"))?;
    let rows = st
        .query_map([], |r| {
            Ok(StoredPolicy {
                name: r.get(0)?,
                text: r.get(1)?,
                created_at: r.get(2)?,
                updated_at: r.get(3)?,
            })
        })
        .map_err(db("list policies"))?;
    Ok((
        version,
        rows.collect::<Result<_, _>>()
            .map_err(db("list policies"))?,
    ))
}

pub(crate) fn policy_version(c: &Connection) -> Result<i64, StoreError> {
    c.prepare_cached("SELECT n FROM policy_version")
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .map_err(db("read the policy version"))
}

/// Stores (creates or replaces) or, with `text` None, deletes a policy file.
pub(crate) fn write_policy(
    c: &mut Connection,
    name: &str,
    text: Option<&str>,
    at: i64,
) -> Result<(), StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("write a policy"))?;
    let n = match text {
        Some(text) => tx.execute(
            "INSERT INTO policies (name, text, created_at, updated_at) VALUES (?1, ?2, ?3, ?3) \
             ON CONFLICT (name) DO UPDATE SET text = excluded.text, updated_at = excluded.updated_at",
            params![name, text, at],
        ),
        None => tx.execute("DELETE FROM policies WHERE name = ?1", [name]),
    }
    .map_err(db("write a policy"))?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("policy {name:?}")));
    }
    tx.execute("UPDATE policy_version SET n = n + 1", [])
        .map_err(db("write a policy"))?;
    tx.commit().map_err(db("write a policy"))
}

#[async_trait::async_trait]
impl crate::IdentityStore for crate::SqliteStore {
    async fn count_users(&self) -> Result<u64, StoreError> {
        self.call(|c| {
            c.query_row("SELECT COUNT(*) FROM users", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(db("count users"))
        })
        .await
    }

    async fn get_user(&self, name: &str) -> Result<Option<User>, StoreError> {
        let name = name.to_string();
        self.call(move |c| get_user(c, &name)).await
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        self.call(|c| list_users(c)).await
    }

    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let user = user.clone();
        self.call(move |c| create_user(c, &user)).await
    }

    async fn update_user(
        &self,
        name: &str,
        create_as: Option<User>,
        change: UserChange,
    ) -> Result<User, StoreError> {
        let name = name.to_string();
        self.call(move |c| update_user(c, &name, create_as.as_ref(), change))
            .await
    }

    async fn delete_user(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.call(move |c| delete_user(c, &name)).await
    }

    async fn list_groups(&self) -> Result<Vec<Group>, StoreError> {
        self.call(|c| list_groups(c)).await
    }

    async fn create_group(&self, group: &Group) -> Result<(), StoreError> {
        let group = group.clone();
        self.call(move |c| create_group(c, &group)).await
    }

    async fn delete_group(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.call(move |c| delete_group(c, &name)).await
    }

    async fn create_token(&self, t: &ApiToken) -> Result<(), StoreError> {
        let t = t.clone();
        self.call(move |c| create_token(c, &t)).await
    }

    async fn find_token(&self, hash: &str) -> Result<Option<TokenOwner>, StoreError> {
        let hash = hash.to_string();
        self.call(move |c| find_token(c, &hash)).await
    }

    async fn list_tokens(&self, user: &str) -> Result<Vec<ApiToken>, StoreError> {
        let user = user.to_string();
        self.call(move |c| list_tokens(c, &user)).await
    }

    async fn revoke_token(&self, user: &str, token: &str, at: i64) -> Result<(), StoreError> {
        let (user, token) = (user.to_string(), token.to_string());
        self.call(move |c| revoke_token(c, &user, &token, at)).await
    }

    async fn touch_token(&self, id: &str, at: i64) -> Result<(), StoreError> {
        let id = id.to_string();
        self.call(move |c| {
            c.execute(
                "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1",
                params![id, at],
            )
            .map(|_| ())
            .map_err(db("record a token's use"))
        })
        .await
    }

    async fn list_policies(&self) -> Result<(i64, Vec<StoredPolicy>), StoreError> {
        self.call(|c| list_policies(c)).await
    }

    async fn policy_version(&self) -> Result<i64, StoreError> {
        self.call(|c| policy_version(c)).await
    }

    async fn write_policy(
        &self,
        name: &str,
        text: Option<&str>,
        at: i64,
    ) -> Result<(), StoreError> {
        let (name, text) = (name.to_string(), text.map(str::to_string));
        self.call(move |c| write_policy(c, &name, text.as_deref(), at))
            .await
    }
}
