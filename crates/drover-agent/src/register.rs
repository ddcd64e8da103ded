//! `drover agent register`: generate a key on the node, redeem the activation with a CSR, and
//! keep the certificate the server issues, trusting the server by a pinned CA fingerprint.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_api::{InventoryView, RegisterRequest};
use drover_pki::{CaptureChain, NodeKey};
use drover_tunnel::dial::{self, Endpoint};

use crate::identity::{AgentState, Identity};
use crate::AgentError;

pub struct RegisterOptions {
    pub server: String,
    pub activation_id: String,
    pub activation_code: String,
    /// The pinned fingerprint; `None` asks `confirm` about the one the server presents.
    pub ca_fingerprint: Option<String>,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub state_dir: PathBuf,
    pub proxy: Option<Endpoint>,
}

/// Connects without trusting, to show the fingerprints of the chain the server presents (leaf
/// first). The handshake is aborted before anything is sent.
pub async fn fetch_chain_fingerprints(
    server: &str,
    proxy: Option<&Endpoint>,
) -> Result<Vec<String>, AgentError> {
    let target = Endpoint::parse(server, 443)?;
    let provider = drover_pki::crypto_provider();
    let capture = Arc::new(CaptureChain::new(provider.clone()));
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Untrusted(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    // The handshake fails by design once the chain is captured.
    let _ = dial::dial(&target, proxy, Arc::new(cfg), Duration::from_secs(15)).await;
    let chain = capture.chain();
    if chain.is_empty() {
        return Err(AgentError::Untrusted(format!(
            "could not read the certificate chain of {server}: is it a Drover server?"
        )));
    }
    Ok(chain.iter().map(|c| drover_pki::fingerprint(c)).collect())
}

/// Registers this node and saves its identity in the state directory.
pub async fn register(
    opts: RegisterOptions,
    inventory: drover_proto::Inventory,
) -> Result<Identity, AgentError> {
    let fingerprint = match &opts.ca_fingerprint {
        Some(f) => drover_pki::normalize_fingerprint(f)?,
        None => {
            return Err(AgentError::Untrusted(
                "no CA fingerprint given: pass --ca-fingerprint".into(),
            ))
        }
    };
    let key = NodeKey::generate()?;
    let client = drover_client::Client::new(&opts.server, &fingerprint, None)?;
    let resp = client
        .register(&RegisterRequest {
            activation_id: opts.activation_id.clone(),
            activation_code: opts.activation_code.clone(),
            csr_pem: key.csr_pem.clone(),
            name: opts.name.clone(),
            tags: opts.tags.clone(),
            inventory: InventoryView {
                hostname: inventory.hostname,
                platform: inventory.platform,
                os_name: inventory.os_name,
                os_version: inventory.os_version,
                kernel: inventory.kernel,
                arch: inventory.arch,
                agent_version: inventory.agent_version,
                ip_addresses: inventory.ip_addresses,
                boot_time: None,
            },
        })
        .await?;
    let state = AgentState {
        server: client.base_url().to_string(),
        node_id: resp.node_id,
        ca_fingerprint: fingerprint,
    };
    Identity::save(
        &opts.state_dir,
        &state,
        &resp.cert_pem,
        &key.key_pem,
        Some(&resp.ca_pem),
    )
}
