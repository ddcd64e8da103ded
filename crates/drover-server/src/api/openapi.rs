//! The OpenAPI document: generated from the handlers' annotations, then given every constraint
//! the server checks (from [`super::rules`] and the same constants the handlers use) and every
//! error status it can answer, so that a client generated from it agrees with the server.

use std::sync::OnceLock;

use axum::Json;
use serde_json::{json, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Drover API", description = "Remote and session management of a fleet of servers."),
    paths(
        super::healthz,
        super::metrics,
        super::nodes::list,
        super::node_table::table,
        super::nodes::show,
        super::nodes::tag,
        super::nodes::deregister,
        super::activations::create,
        super::activations::list,
        super::register::register,
        super::documents::create,
        super::documents::update,
        super::documents::get,
        super::documents::list,
        super::documents::versions,
        super::documents::set_default,
        super::documents::delete,
        super::commands::send,
        super::commands::list,
        super::commands::show,
        super::commands::wait,
        super::commands::cancel,
        super::commands::invocations,
        super::commands::invocation,
        super::sessions::start,
        super::sessions::list,
        super::sessions::show,
        super::sessions::terminate,
        super::sessions::recording,
        super::ssh::ca,
        super::ssh::certificate,
        super::identity::login,
        super::identity::logout,
        super::identity::oidc_start,
        super::identity::oidc_finish,
        super::federation::console_start,
        super::federation::console_callback,
        super::federation::device_start,
        super::federation::device_finish,
        super::identity::whoami,
        super::identity::methods,
        super::access::create,
        super::access::list,
        super::access::show,
        super::access::approve,
        super::access::deny,
        super::access::revoke,
        super::audited::list,
        super::audited::verify,
        super::assoc::create,
        super::assoc::list,
        super::assoc::show,
        super::assoc::update,
        super::assoc::delete,
        super::assoc::run_now,
        super::assoc::executions,
        super::assoc::compliance,
        super::assoc::summary,
        super::params::put,
        super::params::get,
        super::params::by_path,
        super::params::history,
        super::params::delete,
        super::params::label,
        super::alerts::create_webhook,
        super::alerts::list_webhooks,
        super::alerts::show_webhook,
        super::alerts::test_webhook,
        super::alerts::delete_webhook,
        super::alerts::create_window,
        super::alerts::list_windows,
        super::alerts::delete_window,
        super::users::list_users,
        super::users::show_user,
        super::users::create_user,
        super::users::update_user,
        super::users::delete_user,
        super::users::list_groups,
        super::users::create_group,
        super::users::delete_group,
        super::users::list_tokens,
        super::users::create_token,
        super::users::revoke_token,
        super::policies::list,
        super::policies::get,
        super::policies::put,
        super::policies::delete_policy,
        super::policies::validate_text,
        super::policies::check,
    ),
    modifiers(&Bearer)
)]
struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn document() -> Json<Value> {
    static DOC: OnceLock<Value> = OnceLock::new();
    Json(DOC.get_or_init(build).clone())
}

/// The document as served.
pub fn build() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    super::openapi_params::constrain_parameters(&mut doc);
    constrain_schemas(&mut doc);
    declare_errors(&mut doc);
    doc
}

pub(super) fn string(pattern: &str) -> Value {
    json!({"type": "string", "pattern": pattern})
}

pub(super) fn integer(min: u64, max: u64) -> Value {
    json!({"type": "integer", "minimum": min, "maximum": max})
}

fn tag_map() -> Value {
    json!({
        "type": "object",
        "maxProperties": super::validate::MAX_TAGS,
        "propertyNames": string(super::rules::TAG_KEY),
        "additionalProperties": string(&super::rules::tag_value()),
    })
}

