//! Parameter Store: hierarchical names (`/app/prod/db-url`), each with numbered versions and
//! labels pointing at versions. A SecureString's value arrives sealed by the server; the store
//! never sees it in clear.

/// One version of a parameter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParameterVersion {
    pub name: String,
    /// `String`, `StringList` or `SecureString`.
    pub kind: String,
    /// The value; for a SecureString, sealed.
    pub value: String,
    pub description: String,
    pub version: i64,
    /// Labels on this version (each label is on one version of a parameter at most).
    pub labels: Vec<String>,
    pub modified_at: i64,
    pub modified_by: String,
}

/// Which version to read: the newest, a number, or a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Latest,
    Version(i64),
    Label(String),
}

/// A new version to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutParameter {
    pub name: String,
    pub kind: String,
    pub value: String,
    pub description: String,
    /// Replace an existing parameter (adding a version); without it, an existing name is a
    /// conflict.
    pub overwrite: bool,
    /// The version this must become (a SecureString is sealed for it): another number, because
    /// a put or a delete came first, is a conflict and stores nothing.
    pub version: i64,
    pub at: i64,
    pub by: String,
}

/// The parameters under a path: `/app/prod` holds `/app/prod/a` (and, recursively,
/// `/app/prod/x/b`). The path itself is not under itself.
pub fn under(path: &str, name: &str, recursive: bool) -> bool {
    let prefix = if path.ends_with('/') {
        path.to_string()
    } else {
        format!("{path}/")
    };
    match name.strip_prefix(&prefix) {
        Some(rest) => !rest.is_empty() && (recursive || !rest.contains('/')),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_hold_their_children_and_recursively_their_descendants() {
        assert!(under("/app/prod", "/app/prod/db", false));
        assert!(under("/app/prod/", "/app/prod/db", false));
        assert!(!under("/app/prod", "/app/prod/x/db", false));
        assert!(under("/app/prod", "/app/prod/x/db", true));
        assert!(!under("/app/prod", "/app/production", true));
        assert!(!under("/app/prod", "/app/prod", true));
        assert!(under("/", "/a", false));
        assert!(!under("/", "/a/b", false));
    }
}
