//! Parameter Store in SQLite: one row per version, labels beside them.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::params::{under, ParameterVersion, PutParameter, Selector};
use crate::sqlite_commands::db;
use crate::StoreError;

pub(crate) const MIGRATION_PARAMS: &str = r#"
CREATE TABLE parameters (
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    value       TEXT NOT NULL,
    description TEXT NOT NULL,
    modified_at INTEGER NOT NULL,
    modified_by TEXT NOT NULL,
    PRIMARY KEY (name, version)
) STRICT, WITHOUT ROWID;
CREATE TABLE parameter_labels (
    name    TEXT NOT NULL,
    label   TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (name, label)
) STRICT, WITHOUT ROWID;
"#;

/// Versions kept per parameter (SSM keeps 100): the oldest goes when a new one comes.
pub const VERSIONS_KEPT: i64 = 100;

const COLS: &str = "name, version, kind, value, description, modified_at, modified_by";

fn labels(c: &Connection, name: &str, version: i64) -> Result<Vec<String>, StoreError> {
    let mut st = c
        .prepare_cached(
            "SELECT label FROM parameter_labels WHERE name = ?1 AND version = ?2 ORDER BY label",
        )
        .map_err(db("read a parameter's labels"))?;
    let rows = st
        .query_map(params![name, version], |r| r.get(0))
        .map_err(db("read a parameter's labels"))?;
    rows.collect::<Result<_, _>>()
        .map_err(db("read a parameter's labels"))
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ParameterVersion> {
    Ok(ParameterVersion {
        name: r.get(0)?,
        version: r.get(1)?,
        kind: r.get(2)?,
        value: r.get(3)?,
        description: r.get(4)?,
        modified_at: r.get(5)?,
        modified_by: r.get(6)?,
        labels: Vec::new(),
    })
}

fn with_labels(
    c: &Connection,
    mut v: Vec<ParameterVersion>,
) -> Result<Vec<ParameterVersion>, StoreError> {
    for p in &mut v {
        p.labels = labels(c, &p.name, p.version)?;
    }
    Ok(v)
}

fn latest_version(c: &Connection, name: &str) -> Result<Option<i64>, StoreError> {
    c.query_row(
        "SELECT MAX(version) FROM parameters WHERE name = ?1",
        [name],
        |r| r.get(0),
    )
    .map_err(db("read a parameter"))
}

fn put(c: &mut Connection, p: &PutParameter) -> Result<i64, StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("store a parameter"))?;
    let latest = latest_version(&tx, &p.name)?;
    if latest.is_some() && !p.overwrite {
        return Err(StoreError::Conflict(format!(
            "parameter {} exists; overwrite it to add a version",
            p.name
        )));
    }
    let version = latest.unwrap_or(0) + 1;
    if version != p.version {
        return Err(StoreError::Conflict(format!(
            "parameter {} changed meanwhile; put it again",
            p.name
        )));
    }
    tx.execute(
        &format!("INSERT INTO parameters ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
        params![p.name, version, p.kind, p.value, p.description, p.at, p.by],
    )
    .map_err(db("store a parameter"))?;
    // The oldest versions past the limit go, with their labels.
    let cut = version - VERSIONS_KEPT;
    if cut > 0 {
        tx.execute(
            "DELETE FROM parameters WHERE name = ?1 AND version <= ?2",
            params![p.name, cut],
        )
        .map_err(db("store a parameter"))?;
        tx.execute(
            "DELETE FROM parameter_labels WHERE name = ?1 AND version <= ?2",
            params![p.name, cut],
        )
        .map_err(db("store a parameter"))?;
    }
    tx.commit().map_err(db("store a parameter"))?;
    Ok(version)
}

fn get(
    c: &Connection,
    name: &str,
    selector: &Selector,
) -> Result<Option<ParameterVersion>, StoreError> {
    let version = match selector {
        Selector::Latest => latest_version(c, name)?,
        Selector::Version(v) => Some(*v),
        Selector::Label(l) => c
            .query_row(
                "SELECT version FROM parameter_labels WHERE name = ?1 AND label = ?2",
                params![name, l],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("read a parameter"))?,
    };
    let Some(version) = version else {
        return Ok(None);
    };
    let found = c
        .query_row(
            &format!("SELECT {COLS} FROM parameters WHERE name = ?1 AND version = ?2"),
            params![name, version],
            row,
        )
        .optional()
        .map_err(db("read a parameter"))?;
    Ok(with_labels(c, found.into_iter().collect())?.pop())
}

