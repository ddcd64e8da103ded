//! The OpenAPI document's path and query parameters: the schema of each, from the same rules
//! the handlers check (`rules.rs`), so that the document and the validators cannot drift.

use serde_json::{json, Value};

use super::openapi::{integer, string};

/// The schema of each path and query parameter, by path prefix and name.
fn parameter_schema(path: &str, name: &str, location: &str) -> Option<Value> {
    use super::rules::*;
    let commands = path.starts_with("/api/v1/commands");
    let sessions = path.starts_with("/api/v1/sessions");
    Some(match (location, name) {
        ("path", "id") if commands => string(COMMAND_ID),
        ("path", "id") if sessions => string(SESSION_ID),
        ("query", "limit") if sessions => integer(1, 1000),
        ("query", "before") if sessions => string(SESSION_ID),
        ("query", "active") => json!({"type": "boolean"}),
        ("query", "since" | "until") => json!({"type": "string", "format": "date-time"}),
        ("query", "user" | "action" | "resource") => string(&text(1, 256)),
        ("query", "after") => integer(0, i64::MAX as u64),
        ("path", "id") if path.starts_with("/api/v1/access-requests") => {
            string(r"^ar-[0-9a-f]{16}$")
        }
        ("query", "status") if path.starts_with("/api/v1/access-requests") => json!({
            "type": "string",
            "enum": ["Pending", "Approved", "Denied", "Revoked", "Expired"]
        }),
        ("query", "limit") if path.starts_with("/api/v1/access-requests") => integer(1, 1000),
        ("query", "name") if path.starts_with("/api/v1/parameters") => {
            json!({"type": "string", "pattern": super::params::PARAMETER_NAME, "maxLength": 1011})
        }
        ("query", "path") if path.starts_with("/api/v1/parameters") => {
            json!({"type": "string", "pattern": super::params::PARAMETER_PATH, "maxLength": 1011})
        }
        ("query", "label") if path.starts_with("/api/v1/parameters") => {
            string(super::params::PARAMETER_LABEL)
        }
        ("path", "id") if path.starts_with("/api/v1/webhooks") => string(super::alerts::WEBHOOK_ID),
        ("query", "limit") if path.starts_with("/api/v1/webhooks") => integer(1, 1000),
        ("path", "id") if path.starts_with("/api/v1/change-windows") => {
            string(super::alerts::WINDOW_ID)
        }
        ("path", "id") if path.starts_with("/api/v1/associations") => {
            string(super::assoc::ASSOCIATION_REF)
        }
        ("query", "association") => string(super::assoc::ASSOCIATION_REF),
        ("query", "limit") if path.starts_with("/api/v1/associations") => integer(1, 1000),
        ("path", "id") => string(&text(1, 256)),
        ("path", "node") => string(NODE_ID),
        ("path", "name") if path.starts_with("/api/v1/users") => string(USER_NAME),
        ("path", "name") if path.starts_with("/api/v1/groups") => string(GROUP_NAME),
        ("path", "name") if path.starts_with("/api/v1/policies") => string(POLICY_NAME),
        ("path", "name") => string(DOCUMENT_NAME),
        // Named token_id, not token: the created token's secret is its `token` field, and a
        // schema-driven client would otherwise pass the secret where the ID goes.
        ("path", "token_id") => string(&text(1, 128)),
        ("query", "filter") => json!({"type": "array", "items": string(&node_filter())}),
        ("query", "search") => string(&text(0, 256)),
        ("query", "sort") if path == "/api/v1/node-table" => {
            json!({"type": "string", "enum": super::node_table::COLUMNS})
        }
        ("query", "order") => json!({"type": "string", "enum": ["asc", "desc"]}),
        ("query", "offset") => integer(0, super::node_table::MAX_OFFSET as u64),
        ("query", "limit") if path == "/api/v1/node-table" => {
            integer(1, super::node_table::MAX_LIMIT as u64)
        }
        ("query", "may") => json!({"type": "string", "enum": drover_policy::Action::all()
            .filter(|a| a.resource() == drover_policy::ResourceKind::Node)
            .map(|a| a.name())
            .collect::<Vec<_>>()}),
        ("query", "document") if path == "/api/v1/nodes" => string(DOCUMENT_NAME),
        ("query", "limit") if path == "/api/v1/commands" => integer(1, 1000),
        ("query", "limit") => integer(1, 10_000),
        ("query", "cursor") if path == "/api/v1/commands" => string(COMMAND_ID),
        ("query", "cursor") if commands => string(INVOCATION_ID),
        ("query", "cursor") => string(NODE_ID),
        ("query", "status") => {
            json!({"type": "string", "enum": super::commands::INVOCATION_STATUSES})
        }
        ("query", "node") => string(NODE_ID),
        ("query", "version") => integer(1, i64::MAX as u64),
        ("query", "seen" | "timeout_ms") => integer(0, u64::MAX),
        _ => return None,
    })
}

pub(super) fn constrain_parameters(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, ops) in paths.iter_mut() {
        let Some(ops) = ops.as_object_mut() else {
            continue;
        };
        for op in ops.values_mut() {
            let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
                continue;
            };
            for p in params.iter_mut().filter_map(Value::as_object_mut) {
                let text = |k: &str| {
                    p.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                let (name, location) = (text("name"), text("in"));
                if let Some(schema) = parameter_schema(path, &name, &location) {
                    p.insert("schema".into(), schema);
                }
            }
        }
    }
}
