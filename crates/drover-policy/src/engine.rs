//! The policy engine: the stored policy files, parsed and validated against the schema, and
//! decisions over them.

use std::collections::HashMap;

use cedar_policy::{
    Authorizer, Entities, PolicyId, PolicySet, Request, Schema, ValidationMode, Validator,
};

use crate::facts::{uid, Context, NodeFacts, Resource, UserFacts};
use crate::reads::NodeReads;
use crate::{Action, PolicyError, Problem};

/// The schema every policy is validated against, checked into the repository.
pub const SCHEMA: &str = include_str!("../schema/drover.cedarschema");

/// One stored policy file: a name and Cedar text that may hold several policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    pub name: String,
    pub text: String,
}

/// Allow or deny, with the policies that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The policies that decided (`file/index`, or `file/id` for a policy with an `@id`): the
    /// permits that allowed it, or the forbids that denied it. Empty when nothing applied
    /// (denied by default).
    pub reasons: Vec<String>,
    /// Policies that could not be evaluated for this request (a missing tag, ...): they
    /// counted as not applying.
    pub errors: Vec<String>,
}

pub struct Engine {
    schema: Schema,
    policies: PolicySet,
    /// Cedar's policy IDs are ours already; this keeps them printable for diagnostics.
    names: HashMap<PolicyId, String>,
    /// What each policy can read of a node, for deciding a fan-out once per distinct node.
    reads: HashMap<PolicyId, NodeReads>,
    authorizer: Authorizer,
}

pub fn schema() -> Result<Schema, PolicyError> {
    Schema::from_cedarschema_str(SCHEMA)
        .map(|(s, _warnings)| s)
        .map_err(|e| PolicyError::Internal(format!("the built-in schema: {e}")))
}

/// Line and column (1-based) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Problems from a diagnostic, each at the first label's place in `text`.
fn problems(text: &str, d: &dyn miette::Diagnostic) -> Vec<Problem> {
    let message = match d.help() {
        Some(help) => format!("{d}; {help}"),
        None => d.to_string(),
    };
    let (line, column) = d
        .labels()
        .and_then(|mut l| l.next())
        .map_or((1, 1), |l| line_col(text, l.offset()));
    vec![Problem {
        line,
        column,
        message,
    }]
}

/// Parses one policy file and checks it against the schema. The policies get IDs `name/N`
/// (or `name/ID` with an `@id("ID")` annotation).
pub fn parse(file: &PolicyFile, schema: &Schema) -> Result<PolicySet, PolicyError> {
    let bad = |problems| PolicyError::Invalid {
        name: file.name.clone(),
        problems,
    };
    let parsed: PolicySet = file.text.parse().map_err(|e: cedar_policy::ParseErrors| {
        bad(e.iter().flat_map(|d| problems(&file.text, d)).collect())
    })?;
    if parsed.num_of_templates() > 0 {
        return Err(bad(vec![Problem {
            line: 1,
            column: 1,
            message: "policy templates are not supported; write the policy out".into(),
        }]));
    }
    let mut set = PolicySet::new();
    for (i, p) in parsed.policies().enumerate() {
        // `@approvals("N")`: how many approvers a request for access takes (see the schema).
        if let Some(n) = p.annotation("approvals") {
            if !matches!(n.trim().parse::<u8>(), Ok(1..=10)) {
                return Err(bad(vec![Problem::at_start(format!(
                    "policy {}: @approvals({n:?}) must be a number from 1 to 10",
                    i + 1
                ))]));
            }
        }
        let id = match p.annotation("id") {
            Some(id) => format!("{}/{id}", file.name),
            None => format!("{}/{i}", file.name),
        };
        set.add(p.new_id(PolicyId::new(id)))
            .map_err(|e| bad(vec![Problem::at_start(e.to_string())]))?;
    }
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    let errors: Vec<Problem> = result
        .validation_errors()
        .flat_map(|e| problems(&file.text, e))
        .collect();
    if !errors.is_empty() {
        return Err(bad(errors));
    }
    Ok(set)
}

