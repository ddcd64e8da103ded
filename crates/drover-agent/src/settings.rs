//! Settings kept centrally in a Parameter Store parameter: the server sends them in its
//! Welcome and again when the parameter changes. The log level applies at once (through the
//! hook the binary installs); the proxy and heartbeat from the next connection. The last
//! settings are kept in the state directory, so that a restarted agent dials through the
//! proxy before it can ask.

use std::path::Path;
use std::sync::Arc;

use drover_proto::AgentSettings;
use drover_tunnel::dial::Endpoint;

/// Called with each new settings, for what only the binary can change (its log filter).
pub type Hook = Arc<dyn Fn(&AgentSettings) + Send + Sync>;

#[derive(Clone, Default)]
pub struct SettingsHook(pub Option<Hook>);

impl std::fmt::Debug for SettingsHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "SettingsHook(set)"
        } else {
            "SettingsHook(none)"
        })
    }
}

const FILE: &str = "settings.json";

/// The settings saved by the last connection, if any (and valid).
pub fn saved(state_dir: &Path) -> Option<AgentSettings> {
    let text = std::fs::read_to_string(state_dir.join(FILE)).ok()?;
    serde_json::from_str::<AgentSettings>(&text)
        .ok()
        .filter(|s| s.validate().is_ok())
}

/// The proxy the saved settings name.
pub fn saved_proxy(state_dir: &Path) -> Option<Endpoint> {
    let proxy = saved(state_dir)?.proxy?;
    Endpoint::parse(&format!("http://{proxy}"), 3128).ok()
}

/// Drops the kept settings (the server has none for this agent now).
pub fn forget(state_dir: &Path) {
    match std::fs::remove_file(state_dir.join(FILE)) {
        Ok(()) => tracing::info!("the server sent no settings: the kept ones are dropped"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "could not drop the kept settings"),
    }
}

/// Applies what the server sent (checked again: the server is a peer like any other).
pub fn apply(state_dir: &Path, hook: &SettingsHook, parameter: &str, s: &AgentSettings) {
    if let Err(e) = s.validate() {
        tracing::warn!(%parameter, error = %e, "ignored invalid settings from the server");
        return;
    }
    if saved(state_dir).as_ref() != Some(s) {
        if let Err(e) = save(state_dir, s) {
            tracing::warn!(error = %e, "could not keep the settings in the state directory");
        }
    }
    tracing::info!(
        %parameter,
        log_level = s.log_level.as_deref().unwrap_or("(unchanged)"),
        heartbeat_secs = s.heartbeat_secs.unwrap_or(0),
        proxy = s.proxy.as_deref().unwrap_or("(none)"),
        "applied settings from the server"
    );
    // After the line above: a quieter level must not hide that it was applied.
    if let Some(h) = &hook.0 {
        h(s);
    }
}

fn save(state_dir: &Path, s: &AgentSettings) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec(s).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, state_dir.join(FILE))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn settings_are_kept_and_bad_ones_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let good = AgentSettings {
            log_level: Some("debug".into()),
            heartbeat_secs: Some(20),
            proxy: Some("proxy.corp:3128".into()),
        };
        apply(
            dir.path(),
            &SettingsHook::default(),
            "/drover/agents/x",
            &good,
        );
        assert_eq!(saved(dir.path()), Some(good));
        assert_eq!(saved_proxy(dir.path()).unwrap().port, 3128);
        let bad = AgentSettings {
            heartbeat_secs: Some(1),
            ..AgentSettings::default()
        };
        apply(
            dir.path(),
            &SettingsHook::default(),
            "/drover/agents/x",
            &bad,
        );
        assert_eq!(saved(dir.path()).unwrap().heartbeat_secs, Some(20));
    }
}