fn by_path(
    c: &Connection,
    path: &str,
    recursive: bool,
    limit: usize,
) -> Result<Vec<ParameterVersion>, StoreError> {
    let prefix = format!("{}/", path.trim_end_matches('/'));
    // Names from `prefix` up to the next string after every name that starts with it.
    let end = format!("{}0", prefix.trim_end_matches('/'));
    let mut st = c
        .prepare_cached(&format!(
            "SELECT {COLS} FROM parameters p WHERE name >= ?1 AND name < ?2 \
             AND version = (SELECT MAX(version) FROM parameters q WHERE q.name = p.name) \
             ORDER BY name"
        ))
        .map_err(db("list parameters"))?;
    let rows = st
        .query_map(params![prefix, end], row)
        .map_err(db("list parameters"))?;
    let mut out = Vec::new();
    for r in rows {
        let p = r.map_err(db("list parameters"))?;
        if under(path, &p.name, recursive) {
            out.push(p);
            if out.len() >= limit {
                break;
            }
        }
    }
    with_labels(c, out)
}

fn history(c: &Connection, name: &str) -> Result<Vec<ParameterVersion>, StoreError> {
    let mut st = c
        .prepare_cached(&format!(
            "SELECT {COLS} FROM parameters WHERE name = ?1 ORDER BY version"
        ))
        .map_err(db("read a parameter's history"))?;
    let rows = st
        .query_map([name], row)
        .map_err(db("read a parameter's history"))?;
    let out = rows
        .collect::<Result<Vec<_>, _>>()
        .map_err(db("read a parameter's history"))?;
    with_labels(c, out)
}

fn delete(c: &mut Connection, name: &str) -> Result<(), StoreError> {
    let tx = c.transaction().map_err(db("delete a parameter"))?;
    let n = tx
        .execute("DELETE FROM parameters WHERE name = ?1", [name])
        .map_err(db("delete a parameter"))?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("parameter {name}")));
    }
    tx.execute("DELETE FROM parameter_labels WHERE name = ?1", [name])
        .map_err(db("delete a parameter"))?;
    tx.commit().map_err(db("delete a parameter"))
}

fn label(c: &mut Connection, name: &str, version: i64, names: &[String]) -> Result<(), StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("label a parameter"))?;
    let exists: Option<i64> = tx
        .query_row(
            "SELECT version FROM parameters WHERE name = ?1 AND version = ?2",
            params![name, version],
            |r| r.get(0),
        )
        .optional()
        .map_err(db("label a parameter"))?;
    if exists.is_none() {
        return Err(StoreError::NotFound(format!(
            "parameter {name} version {version}"
        )));
    }
    for l in names {
        // A label moves: it names one version of a parameter at a time.
        tx.execute(
            "INSERT INTO parameter_labels (name, label, version) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name, label) DO UPDATE SET version = excluded.version",
            params![name, l, version],
        )
        .map_err(db("label a parameter"))?;
    }
    tx.commit().map_err(db("label a parameter"))
}

#[async_trait::async_trait]
impl crate::ParamStore for crate::SqliteStore {
    async fn put_parameter(&self, p: &PutParameter) -> Result<i64, StoreError> {
        let p = p.clone();
        self.call(move |c| put(c, &p)).await
    }

    async fn get_parameter(
        &self,
        name: &str,
        selector: &Selector,
    ) -> Result<Option<ParameterVersion>, StoreError> {
        let (name, selector) = (name.to_string(), selector.clone());
        self.call(move |c| get(c, &name, &selector)).await
    }

    async fn parameters_by_path(
        &self,
        path: &str,
        recursive: bool,
        limit: usize,
    ) -> Result<Vec<ParameterVersion>, StoreError> {
        let path = path.to_string();
        self.call(move |c| by_path(c, &path, recursive, limit))
            .await
    }

    async fn parameter_history(&self, name: &str) -> Result<Vec<ParameterVersion>, StoreError> {
        let name = name.to_string();
        self.call(move |c| history(c, &name)).await
    }

    async fn delete_parameter(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.call(move |c| delete(c, &name)).await
    }

