//! The control plane: one HTTPS port that serves the REST API, the agent endpoint, `/healthz`
//! and `/metrics`; the registry of connected agents; enrollment and the node registry.
//!
//! **Architecture Invariant:** every API handler authorizes (through [`authz`]) before it
//! touches the store. **Architecture Invariant:** the server never connects to a node; nodes
//! dial in, and everything to a node rides on its one tunnel.

mod accounts;
pub mod admission;
mod agent_settings;
pub mod agents;
mod api;
mod assoc;
pub mod audit;
pub mod authz;
mod commands;
mod config;
mod console;
mod datadir;
mod e2e;
mod error;
mod inventory;
mod listener;
mod metrics;
mod oidc;
mod registry;
mod renewal;
mod retention;
mod sealing;
mod secrets;
pub mod sessions;
mod webhooks;
mod windows;

use std::future::Future;
use std::sync::Arc;

pub use config::{OidcConfig, ServerConfig, DEFAULT_LISTEN};
pub use datadir::DataDir;
pub use error::ServerError;
pub use registry::Registry;
pub use retention::RetentionPolicy;

use drover_store::Store;

/// Shared state of a running server.
pub struct AppState {
    pub config: ServerConfig,
    pub store: Arc<dyn Store>,
    pub ca: drover_pki::CertificateAuthority,
    pub ssh_ca: drover_pki::SshCa,
    pub registry: Registry,
    pub metrics: metrics::Metrics,
    pub commands: commands::Commands,
    pub sessions: sessions::Sessions,
    pub admission: Arc<admission::Admission>,
    pub authz: authz::Authz,
    /// The tamper-evident log of everything done (`audit.rs`).
    pub audit: Arc<audit::Audit>,
    /// Seals secrets at rest with the data directory's master key.
    pub sealer: Arc<sealing::Sealer>,
    /// Posts the audit log's events to operators' endpoints.
    pub webhooks: Arc<webhooks::Webhooks>,
    /// Every change to Parameter Store (a count, and the parameter changed): agents whose
    /// settings live there read them again.
    pub param_changes: tokio::sync::watch::Sender<(u64, String)>,
    /// State Manager's scheduler, woken by changes (`assoc/`).
    pub assoc: assoc::Scheduler,
    /// Federated login, when an identity provider is configured.
    pub oidc: Option<oidc::Oidc>,
    /// Requests that read the whole fleet at once (the console's node table) run a few at a
    /// time, so that many of them cannot hold the store from everything else.
    pub fleet_scans: Arc<tokio::sync::Semaphore>,
}

/// Whole-fleet reads at once (see `AppState::fleet_scans`).
const FLEET_SCANS: usize = 2;

