//! What a decision knows about the principal and the resource, and how it becomes Cedar
//! entities. The server fills these from the store; nothing here reads anything.

use std::collections::BTreeMap;

use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};

use crate::PolicyError;

/// A user, as decisions see them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserFacts {
    pub name: String,
    /// `local` or `oidc`.
    pub source: String,
    /// Attributes (`department=Amber`): the user entity's tags.
    pub attributes: BTreeMap<String, String>,
    pub groups: Vec<String>,
}

/// A node, as decisions see them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub id: String,
    pub name: String,
    pub platform: String,
    pub tags: BTreeMap<String, String>,
}

/// What an action is taken on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Node(NodeFacts),
    Command {
        id: String,
        sender: String,
        document: String,
    },
    Session {
        id: String,
        owner: String,
        node: NodeFacts,
        document: String,
        kind: String,
    },
    Document {
        name: String,
    },
    /// A parameter, by its hierarchical name: `resource.name like "/app/prod/*"`.
    Parameter {
        name: String,
    },
    Server,
    /// A user, as the owner of API tokens.
    User {
        name: String,
    },
}

/// The request's context: the document a command or session uses, and a session's kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    pub document: Option<String>,
    pub kind: Option<String>,
}

/// The entity types, parsed once: parsing a name runs Cedar's parser, which would otherwise
/// be most of a decision's cost.
static TYPES: std::sync::LazyLock<std::collections::HashMap<&'static str, EntityTypeName>> =
    std::sync::LazyLock::new(|| {
        [
            "User",
            "Group",
            "Node",
            "Document",
            "Parameter",
            "Command",
            "Session",
            "Server",
            "Action",
        ]
        .into_iter()
        .filter_map(|k| Some((k, format!("Drover::{k}").parse().ok()?)))
        .collect()
    });

pub(crate) fn uid(kind: &str, id: &str) -> Result<EntityUid, PolicyError> {
    let ty = TYPES
        .get(kind)
        .cloned()
        .ok_or_else(|| PolicyError::Internal(format!("no entity type {kind}")))?;
    let eid: EntityId = id
        .parse()
        .map_err(|e| PolicyError::Internal(format!("entity id {id:?}: {e}")))?;
    Ok(EntityUid::from_type_name_and_id(ty, eid))
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_string())
}

fn entity(
    uid: EntityUid,
    attrs: Vec<(&str, RestrictedExpression)>,
    parents: Vec<EntityUid>,
    tags: &BTreeMap<String, String>,
) -> Result<Entity, PolicyError> {
    Entity::new_with_tags(
        uid,
        attrs.into_iter().map(|(k, v)| (k.to_string(), v)),
        parents,
        tags.iter().map(|(k, v)| (k.clone(), string(v))),
    )
    .map_err(|e| PolicyError::Internal(format!("building an entity: {e}")))
}

impl UserFacts {
    pub(crate) fn uid(&self) -> Result<EntityUid, PolicyError> {
        uid("User", &self.name)
    }

    /// The user and its groups.
    pub(crate) fn entities(&self) -> Result<Vec<Entity>, PolicyError> {
        let groups = self
            .groups
            .iter()
            .map(|g| uid("Group", g))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = vec![entity(
            self.uid()?,
            vec![
                ("name", string(&self.name)),
                ("source", string(&self.source)),
            ],
            groups.clone(),
            &self.attributes,
        )?];
        out.extend(
            groups
                .into_iter()
                .map(|g| Entity::new_no_attrs(g, Default::default())),
        );
        Ok(out)
    }
}

impl NodeFacts {
    pub(crate) fn uid(&self) -> Result<EntityUid, PolicyError> {
        uid("Node", &self.id)
    }

    pub(crate) fn entity(&self) -> Result<Entity, PolicyError> {
        entity(
            self.uid()?,
            vec![
                ("name", string(&self.name)),
                ("platform", string(&self.platform)),
            ],
            Vec::new(),
            &self.tags,
        )
    }
}

impl Resource {
    pub(crate) fn uid(&self) -> Result<EntityUid, PolicyError> {
        match self {
            Resource::Node(n) => n.uid(),
            Resource::Command { id, .. } => uid("Command", id),
            Resource::Session { id, .. } => uid("Session", id),
            Resource::Document { name } => uid("Document", name),
            Resource::Parameter { name } => uid("Parameter", name),
            Resource::Server => uid("Server", "drover"),
            Resource::User { name } => uid("User", name),
        }
    }

    /// The resource's entities (a session brings its node along). A `User` resource that is
    /// the principal itself is already among the principal's entities.
    pub(crate) fn entities(&self, principal: &UserFacts) -> Result<Vec<Entity>, PolicyError> {
        let none = BTreeMap::new();
        Ok(match self {
            Resource::Node(n) => vec![n.entity()?],
            Resource::Command {
                sender, document, ..
            } => vec![entity(
                self.uid()?,
                vec![("sender", string(sender)), ("document", string(document))],
                Vec::new(),
                &none,
            )?],
            Resource::Session {
                owner,
                node,
                document,
                kind,
                ..
            } => vec![
                entity(
                    self.uid()?,
                    vec![
                        ("owner", string(owner)),
                        ("node", RestrictedExpression::new_entity_uid(node.uid()?)),
                        ("document", string(document)),
                        ("kind", string(kind)),
                    ],
                    Vec::new(),
                    &none,
                )?,
                node.entity()?,
            ],
            Resource::Document { name } | Resource::Parameter { name } => vec![entity(
                self.uid()?,
                vec![("name", string(name))],
                Vec::new(),
                &none,
            )?],
            Resource::Server => vec![Entity::new_no_attrs(self.uid()?, Default::default())],
            Resource::User { name } if *name == principal.name => Vec::new(),
            Resource::User { name } => vec![entity(
                self.uid()?,
                vec![("name", string(name)), ("source", string(""))],
                Vec::new(),
                &none,
            )?],
        })
    }
}

impl Context {
    pub(crate) fn cedar(&self) -> Result<cedar_policy::Context, PolicyError> {
        let pairs = [("document", &self.document), ("kind", &self.kind)]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), string(v))));
        cedar_policy::Context::from_pairs(pairs)
            .map_err(|e| PolicyError::Internal(format!("building a context: {e}")))
    }
}