    async fn label_parameter(
        &self,
        name: &str,
        version: i64,
        labels: &[String],
    ) -> Result<(), StoreError> {
        let (name, labels) = (name.to_string(), labels.to_vec());
        self.call(move |c| label(c, &name, version, &labels)).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn store() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(MIGRATION_PARAMS).unwrap();
        c
    }

    fn put_one(
        c: &mut Connection,
        name: &str,
        value: &str,
        overwrite: bool,
    ) -> Result<i64, StoreError> {
        put(
            c,
            &PutParameter {
                name: name.into(),
                kind: "String".into(),
                value: value.into(),
                description: String::new(),
                overwrite,
                version: c
                    .query_row(
                        "SELECT COALESCE(MAX(version), 0) + 1 FROM parameters WHERE name = ?1",
                        [name],
                        |r| r.get(0),
                    )
                    .unwrap(),
                at: 1,
                by: "admin".into(),
            },
        )
    }

    #[test]
    fn versions_labels_paths_and_deletion() {
        let mut c = store();
        assert_eq!(put_one(&mut c, "/app/prod/db", "a", false).unwrap(), 1);
        assert!(matches!(
            put_one(&mut c, "/app/prod/db", "b", false),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(put_one(&mut c, "/app/prod/db", "b", true).unwrap(), 2);
        // A value sealed for a version another put took first is refused, and not stored.
        let stale = PutParameter {
            name: "/app/prod/db".into(),
            kind: "SecureString".into(),
            value: "sealed for 2".into(),
            description: String::new(),
            overwrite: true,
            version: 2,
            at: 1,
            by: "admin".into(),
        };
        assert!(matches!(put(&mut c, &stale), Err(StoreError::Conflict(_))));
        assert_eq!(history(&c, "/app/prod/db").unwrap().len(), 2);
        put_one(&mut c, "/app/prod/x/deep", "d", false).unwrap();
        put_one(&mut c, "/app/production", "p", false).unwrap();

        assert_eq!(
            get(&c, "/app/prod/db", &Selector::Latest)
                .unwrap()
                .unwrap()
                .value,
            "b"
        );
        assert_eq!(
            get(&c, "/app/prod/db", &Selector::Version(1))
                .unwrap()
                .unwrap()
                .value,
            "a"
        );
        assert!(get(&c, "/app/prod/db", &Selector::Version(3))
            .unwrap()
            .is_none());

        label(&mut c, "/app/prod/db", 1, &["stable".into()]).unwrap();
        let stable = get(&c, "/app/prod/db", &Selector::Label("stable".into()))
            .unwrap()
            .unwrap();
        assert_eq!(
            (stable.version, stable.labels.clone()),
            (1, vec!["stable".to_string()])
        );
        // A label moves to the version it is put on.
        label(&mut c, "/app/prod/db", 2, &["stable".into()]).unwrap();
        assert_eq!(
            get(&c, "/app/prod/db", &Selector::Label("stable".into()))
                .unwrap()
                .unwrap()
                .version,
            2
        );
        assert!(matches!(
            label(&mut c, "/app/prod/db", 9, &["x".into()]),
            Err(StoreError::NotFound(_))
        ));

        let names = |v: Vec<ParameterVersion>| v.into_iter().map(|p| p.name).collect::<Vec<_>>();
        assert_eq!(
            names(by_path(&c, "/app/prod", false, 100).unwrap()),
            ["/app/prod/db"]
        );
        assert_eq!(
            names(by_path(&c, "/app/prod/", true, 100).unwrap()),
            ["/app/prod/db", "/app/prod/x/deep"]
        );
        assert_eq!(
            by_path(&c, "/app/prod", true, 100).unwrap()[0].version,
            2,
            "the latest"
        );
        assert_eq!(history(&c, "/app/prod/db").unwrap().len(), 2);

        delete(&mut c, "/app/prod/db").unwrap();
        assert!(get(&c, "/app/prod/db", &Selector::Latest)
            .unwrap()
            .is_none());
        assert!(matches!(
            delete(&mut c, "/app/prod/db"),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn the_oldest_versions_go_past_the_limit() {
        let mut c = store();
        for i in 0..VERSIONS_KEPT + 2 {
            put_one(&mut c, "/p", &i.to_string(), true).unwrap();
        }
        let h = history(&c, "/p").unwrap();
        assert_eq!(h.len() as i64, VERSIONS_KEPT);
        assert_eq!(h[0].version, 3);
    }
}
