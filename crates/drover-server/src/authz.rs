//! Authorization, decided in one place. Every API handler calls [`authorize`] with the
//! principal and the action before touching the store. Deny by default: only what is listed
//! here is allowed. (A later issue replaces the body with Cedar policies over the same calls.)

use crate::api::ApiError;

/// Who is asking: the holder of an API token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: String,
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    /// May read the fleet, change nothing.
    Viewer,
    /// A role name this server does not know: allowed nothing.
    Unknown,
}

impl Role {
    pub fn parse(s: &str) -> Self {
        match s {
            "admin" => Role::Admin,
            "viewer" => Role::Viewer,
            _ => Role::Unknown,
        }
    }
}

/// Everything the API lets a principal do. The permission table test walks every variant
/// (derived, so an action added without a decision cannot hide from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumIter)]
pub enum Action {
    ListNodes,
    ReadNode,
    TagNode,
    DeregisterNode,
    CreateActivation,
    ListActivations,
    ReadMetrics,
    ReadDocument,
    WriteDocument,
    SendCommand,
    ReadCommand,
    CancelCommand,
    StartSession,
    ReadSession,
    ReadSessionRecording,
    TerminateSession,
    /// A short-lived SSH user certificate, to log in through an SSH session.
    IssueSshCertificate,
}

impl Action {
    fn is_read_only(self) -> bool {
        matches!(
            self,
            Action::ListNodes
                | Action::ReadNode
                | Action::ListActivations
                | Action::ReadMetrics
                | Action::ReadDocument
                | Action::ReadCommand
                | Action::ReadSession
        )
    }
}

/// Allows or denies `action` for `who`.
pub fn authorize(who: &Principal, action: Action) -> Result<(), ApiError> {
    let allowed = match who.role {
        Role::Admin => true,
        Role::Viewer => action.is_read_only(),
        Role::Unknown => false,
    };
    if allowed {
        Ok(())
    } else {
        tracing::info!(token = %who.token_id, ?action, "denied");
        Err(ApiError::Forbidden(format!(
            "token {:?} may not {:?}",
            who.name, action
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes every role x action decision, so that a change of policy shows up in review and
    /// an action added without a decision fails here.
    #[test]
    fn permission_table() {
        let mut table = String::new();
        for role in [Role::Admin, Role::Viewer, Role::Unknown] {
            for action in <Action as strum::IntoEnumIterator>::iter() {
                let who = Principal {
                    token_id: "t".into(),
                    name: "n".into(),
                    role,
                };
                let verdict = if authorize(&who, action).is_ok() {
                    "allow"
                } else {
                    "deny"
                };
                table.push_str(&format!("{role:?} {action:?} {verdict}\n"));
            }
        }
        let expected = "\
Admin ListNodes allow
Admin ReadNode allow
Admin TagNode allow
Admin DeregisterNode allow
Admin CreateActivation allow
Admin ListActivations allow
Admin ReadMetrics allow
Admin ReadDocument allow
Admin WriteDocument allow
Admin SendCommand allow
Admin ReadCommand allow
Admin CancelCommand allow
Admin StartSession allow
Admin ReadSession allow
Admin ReadSessionRecording allow
Admin TerminateSession allow
Admin IssueSshCertificate allow
Viewer ListNodes allow
Viewer ReadNode allow
Viewer TagNode deny
Viewer DeregisterNode deny
Viewer CreateActivation deny
Viewer ListActivations allow
Viewer ReadMetrics allow
Viewer ReadDocument allow
Viewer WriteDocument deny
Viewer SendCommand deny
Viewer ReadCommand allow
Viewer CancelCommand deny
Viewer StartSession deny
Viewer ReadSession allow
Viewer ReadSessionRecording deny
Viewer TerminateSession deny
Viewer IssueSshCertificate deny
Unknown ListNodes deny
Unknown ReadNode deny
Unknown TagNode deny
Unknown DeregisterNode deny
Unknown CreateActivation deny
Unknown ListActivations deny
Unknown ReadMetrics deny
Unknown ReadDocument deny
Unknown WriteDocument deny
Unknown SendCommand deny
Unknown ReadCommand deny
Unknown CancelCommand deny
Unknown StartSession deny
Unknown ReadSession deny
Unknown ReadSessionRecording deny
Unknown TerminateSession deny
Unknown IssueSshCertificate deny
";
        assert_eq!(table, expected);
    }
}