/// Creates `SessionManagerRunShell` with the default preferences on first start, so that
/// operators change them by updating it (`drover docs update`).
async fn seed_session_preferences(store: &dyn Store, now: i64) -> Result<(), ServerError> {
    let (name, text) = commands::resolve::SESSION_PREFERENCES;
    if store.get_document(name, None).await?.is_some() {
        return Ok(());
    }
    let doc = drover_store::DocumentVersion {
        name: name.to_string(),
        version: 1,
        content: text.to_string(),
        format: "YAML".into(),
        description: commands::resolve::describe(text),
        created_at: now,
        is_default: true,
        latest_version: 1,
    };
    match store.create_document(&doc).await {
        Ok(_) | Err(drover_store::StoreError::Conflict(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A server whose data directory is ready; [`Server::serve`] runs it.
pub struct Server {
    state: Arc<AppState>,
    tls: Arc<rustls::ServerConfig>,
    presence: registry::PresenceWriter,
    updates: commands::UpdateWriter,
    data: DataDir,
}

impl Server {
    /// Opens the data directory, creating on first start the database, the CA, the server
    /// certificate and the admin token.
    pub async fn open(config: ServerConfig) -> Result<Self, ServerError> {
        for e in &config.forward_deny {
            if e.parse::<ipnet::IpNet>().is_err() && e.parse::<std::net::IpAddr>().is_err() {
                return Err(ServerError::Config(format!(
                    "forward deny entry {e:?} is not a network (CIDR, like 10.0.0.0/8) or an address"
                )));
            }
        }
        let data = DataDir::open(&config).await?;
        let now = secrets::now();
        let reset = data.store.mark_all_disconnected(now).await?;
        if reset > 0 {
            tracing::info!(
                nodes = reset,
                "marked nodes from the previous run as ConnectionLost"
            );
        }
        let metrics = metrics::Metrics::new();
        let (registry, presence) = Registry::new(data.store.clone(), metrics.clone());
        let tls = listener::tls_config(&config, &data)?;
        let sealer = Arc::new(data.sealer().await?);
        let (commands, updates) = commands::Commands::new(
            data.store.clone(),
            registry.clone(),
            metrics.clone(),
            sealer.clone(),
        );
        commands.resume().await?;
        let ended = data
            .store
            .end_open_sessions(now, "the server restarted")
            .await?;
        if ended > 0 {
            tracing::info!(sessions = ended, "ended the sessions of the previous run");
        }
        let audit = Arc::new(audit::Audit::new(data.store.clone(), data.audit_key()?));
        let webhooks = Arc::new(webhooks::Webhooks::new(
            data.store.clone(),
            sealer.clone(),
            data.server_id()?,
            audit.appended(),
            &config.forward_deny,
        )?);
        let sessions = sessions::Sessions::new(
            data.store.clone(),
            audit.clone(),
            registry.clone(),
            metrics.clone(),
            Arc::new(sessions::recording::DirRecordings::new(
                data.path.join("recordings"),
            )),
            config.forward_deny.clone(),
            data.load_ca()?.cert_der()?.to_vec(),
        );
        seed_session_preferences(data.store.as_ref(), now).await?;
        let oidc = config.oidc.clone().map(oidc::Oidc::new).transpose()?;
        let state = Arc::new(AppState {
            fleet_scans: Arc::new(tokio::sync::Semaphore::new(FLEET_SCANS)),
            admission: admission::Admission::new(config.limits.clone()),
            config,
            store: data.store.clone(),
            ca: data.load_ca()?,
            ssh_ca: data.ssh_ca()?,
            registry,
            metrics,
            commands,
            sessions,
            authz: authz::Authz::new(data.store.clone()),
            audit,
            sealer,
            webhooks,
            assoc: assoc::Scheduler::default(),
            param_changes: tokio::sync::watch::Sender::new((0, String::new())),
            oidc,
        });
        Ok(Self {
            state,
            tls,
            presence,
            updates,
            data,
        })
    }

    /// The SHA-256 fingerprint of the agent CA, which agents and the CLI pin.
    pub fn ca_fingerprint(&self) -> &str {
        &self.data.ca_fingerprint
    }

    pub fn data_dir(&self) -> &DataDir {
        &self.data
    }

    /// Serves on `listener` (which the caller bound, so tests can use port 0) until `shutdown`
    /// resolves; then stops accepting, says goodbye to every agent and flushes the store.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let Server {
            state,
            tls,
            presence,
            updates,
            ..
        } = self;
        let stop_pruning = tokio_util::sync::CancellationToken::new();
        let pruning = tokio::spawn(retention::run(
            state.store.clone(),
            state.sessions.recordings().clone(),
            state.config.retention.clone(),
            state.metrics.clone(),
            stop_pruning.clone(),
        ));
        let signing = tokio::spawn({
            let (state, stop) = (state.clone(), stop_pruning.clone());
            async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(audit::CHECKPOINT_EVERY) => {}
                        _ = stop.cancelled() => return,
                    }
                    if let Err(e) = state.audit.checkpoint().await {
                        tracing::warn!(error = %e, "could not store an audit checkpoint");
                    }
                }
            }
        });
        let expiring = tokio::spawn({
            let (state, stop) = (state.clone(), stop_pruning.clone());
            async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => return,
                    }
                    if let Err(e) = api::expire_due(&state).await {
                        tracing::warn!(error = %e, "could not expire access grants");
                    }
                }
            }
        });
        let delivering = tokio::spawn(state.webhooks.clone().run(stop_pruning.clone()));
        let scheduling = tokio::spawn(assoc::run(state.clone(), stop_pruning.clone()));
        listener::serve(state.clone(), tls, listener, shutdown).await;
        state.sessions.shutdown().await;
        stop_pruning.cancel();
        let _ = pruning.await;
        let _ = signing.await;
        let _ = expiring.await;
        let _ = delivering.await;
        let _ = scheduling.await;
        // The head at shutdown is signed: a later rewrite of anything before it shows.
        if let Err(e) = state.audit.checkpoint().await {
            tracing::warn!(error = %e, "could not store an audit checkpoint");
        }
        state.commands.shutdown(state.config.shutdown_grace).await;
        updates.finish().await;
        state.registry.close_all();
        presence.finish().await;
        let now = secrets::now();
        state.store.mark_all_disconnected(now).await?;
        tracing::info!("server stopped");
        Ok(())
    }
}