fn constrain_schemas(doc: &mut Value) {
    use super::rules::*;
    let text256 = string(&text(0, 256));
    let max_doc = drover_docs::MAX_DOCUMENT_BYTES;
    let props: Vec<(&str, &str, Value)> = vec![
        (
            "CreateActivation",
            "registration_limit",
            integer(1, super::activations::MAX_REGISTRATIONS as u64),
        ),
        (
            "CreateActivation",
            "expires_in_secs",
            integer(1, super::activations::MAX_EXPIRY_SECS),
        ),
        ("CreateActivation", "description", text256.clone()),
        (
            "CreateWebhook",
            "url",
            json!({"type": "string", "pattern": "^https?://[^\\s@/]+", "maxLength": 2048}),
        ),
        (
            "CreateWebhook",
            "events",
            json!({
                "type": "array", "minItems": 1, "maxItems": 32,
                "items": string(super::alerts::EVENT_PATTERN),
            }),
        ),
        ("CreateWebhook", "description", text256.clone()),
        (
            "PutParameterRequest",
            "name",
            json!({"type": "string", "pattern": super::params::PARAMETER_NAME, "maxLength": 1011}),
        ),
        (
            "PutParameterRequest",
            "type",
            json!({"type": "string", "enum": ["String", "StringList", "SecureString"]}),
        ),
        (
            "PutParameterRequest",
            "value",
            json!({"type": "string", "pattern": "^[^\\u0000]+$", "minLength": 1, "maxLength": 4096}),
        ),
        ("PutParameterRequest", "description", string(&text(0, 1024))),
        (
            "LabelParameterRequest",
            "name",
            json!({"type": "string", "pattern": super::params::PARAMETER_NAME, "maxLength": 1011}),
        ),
        (
            "LabelParameterRequest",
            "version",
            integer(1, i64::MAX as u64),
        ),
        (
            "LabelParameterRequest",
            "labels",
            json!({"type": "array", "minItems": 1, "maxItems": 10, "items": string(super::params::PARAMETER_LABEL)}),
        ),
        ("CreateChangeWindow", "tag", string(&text(3, 256))),
        ("CreateChangeWindow", "description", text256.clone()),
        ("CreateActivation", "default_name", text256.clone()),
        ("CreateActivation", "tags", tag_map()),
        ("CreateDocument", "name", string(DOCUMENT_NAME)),
        (
            "CreateDocument",
            "content",
            json!({"type": "string", "maxLength": max_doc}),
        ),
        (
            "UpdateDocument",
            "content",
            json!({"type": "string", "maxLength": max_doc}),
        ),
        ("SetDefaultVersion", "version", integer(1, i64::MAX as u64)),
        ("SendCommand", "document", string(DOCUMENT_REF)),
        (
            "SendCommand",
            "targets",
            json!({
                "type": "array", "minItems": 1, "maxItems": super::commands::MAX_TARGETS,
                "items": string(&text(1, 256)),
            }),
        ),
        (
            "SendCommand",
            "max_concurrency",
            json!({"type": ["string", "null"], "pattern": RATE}),
        ),
        (
            "SendCommand",
            "max_errors",
            json!({"type": ["string", "null"], "pattern": RATE_OR_ZERO}),
        ),
        ("SendCommand", "delivery_timeout_secs", timeouts()),
        ("SendCommand", "execution_timeout_secs", timeouts()),
        ("SendCommand", "comment", string(&text(0, 1024))),
        (
            "SendCommand",
            "output_limit",
            json!({
                "type": ["integer", "null"],
                "minimum": super::commands::OUTPUT_LIMITS.start(),
                "maximum": super::commands::OUTPUT_LIMITS.end(),
            }),
        ),
        ("StartSession", "node", string(&text(1, 256))),
        ("SshCertificateRequest", "node", string(&text(1, 256))),
        (
            "SshCertificateRequest",
            "public_key",
            string(&text(0, 8 * 1024)),
        ),
        (
            "StartSession",
            "document",
            json!({"type": ["string", "null"], "pattern": DOCUMENT_REF}),
        ),
        (
            "StartSession",
            "parameters",
            json!({"type": "object", "maxProperties": super::sessions::MAX_PARAMETERS}),
        ),
        (
            "StartSession",
            "command",
            json!({
                "type": ["string", "null"], "pattern": COMMAND_LINE,
                "maxLength": super::sessions::MAX_COMMAND,
            }),
        ),
        (
            "StartSession",
            "cols",
            json!({"type": ["integer", "null"], "minimum": 1, "maximum": 1000}),
        ),
        (
            "StartSession",
            "rows",
            json!({"type": ["integer", "null"], "minimum": 1, "maximum": 1000}),
        ),
        (
            "StartSession",
            "term",
            json!({"type": ["string", "null"], "pattern": TERM}),
        ),
        (
            "StartSession",
            "reason",
            json!({"type": ["string", "null"], "pattern": text(0, 1024)}),
        ),
        ("TagUpdate", "set", tag_map()),
        (
            "TagUpdate",
            "remove",
            json!({"type": "array", "items": string(TAG_KEY)}),
        ),
        ("RegisterRequest", "activation_id", string(&text(0, 64))),
        ("RegisterRequest", "activation_code", string(&text(1, 128))),
        (
            "RegisterRequest",
            "csr_pem",
            json!({"type": "string", "maxLength": super::register::MAX_CSR_LEN}),
        ),
        ("RegisterRequest", "name", text256.clone()),
        ("RegisterRequest", "tags", tag_map()),
        ("RegisterRequest", "inventory", registration_inventory()),
        ("LoginRequest", "user", string(USER_NAME)),
        ("LoginRequest", "password", string(&text(0, PASSWORD.1))),
        ("CreateUserRequest", "name", string(USER_NAME)),
        (
            "CreateUserRequest",
            "password",
            nullable(&text(PASSWORD.0, PASSWORD.1)),
        ),
        ("CreateUserRequest", "attributes", tag_map()),
        ("CreateUserRequest", "groups", list(GROUP_NAME)),
        ("UpdateUserRequest", "set_attributes", tag_map()),
        ("UpdateUserRequest", "unset_attributes", list(TAG_KEY)),
        ("UpdateUserRequest", "add_groups", list(GROUP_NAME)),
        ("UpdateUserRequest", "remove_groups", list(GROUP_NAME)),
        (
            "UpdateUserRequest",
            "password",
            nullable(&text(PASSWORD.0, PASSWORD.1)),
        ),
        ("CreateGroupRequest", "name", string(GROUP_NAME)),
        ("CreateGroupRequest", "description", string(&text(0, 1024))),
        ("CreateTokenRequest", "name", string(TOKEN_NAME)),
        (
            "CreateTokenRequest",
            "scope",
            json!({"type": "array", "items": {"type": "string", "enum": scope_names()}}),
        ),
        (
            "CreateTokenRequest",
            "expires_in_secs",
            json!({"type": ["integer", "null"], "minimum": 1, "maximum": super::users::MAX_TOKEN_LIFETIME}),
        ),
        (
            "PolicyText",
            "text",
            json!({"type": "string", "maxLength": MAX_POLICY_CHARS}),
        ),
        (
            "CreateAccessRequest",
            "targets",
            json!({"type": "array", "minItems": 1, "maxItems": 100, "items": string(&text(1, 256))}),
        ),
        (
            "CreateAccessRequest",
            "actions",
            json!({"type": "array", "minItems": 1, "items": {"type": "string", "enum": node_actions()}}),
        ),
        ("CreateAccessRequest", "document", nullable(DOCUMENT_NAME)),
        ("CreateAccessRequest", "reason", string(&text(1, 1024))),
        (
            "CreateAccessRequest",
            "duration_secs",
            integer(1, super::access::MAX_DURATION_SECS),
        ),
        ("AccessVerdict", "comment", string(&text(0, 1024))),
        ("OidcDeviceLogin", "device_code", string(&text(1, 2048))),
        ("OidcDeviceLogin", "user_code", string(&text(1, 2048))),
        (
            "OidcDeviceLogin",
            "verification_uri",
            string(&text(1, 2048)),
        ),
        ("OidcDeviceLogin", "interval_secs", integer(0, 60)),
        ("OidcDeviceLogin", "expires_in_secs", integer(1, 3600)),
        ("CheckRequest", "user", string(USER_NAME)),
        (
            "CheckRequest",
            "action",
            json!({"type": "string", "enum": drover_policy::Action::all().map(|a| a.name()).collect::<Vec<_>>()}),
        ),
        ("CheckRequest", "node", nullable(NODE_ID)),
        ("CheckRequest", "document", nullable(DOCUMENT_NAME)),
        (
            "CheckRequest",
            "kind",
            json!({"type": ["string", "null"], "enum": [null, "shell", "command", "port", "ssh"]}),
        ),
        ("CheckRequest", "command", nullable(COMMAND_ID)),
        ("CheckRequest", "session", nullable(SESSION_ID)),
        ("CheckRequest", "owner", nullable(USER_NAME)),
    ];
    for (schema, prop, mut value) in props {
        let pointer = format!("/components/schemas/{schema}/properties/{prop}");
        // A property renamed in `drover-api` without this table: the test below catches it.
        let Some(target) = doc.pointer_mut(&pointer) else {
            continue;
        };
        // Keep the description the annotations gave.
        if let (Some(d), Some(obj)) = (target.get("description").cloned(), value.as_object_mut()) {
            obj.insert("description".into(), d);
        }
        *target = value;
    }
}