impl Engine {
    /// Builds the engine from every stored policy file; any invalid file fails it all (the
    /// server refuses invalid files before storing them, so this means a bad database).
    pub fn new(files: &[PolicyFile]) -> Result<Self, PolicyError> {
        let schema = schema()?;
        let mut policies = PolicySet::new();
        let mut names = HashMap::new();
        let mut reads = HashMap::new();
        for file in files {
            for p in parse(file, &schema)?.policies() {
                names.insert(p.id().clone(), p.id().to_string());
                reads.insert(p.id().clone(), NodeReads::of(p));
                policies
                    .add(p.clone())
                    .map_err(|e| PolicyError::Internal(format!("{}: {e}", file.name)))?;
            }
        }
        Ok(Self {
            schema,
            policies,
            names,
            reads,
            authorizer: Authorizer::new(),
        })
    }

    pub fn policy_count(&self) -> usize {
        self.policies.policies().count()
    }

    /// Decides one action on one resource.
    pub fn decide(
        &self,
        who: &UserFacts,
        action: Action,
        resource: &Resource,
        ctx: &Context,
    ) -> Result<Decision, PolicyError> {
        let mut entities = who.entities()?;
        entities.extend(resource.entities(who)?);
        let entities = Entities::from_entities(entities, None)
            .map_err(|e| PolicyError::Internal(format!("entities: {e}")))?;
        self.decide_in(who, action, resource.uid()?, ctx, &entities)
    }

