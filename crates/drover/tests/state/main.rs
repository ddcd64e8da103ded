//! State Manager and several servers end to end, against real servers and real agents:
//! associations (`assoc.rs`), contexts and agents' settings (`contexts.rs`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod assoc;
mod contexts;

use std::collections::BTreeSet;
use std::path::Path;

use drover_testkit::{wait_status, wait_until, Env, Proc, Server, DEADLINE};
use serde_json::Value;

pub fn env() -> Env {
    Env::new(env!("CARGO_BIN_EXE_drover")).unwrap()
}

pub fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Every run appends its command's ID to a file named after the node.
pub fn marking(marks: &Path) -> String {
    format!(
        "commands=echo \"$DROVER_COMMAND_ID\" >> {}/\"$DROVER_NODE_ID\"",
        marks.display()
    )
}

/// The command IDs a node ran, in order; each at most once.
pub fn runs(marks: &Path, node: &str) -> Vec<String> {
    let text = std::fs::read_to_string(marks.join(node)).unwrap_or_default();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let unique: BTreeSet<&String> = lines.iter().collect();
    assert_eq!(
        unique.len(),
        lines.len(),
        "{node} ran a command twice: {lines:?}"
    );
    lines
}

pub fn executions(env: &Env, name: &str) -> Vec<Value> {
    let out = env
        .cli_ok(&["assoc", "history", name, "--limit", "1000", "-o", "json"])
        .unwrap();
    json(&out).as_array().unwrap().clone()
}

pub fn compliance(env: &Env, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["compliance", "list", "-o", "json"];
    all.extend(args);
    let out = env.cli(&all).unwrap();
    json(&String::from_utf8_lossy(&out.stdout))
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until `node`'s compliance with `assoc` is `status`; returns the row.
pub async fn wait_compliance(env: &Env, assoc: &str, node: &str, status: &str) -> Value {
    wait_until(
        &format!("{node} {status} with {assoc}"),
        DEADLINE,
        || async {
            Ok(compliance(env, &["--association", assoc, "--node", node])
                .into_iter()
                .find(|c| c["status"] == status))
        },
    )
    .await
    .unwrap()
}

pub async fn agent(env: &Env, server: &Server, name: &str, tags: &[&str]) -> (String, Proc) {
    let mut extra = Vec::new();
    for t in tags {
        extra.extend(["--tag", t]);
    }
    let id = env.register_agent(server, name, &extra).unwrap();
    let proc = env.run_agent(name, &[]).unwrap();
    wait_status(server, std::slice::from_ref(&id), "Online")
        .await
        .unwrap();
    (id, proc)
}

pub fn seconds(rfc3339: &Value) -> i64 {
    time::OffsetDateTime::parse(
        rfc3339.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp()
}
