//! Reaching a live session: its owner attaching (a WebSocket, or a port session's multiplexed
//! connection), and ending it (terminate, its user disabled or deleted, its token revoked).

use axum::extract::ws::WebSocket;
use tokio::sync::mpsc;

use super::{forward, Attach, Sessions};
use crate::api::ApiError;
use crate::authz::Principal;

impl Sessions {
    /// Hands a client's WebSocket to the session's broker. Only the session's owner attaches.
    pub fn attach_check(
        &self,
        id: &str,
        who: &Principal,
    ) -> Result<mpsc::Sender<WebSocket>, ApiError> {
        match self.owned(id, who)? {
            Attach::Stream(tx) => Ok(tx),
            Attach::Mux(_) => Err(ApiError::BadRequest(format!(
                "session {id} is a port session: attach to /api/v1/sessions/{id}/tunnel"
            ))),
        }
    }

    /// Hands a client's multiplexed connection to a port session's broker.
    pub fn attach_mux_check(
        &self,
        id: &str,
        who: &Principal,
    ) -> Result<mpsc::Sender<forward::ClientIo>, ApiError> {
        match self.owned(id, who)? {
            Attach::Mux(tx) => Ok(tx),
            Attach::Stream(_) => Err(ApiError::BadRequest(format!(
                "session {id} is not a port session: attach to /api/v1/sessions/{id}/stream"
            ))),
        }
    }

    /// The live session's way in, for its owner only.
    fn owned(&self, id: &str, who: &Principal) -> Result<Attach, ApiError> {
        let mut live = self.live();
        let Some(l) = live.get_mut(id) else {
            return Err(ApiError::Conflict(format!(
                "session {id} is not live (it ended, or never existed)"
            )));
        };
        if l.owner != who.user.name {
            return Err(ApiError::Forbidden(format!(
                "session {id} belongs to someone else"
            )));
        }
        if l.token != who.token_id && !l.attached.contains(&who.token_id) {
            l.attached.push(who.token_id.clone());
        }
        Ok(l.attach.clone())
    }

    /// Ends a live session; the user sees who ended it.
    pub async fn terminate(&self, id: &str, who: &Principal) -> Result<(), ApiError> {
        let tx = self.live().get(id).map(|l| l.terminate.clone());
        let Some(tx) = tx else {
            return Err(ApiError::Conflict(format!("session {id} is not live")));
        };
        self.event(id, "terminate_requested", &who.user.name, "", "")
            .await;
        let _ = tx
            .send(format!("the session was terminated by {}", who.user.name))
            .await;
        Ok(())
    }

    /// Ends every live session of `user` (disabled or deleted): its sessions end at once.
    pub async fn end_for_user(&self, user: &str, why: &str) -> usize {
        self.end_where(|l| l.owner == user, why).await
    }

    /// Ends every live session started with the token `token_id` (revoked, or logged out of).
    pub async fn end_for_token(&self, token_id: &str, why: &str) -> usize {
        self.end_where(
            |l| l.token == token_id || l.attached.iter().any(|t| t == token_id),
            why,
        )
        .await
    }

    /// A session that started under a grant which ended while it was starting (after the
    /// check, before it was live, where `end_for_grant` could not see it) ends now.
    pub(super) async fn recheck_grant(&self, id: &str, grant: Option<&str>) {
        let Some(grant) = grant else { return };
        let live = match self.store.get_access_request(grant).await {
            Ok(Some(r)) => r.is_live(crate::secrets::now()),
            _ => false,
        };
        if !live {
            let tx = self.live().get(id).map(|l| l.terminate.clone());
            if let Some(tx) = tx {
                let _ = tx
                    .send(format!(
                        "access request {grant} ended as the session started"
                    ))
                    .await;
            }
        }
    }

    /// Ends every live session running under the access request `id` (revoked, or expired).
    pub async fn end_for_grant(&self, id: &str, why: &str) -> usize {
        self.end_where(|l| l.grant.as_deref() == Some(id), why)
            .await
    }

    async fn end_where(&self, which: impl Fn(&super::Live) -> bool, why: &str) -> usize {
        let ends: Vec<_> = self
            .live()
            .values()
            .filter(|l| which(l))
            .map(|l| l.terminate.clone())
            .collect();
        for tx in &ends {
            let _ = tx.send(why.to_string()).await;
        }
        ends.len()
    }
}
