//! Node certificate renewal over the control stream.

use std::time::Duration;

use drover_proto::{CertificateIssued, Message};
use drover_store::NodeId;

use crate::AppState;

/// Signs a renewal and records it, at most once per [`renewal_interval`]: a node that asks
/// more often is broken or hostile, and each certificate would be one more to retire.
pub async fn renew(state: &AppState, node_id: &NodeId, csr_pem: &str) -> Message {
    let failed = |message: String| Message::Error {
        code: "renewal_failed".into(),
        message,
    };
    let lifetime = state.config.agent_cert_lifetime;
    let (cert_pem, not_after) = match state.ca.sign_node_csr(csr_pem, node_id.as_str(), lifetime) {
        Ok(issued) => issued,
        Err(e) => return failed(e.to_string()),
    };
    let fingerprint = match drover_pki::cert_fingerprint_pem(&cert_pem) {
        Ok(fp) => fp,
        Err(e) => return failed(format!("reading the certificate just issued: {e}")),
    };
    let now = crate::secrets::now();
    let interval = renewal_interval(lifetime);
    match state
        .store
        .certificate_issued(node_id, &fingerprint, now, interval)
        .await
    {
        Ok(Ok(())) => {
            tracing::info!(node = %node_id, "renewed the agent certificate");
            Message::CertificateIssued(CertificateIssued {
                cert_pem,
                not_after,
            })
        }
        Ok(Err(too_soon)) => {
            tracing::warn!(node = %node_id, reason = %too_soon, "refused a renewal");
            failed(format!("renewal refused: {too_soon}"))
        }
        Err(e) => failed(format!("the server could not record the renewal: {e}")),
    }
}

/// The shortest time between two renewals of one node: a sixth of the certificate lifetime, at
/// most an hour. Agents renew after two thirds of it, so one whose renewal was lost (a reply
/// that never arrived, a save that failed) can try twice more before the certificate expires.
fn renewal_interval(lifetime: Duration) -> i64 {
    i64::try_from((lifetime / 6).min(Duration::from_secs(3600)).as_secs()).unwrap_or(3600)
}
