//! Many real agents inside the test's own process: the same `drover_agent::run` that
//! `drover agent run` runs, one task each, for tests at a scale where a process per agent would
//! not fit on the machine. Scripts still run as real shells.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use drover_agent::{AgentConfig, InventorySource, RebootMode, RegisterOptions};
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Server;

/// Running agents; stopped when dropped.
pub struct Fleet {
    /// Node IDs, in the order of their names (`PREFIX0001`, ...).
    pub ids: Vec<String>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Registers `count` nodes named `{prefix}0001`... through one activation (keys and
    /// certificates of their own, state under `dir`), then starts an agent for each.
    pub async fn start(
        server: &Server,
        dir: &Path,
        prefix: &str,
        count: usize,
    ) -> anyhow::Result<Self> {
        let activation = server
            .client()?
            .create_activation(&drover_api::CreateActivation {
                registration_limit: i64::try_from(count)?,
                expires_in_secs: 3600,
                tags: Default::default(),
                description: "test fleet".into(),
                default_name: String::new(),
            })
            .await?;
        let activation = Arc::new(activation);
        let base = drover_agent::inventory::collect();
        let names: Vec<String> = (1..=count).map(|i| format!("{prefix}{i:04}")).collect();
        let registered: Vec<(String, String)> = futures::stream::iter(names)
            .map(|name| {
                let activation = activation.clone();
                let opts = RegisterOptions {
                    server: server.url.clone(),
                    activation_id: activation.id.clone(),
                    activation_code: activation.code.clone(),
                    ca_fingerprint: Some(server.fingerprint.clone()),
                    name: name.clone(),
                    tags: Default::default(),
                    state_dir: dir.join(&name),
                    proxy: None,
                };
                let inventory = drover_proto::Inventory {
                    hostname: name.clone(),
                    ..base.clone()
                };
                async move {
                    let identity = drover_agent::register(opts, inventory)
                        .await
                        .with_context(|| format!("registering {name}"))?;
                    anyhow::Ok((name, identity.state.node_id))
                }
            })
            // Ordered, so that `ids` follows the names.
            .buffered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut ids = Vec::new();
        for (name, id) in registered {
            let mut config = AgentConfig::new(dir.join(&name));
            config.inventory = InventorySource::Fixed(drover_proto::Inventory {
                hostname: name,
                ..base.clone()
            });
            // Never the machine: a "reboot" restarts the agent.
            config.reboot = RebootMode::RestartAgent;
            let cancel = cancel.child_token();
            tasks.spawn(async move {
                // Like a service supervisor: an agent that ends on its own is started again.
                while !cancel.is_cancelled() {
                    let _ = drover_agent::run(config.clone(), cancel.clone(), None).await;
                }
            });
            ids.push(id);
        }
        Ok(Self { ids, cancel, tasks })
    }

    /// Stops every agent and waits for them.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