fn nullable(pattern: &str) -> Value {
    json!({"type": ["string", "null"], "pattern": pattern})
}

fn list(pattern: &str) -> Value {
    json!({"type": "array", "items": string(pattern)})
}

/// What a token's scope may name: every action, or `read`.
/// The actions an access request may ask for: those on nodes, but asking and approving.
fn node_actions() -> Vec<&'static str> {
    drover_policy::Action::all()
        .filter(|a| a.resource() == drover_policy::ResourceKind::Node)
        .filter(|a| {
            !matches!(
                a,
                drover_policy::Action::RequestAccess | drover_policy::Action::ApproveAccess
            )
        })
        .map(|a| a.name())
        .collect()
}

fn scope_names() -> Vec<&'static str> {
    let mut names: Vec<&str> = drover_policy::Action::all().map(|a| a.name()).collect();
    names.push("read");
    names
}

fn timeouts() -> Value {
    let t = super::commands::TIMEOUTS;
    json!({"type": ["integer", "null"], "minimum": t.start(), "maximum": t.end()})
}

/// What a node may report when it registers (stricter than what inventory responses show,
/// which the agent's connection reports later).
fn registration_inventory() -> Value {
    use super::rules::*;
    let field = string(&text(0, 256));
    json!({
        "type": "object",
        "properties": {
            "hostname": field, "platform": field, "os_name": field, "os_version": field,
            "kernel": field, "arch": field, "agent_version": field,
            "ip_addresses": {
                "type": "array",
                "maxItems": super::register::MAX_IPS,
                "items": string(&text(0, 64)),
            },
            "boot_time": {"type": ["string", "null"]},
        },
    })
}

