//! Every action of the API, in one table: its name in policies, what it applies to, and what
//! it means. The Cedar schema declares the same actions; a test checks that the two agree.

/// What an action is taken on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Node,
    Command,
    Session,
    Document,
    /// A Parameter Store parameter, by name.
    Parameter,
    /// The control plane itself (users, policies, metrics, activations).
    Server,
    /// A user, as the owner of API tokens.
    User,
}

macro_rules! actions {
    ($($name:ident: $kind:ident, $what:literal;)*) => {
        /// Everything a principal may be allowed to do. `strum` derives the iteration, so the
        /// permission table and the schema check cannot miss an action added here.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            strum::EnumIter, strum::EnumString, strum::IntoStaticStr, strum::Display,
        )]
        pub enum Action {
            $(#[doc = $what] $name,)*
        }

        impl Action {
            /// The kind of resource the action is decided on.
            pub fn resource(self) -> ResourceKind {
                match self {
                    $(Action::$name => ResourceKind::$kind,)*
                }
            }

            /// What the action allows, in words.
            pub fn describe(self) -> &'static str {
                match self {
                    $(Action::$name => $what,)*
                }
            }
        }
    };
}

actions! {
    ReadNode: Node, "see a node: in listings, its details and inventory";
    TagNode: Node, "add, change or remove a node's tags";
    DeregisterNode: Node, "deregister a node (its agent stops for good)";
    SendCommand: Node, "send a command to a node, with a given document";
    ReadOutput: Node, "read a command's output from a node";
    StartSession: Node, "start a session on a node (shell, command, port forwarding, SSH)";
    ReadCommand: Command, "see a command and its per-node status";
    CancelCommand: Command, "cancel a command";
    ReadSession: Session, "see a session and its history";
    TerminateSession: Session, "end a session";
    ReplaySession: Session, "read a session's recording";
    ReadDocument: Document, "read a document";
    CreateDocument: Document, "create a document";
    UpdateDocument: Document, "add a version to a document or change its default";
    DeleteDocument: Document, "delete a document";
    ReadSecrets: Document, "see the values of the parameters a document marks sensitive";
    CreateActivation: Server, "create activation codes that register nodes";
    ListActivations: Server, "list activations";
    ReadMetrics: Server, "read the Prometheus metrics";
    IssueSshCertificate: Server, "get a short-lived SSH certificate for an SSH session";
    ReadUsers: Server, "list and see users and groups";
    ManageUsers: Server, "create, change, disable and delete users and groups";
    ReadPolicies: Server, "read policies and check decisions";
    ManagePolicies: Server, "create, change and delete policies";
    ReadAudit: Server, "read, verify and export the audit log";
    ManageWebhooks: Server, "create, list, test and delete webhooks, and read their delivery logs";
    ManageChangeWindows: Server, "create, list and delete change windows";
    ReadAssociations: Server, "see State Manager associations, their executions and compliance";
    ManageAssociations: Server, "create, change, run and delete associations (each application sends its command with its owner's permissions, checked again each time)";
    ReadParameter: Parameter, "see a parameter: its name, type, versions, labels, and the value of a String or StringList";
    DecryptParameter: Parameter, "see a SecureString's value";
    PutParameter: Parameter, "create a parameter, add a version, label versions";
    DeleteParameter: Parameter, "delete a parameter and its versions";
    RequestAccess: Node, "ask for temporary access to a node (granted once approved)";
    ApproveAccess: Node, "approve, deny or revoke others' requests for access to a node";
    ManageTokens: User, "create, list and revoke a user's API tokens";
}

impl Action {
    /// Actions that change nothing: a token scoped to `read` gets these.
    pub fn is_read_only(self) -> bool {
        matches!(
            self,
            Action::ReadNode
                | Action::ReadOutput
                | Action::ReadCommand
                | Action::ReadSession
                | Action::ReadDocument
                | Action::ListActivations
                | Action::ReadMetrics
                | Action::ReadUsers
                | Action::ReadPolicies
                | Action::ReadAudit
                | Action::ReadParameter
                | Action::ReadAssociations
        )
    }

    pub fn all() -> impl Iterator<Item = Action> {
        <Action as strum::IntoEnumIterator>::iter()
    }

    pub fn name(self) -> &'static str {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for a in Action::all() {
            assert_eq!(a.name().parse::<Action>().ok(), Some(a));
        }
        assert!("readnode".parse::<Action>().is_err());
    }
}
