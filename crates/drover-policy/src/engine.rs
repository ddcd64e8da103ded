//! The policy engine: the stored policy files, parsed and validated against the schema, and
//! decisions over them.

use std::collections::HashMap;

use cedar_policy::{
    Authorizer, Entities, PolicyId, PolicySet, Request, Schema, ValidationMode, Validator,
};

use crate::facts::{uid, Context, NodeFacts, Resource, UserFacts};
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
        for file in files {
            for p in parse(file, &schema)?.policies() {
                names.insert(p.id().clone(), p.id().to_string());
                policies
                    .add(p.clone())
                    .map_err(|e| PolicyError::Internal(format!("{}: {e}", file.name)))?;
            }
        }
        Ok(Self {
            schema,
            policies,
            names,
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

    /// Decides one action on many nodes (a command's fan-out, a node listing): one set of
    /// entities for all of them, one request per node.
    pub fn decide_nodes(
        &self,
        who: &UserFacts,
        action: Action,
        nodes: &[NodeFacts],
        ctx: &Context,
    ) -> Result<Vec<bool>, PolicyError> {
        let mut entities = who.entities()?;
        for n in nodes {
            entities.push(n.entity()?);
        }
        let entities = Entities::from_entities(entities, None)
            .map_err(|e| PolicyError::Internal(format!("entities: {e}")))?;
        let policies = self.slice(who, action)?;
        let parts = (who.uid()?, uid("Action", action.name())?, ctx.cedar()?);
        nodes
            .iter()
            .map(|n| {
                Ok(self
                    .decide_with(&parts, n.uid()?, &entities, &policies)?
                    .allowed)
            })
            .collect()
    }

    /// The policies that can apply to `who` taking `action`: those whose scope names this
    /// principal (itself, one of its groups, or any) and this action (or any). The others
    /// cannot be satisfied whatever their conditions say, so leaving them out changes no
    /// decision; it makes a decision cost what the few relevant policies cost, not all of them.
    fn slice(&self, who: &UserFacts, action: Action) -> Result<PolicySet, PolicyError> {
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
            }
        }
        Ok(set)
    }

    fn decide_in(
        &self,
        who: &UserFacts,
        action: Action,
        resource: cedar_policy::EntityUid,
        ctx: &Context,
        entities: &Entities,
    ) -> Result<Decision, PolicyError> {
        let policies = self.slice(who, action)?;
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

    /// The schema, for callers that validate more than policies.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        assert_eq!(line_col("abc", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab\n", 99), (2, 1));
    }
}
