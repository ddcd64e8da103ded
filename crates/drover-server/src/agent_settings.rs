//! Agents' settings from Parameter Store: an agent names a parameter in its Hello, and gets
//! its settings in the Welcome and again whenever a parameter changes. Only parameters under
//! [`PREFIX`] are read this way, and never a SecureString: a node is no principal, so this
//! path must not reveal other configuration to whoever holds a node's certificate.

use drover_proto::AgentSettings;
use drover_store::params::Selector;
use drover_store::NodeId;

use crate::AppState;

/// Where agents' settings live.
pub const PREFIX: &str = "/drover/agents/";

/// The settings in parameter `name`, for `node`: None (and a warning) when there are none to
/// apply.
pub async fn read(state: &AppState, node: &NodeId, name: &str) -> Option<AgentSettings> {
    let skip = |why: String| {
        tracing::warn!(node = %node, parameter = ?name.chars().take(200).collect::<String>(), reason = %why, "agent settings not applied");
        None
    };
    let valid_name =
        name.len() <= 1011 && crate::api::matches_rule(crate::api::PARAMETER_NAME, name);
    if !name.starts_with(PREFIX) || !valid_name {
        return skip(format!(
            "agents' settings are read only from parameters under {PREFIX}"
        ));
    }
    let p = match state.store.get_parameter(name, &Selector::Latest).await {
        Ok(Some(p)) => p,
        Ok(None) => return skip("no such parameter".into()),
        Err(e) => return skip(format!("store: {e}")),
    };
    if p.kind == "SecureString" {
        return skip("a SecureString is never sent to agents this way".into());
    }
    let settings: AgentSettings = match serde_json::from_str(&p.value) {
        Ok(s) => s,
        Err(e) => {
            return skip(format!(
                "version {} is not a JSON object of log_level, heartbeat_secs and proxy: {e}",
                p.version
            ))
        }
    };
    if let Err(e) = settings.validate() {
        return skip(format!("version {}: {e}", p.version));
    }
    Some(settings)
}