/// Errors particular to one operation: a resource it refers to in its body or query (404: a
/// target, a page cursor the retention policy deleted), or a state that forbids the change
/// (409).
fn extra_errors(path: &str, method: &str) -> Vec<&'static str> {
    match (method, path) {
        ("post", "/api/v1/commands") => vec!["404", "409"],
        ("get", "/api/v1/commands") => vec!["404"],
        ("post" | "put" | "delete", p) if p.starts_with("/api/v1/documents") => vec!["409"],
        ("patch", "/api/v1/nodes/{id}/tags") => vec!["409"],
        ("get" | "post", p) if p.starts_with("/api/v1/nodes/{id}") => vec!["409"],
        ("post", "/api/v1/auth/login") => vec!["401", "429"],
        ("post", "/api/v1/auth/oidc/finish") => vec!["401", "404", "409"],
        ("post", "/api/v1/auth/oidc/start") => vec!["404", "409"],
        ("get", "/api/v1/auth/oidc/console") => vec!["404", "409"],
        ("get", "/api/v1/auth/oidc/callback") => vec!["401", "404", "409"],
        ("post", "/api/v1/auth/oidc/device") => vec!["404", "409"],
        ("post", "/api/v1/auth/oidc/device/finish") => vec!["401", "404", "409", "429"],
        ("post", "/api/v1/users") => vec!["404", "409"],
        ("patch" | "delete", "/api/v1/users/{name}") => vec!["409"],
        ("post", "/api/v1/groups") => vec!["409"],
        ("post", "/api/v1/policies/check") => vec!["404"],
        ("post", "/api/v1/access-requests") => vec!["404", "409"],
        ("post", p) if p.starts_with("/api/v1/access-requests/") => vec!["409"],
        _ => vec![],
    }
}

/// Declares the error statuses every operation can answer: 400 for any input, 401 and 403
/// behind a token, 404 where a path names a resource, 500 where the store is read.
fn declare_errors(doc: &mut Value) {
    let error = json!({
        "description": "An error: `{\"error\": {\"code\", \"message\"}}`",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    });
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, ops) in paths.iter_mut() {
        let Some(ops) = ops.as_object_mut() else {
            continue;
        };
        for (method, op) in ops.iter_mut() {
            let secured = op.get("security").is_some();
            let mut statuses = Vec::new();
            if path != "/healthz" && path != "/metrics" {
                statuses.extend(["400", "500"]);
            }
            if secured {
                statuses.extend(["401", "403"]);
            }
            if path.contains('{') {
                statuses.push("404");
            }
            statuses.extend(extra_errors(path, method));
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            for status in statuses {
                responses.entry(status).or_insert_with(|| error.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn every_constrained_property_and_parameter_exists() {
        let doc = build();
        for (schema, prop) in [
            ("SendCommand", "targets"),
            ("CreateActivation", "tags"),
            ("RegisterRequest", "inventory"),
            ("TagUpdate", "remove"),
        ] {
            let p = doc
                .pointer(&format!("/components/schemas/{schema}/properties/{prop}"))
                .unwrap();
            assert!(p.get("type").is_some(), "{schema}.{prop}: {p}");
        }
        let text = doc.to_string();
        for pattern in [
            super::super::rules::COMMAND_ID,
            super::super::rules::DOCUMENT_REF,
        ] {
            assert!(
                text.contains(&serde_json::to_string(pattern).unwrap()),
                "{pattern}"
            );
        }
        // Every operation behind a token declares 401.
        for (_, ops) in doc["paths"].as_object().unwrap() {
            for (_, op) in ops.as_object().unwrap() {
                if op.get("security").is_some() {
                    assert!(op["responses"].get("401").is_some(), "{op}");
                }
            }
        }
    }
}