    /// Decides one action on many nodes (a command's fan-out, a node listing). The nodes that
    /// look the same to every policy that can apply (the same values of the tags those
    /// policies read, see `reads.rs`) get one decision between them; when the policies read
    /// a node's identity, or another node, each node is decided on its own, exactly as
    /// [`Engine::decide`] would.
    pub fn decide_nodes(
        &self,
        who: &UserFacts,
        action: Action,
        nodes: &[NodeFacts],
        ctx: &Context,
    ) -> Result<Vec<bool>, PolicyError> {
        let (policies, reads) = self.slice(who, action)?;
        let parts = (who.uid()?, uid("Action", action.name())?, ctx.cedar()?);
        if reads.everything {
            // Each node on its own, with only the user and itself as entities, as `decide` sees
            // it: a policy that reads another node (`Drover::Node::"n-1".hasTag("public")`)
            // must not find that node because it is in the same fan-out or page of a listing.
            let user = who.entities()?;
            return nodes
                .iter()
                .map(|n| {
                    let mut alone = user.clone();
                    alone.push(n.entity()?);
                    let alone = Entities::from_entities(alone, None)
                        .map_err(|e| PolicyError::Internal(format!("entities: {e}")))?;
                    Ok(self
                        .decide_with(&parts, n.uid()?, &alone, &policies)?
                        .allowed)
                })
                .collect();
        }
        // Each node's first look-alike: the node whose decision it shares.
        let first: Vec<usize> = {
            let mut seen = HashMap::new();
            nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let mut key: Vec<Option<&str>> = vec![
                        reads.name.then_some(n.name.as_str()),
                        reads.platform.then_some(n.platform.as_str()),
                        reads.ids.contains(&n.id).then_some(n.id.as_str()),
                    ];
                    if reads.all_tags {
                        for (k, v) in &n.tags {
                            key.extend([Some(k.as_str()), Some(v.as_str())]);
                        }
                    } else {
                        key.extend(reads.tags.iter().map(|k| n.tags.get(k).map(String::as_str)));
                    }
                    *seen.entry(key).or_insert(i)
                })
                .collect()
        };
        let mut entities = who.entities()?;
        for (i, n) in nodes.iter().enumerate() {
            if first.get(i) == Some(&i) {
                entities.push(n.entity()?);
            }
        }
        let entities = Entities::from_entities(entities, None)
            .map_err(|e| PolicyError::Internal(format!("entities: {e}")))?;
        let mut allowed = vec![false; nodes.len()];
        for (i, n) in nodes.iter().enumerate() {
            let decided = match first.get(i) {
                Some(&f) if f == i => {
                    self.decide_with(&parts, n.uid()?, &entities, &policies)?
                        .allowed
                }
                Some(&f) => allowed.get(f).copied().unwrap_or(false),
                None => false,
            };
            if let Some(slot) = allowed.get_mut(i) {
                *slot = decided;
            }
        }
        Ok(allowed)
    }

    /// The policies that can apply to `who` taking `action`: those whose scope names this
    /// principal (itself, one of its groups, or any) and this action (or any). The others
    /// cannot be satisfied whatever their conditions say, so leaving them out changes no
    /// decision; it makes a decision cost what the few relevant policies cost, not all of them.
    ///
    /// Also returns what those policies can read of a node.
    fn slice(
        &self,
        who: &UserFacts,
        action: Action,
    ) -> Result<(PolicySet, NodeReads), PolicyError> {
        use cedar_policy::{ActionConstraint as A, PrincipalConstraint as P};
        let me = who.uid()?;
        let groups = who
            .groups
            .iter()
            .map(|g| uid("Group", g))
            .collect::<Result<Vec<_>, _>>()?;
        let act = uid("Action", action.name())?;
        let member = |u: &cedar_policy::EntityUid| *u == me || groups.contains(u);
        let mut set = PolicySet::new();
        let mut reads = NodeReads::default();
        for p in self.policies.policies() {
            let principal = match p.principal_constraint() {
                P::Any => true,
                P::Is(t) => t == *me.type_name(),
                P::Eq(u) => u == me,
                P::In(u) => member(&u),
                P::IsIn(t, u) => t == *me.type_name() && member(&u),
            };
            let action_ok = match p.action_constraint() {
                A::Any => true,
                A::Eq(a) => a == act,
                A::In(list) => list.contains(&act),
            };
            if principal && action_ok {
                set.add(p.clone())
                    .map_err(|e| PolicyError::Internal(format!("slicing policies: {e}")))?;
                match self.reads.get(p.id()) {
                    Some(r) => reads.union(r),
                    None => reads = NodeReads::everything(),
                }
            }
        }
        Ok((set, reads))
    }

    fn decide_in(
        &self,
        who: &UserFacts,
        action: Action,
        resource: cedar_policy::EntityUid,
        ctx: &Context,
        entities: &Entities,
    ) -> Result<Decision, PolicyError> {
        let (policies, _) = self.slice(who, action)?;
        let parts = (who.uid()?, uid("Action", action.name())?, ctx.cedar()?);
        self.decide_with(&parts, resource, entities, &policies)
    }

    /// One decision from parts made once per call (principal, action, context): a fan-out
    /// makes them once for all its nodes.
    fn decide_with(
        &self,
        (principal, action, ctx): &(
            cedar_policy::EntityUid,
            cedar_policy::EntityUid,
            cedar_policy::Context,
        ),
        resource: cedar_policy::EntityUid,
        entities: &Entities,
        policies: &PolicySet,
    ) -> Result<Decision, PolicyError> {
        let request = Request::new(
            principal.clone(),
            action.clone(),
            resource,
            ctx.clone(),
            None,
        )
        .map_err(|e| PolicyError::Internal(format!("request: {e}")))?;
        let response = self.authorizer.is_authorized(&request, policies, entities);
        let name = |id: &PolicyId| {
            self.names
                .get(id)
                .cloned()
                .unwrap_or_else(|| id.to_string())
        };
        let mut reasons: Vec<String> = response.diagnostics().reason().map(name).collect();
        reasons.sort();
        Ok(Decision {
            allowed: response.decision() == cedar_policy::Decision::Allow,
            reasons,
            errors: response
                .diagnostics()
                .errors()
                .map(|e| e.to_string())
                .collect(),
        })
    }

    /// The value of annotation `key` on the policy a decision names (`file/id`), if any.
    pub fn annotation(&self, policy: &str, key: &str) -> Option<String> {
        let id = self
            .names
            .iter()
            .find(|(_, name)| name.as_str() == policy)
            .map(|(id, _)| id)?;
        self.policies
            .policy(id)?
            .annotation(key)
            .map(str::to_string)
    }

    /// The schema, for callers that validate more than policies.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)] // fixed tables, indexed modulo their length
    use super::*;

    /// Deciding once per look-alike node gives what deciding every node on its own gives,
    /// whether the policies read a few tags, a name, a computed tag or a node's identity.
    #[test]
    fn a_fan_out_decides_as_each_node_would_alone() {
        use std::collections::BTreeMap;
        let sets = [
            r#"permit (principal, action, resource is Drover::Node) when {
                principal.hasTag("department") && resource.hasTag("department") &&
                principal.getTag("department") == resource.getTag("department") };
               forbid (principal, action, resource is Drover::Node) when {
                resource.platform == "macos" && resource.hasTag("Environment") &&
                resource.getTag("Environment") == "Production" };"#,
            r#"permit (principal, action, resource is Drover::Node) when { resource.name like "web-*" };"#,
            r#"permit (principal, action, resource is Drover::Node) when {
                principal.hasTag("department") && resource.hasTag(principal.getTag("department")) };"#,
            r#"permit (principal, action == Drover::Action::"SendCommand", resource == Drover::Node::"n-3");
               permit (principal, action, resource is Drover::Node) when {
                resource.hasTag("Environment") && resource.getTag("Environment") == "Development" };"#,
            r#"permit (principal, action, resource is Drover::Node) when {
                [Drover::Node::"n-4", Drover::Node::"n-9"].contains(resource) };"#,
            // Another node's tag: only that node itself can see it (alone, the others find no
            // such entity and the policy fails to apply), whoever shares the fan-out with it.
            r#"permit (principal, action, resource is Drover::Node) when {
                Drover::Node::"n-5".hasTag("Amber") && resource.name like "db-*" };"#,
        ];
        let nodes: Vec<NodeFacts> = (0..60)
            .map(|i| {
                let mut tags = BTreeMap::new();
                if i % 7 != 0 {
                    tags.insert("department".into(), ["Amber", "Blue"][i % 2].into());
                }
                tags.insert(
                    "Environment".into(),
                    ["Production", "Development", "Staging"][i % 3].into(),
                );
                if i % 5 == 0 {
                    tags.insert("Amber".into(), "yes".into());
                }
                NodeFacts {
                    id: format!("n-{i}"),
                    name: format!("{}-{i}", ["web", "db"][i % 2]),
                    platform: ["linux", "macos"][i % 4 / 3].into(),
                    tags,
                }
            })
            .collect();
        let alice = UserFacts {
            name: "alice".into(),
            source: "local".into(),
            attributes: BTreeMap::from([("department".into(), "Amber".into())]),
            groups: vec![],
        };
        let ctx = Context {
            document: Some("RunShellScript".into()),
            kind: None,
        };
        for text in sets {
            let engine = Engine::new(&[PolicyFile {
                name: "p".into(),
                text: text.into(),
            }])
            .unwrap();
            for action in [Action::SendCommand, Action::ReadNode] {
                let together = engine.decide_nodes(&alice, action, &nodes, &ctx).unwrap();
                let alone: Vec<bool> = nodes
                    .iter()
                    .map(|n| {
                        engine
                            .decide(&alice, action, &Resource::Node(n.clone()), &ctx)
                            .unwrap()
                            .allowed
                    })
                    .collect();
                assert_eq!(together, alone, "{text}");
                assert!(alone.contains(&true) && alone.contains(&false), "{text}");
            }
        }
    }

    #[test]
    fn offsets_become_lines_and_columns() {
        assert_eq!(line_col("abc", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab\n", 99), (2, 1));
    }
}
