//! What of a node a policy can read: which tags (by literal key), its name, its platform, or
//! anything at all (its identity, a tag whose key is computed, another node).
//!
//! A fan-out decides one action for one principal on many nodes. When the policies that can
//! apply read only a few tags, every node with the same values of those tags gets the same
//! decision, so the engine decides once per distinct combination rather than once per node
//! (a fleet has thousands of nodes but few distinct `department`/`Environment` pairs). The
//! analysis is conservative: whatever it does not recognise as a plain read of the resource
//! makes the policy read "everything", and the engine then decides node by node.

use std::collections::BTreeSet;

use cedar_policy::{Policy, ResourceConstraint};
use serde_json::Value;

/// The parts of a node that a set of policies may read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NodeReads {
    /// The node as a whole (its ID, or something the analysis cannot bound): decide per node.
    pub everything: bool,
    pub name: bool,
    pub platform: bool,
    /// Tags read by a literal key, present or absent.
    pub tags: BTreeSet<String>,
    /// Some tag whose key is computed (`resource.getTag(principal.getTag("k"))`): all of them.
    pub all_tags: bool,
    /// Nodes named by ID (`resource == Drover::Node::"n-1"`): those are decided on their own,
    /// the others still share.
    pub ids: BTreeSet<String>,
}

impl NodeReads {
    pub fn everything() -> Self {
        Self {
            everything: true,
            ..Self::default()
        }
    }

    /// What a policy reads of its resource, when the resource is a node.
    pub fn of(policy: &Policy) -> Self {
        let mut reads = Self::default();
        match policy.resource_constraint() {
            ResourceConstraint::Any | ResourceConstraint::Is(_) => {}
            // A node has no parents, so `in` a node is being that node.
            ResourceConstraint::Eq(uid)
            | ResourceConstraint::In(uid)
            | ResourceConstraint::IsIn(_, uid)
                if uid.type_name().to_string() == "Drover::Node" =>
            {
                reads.ids.insert(uid.id().unescaped().to_string());
            }
            _ => return Self::everything(),
        }
        let Ok(json) = policy.to_json() else {
            return Self::everything();
        };
        match json.get("conditions").and_then(Value::as_array) {
            Some(conditions) => {
                for c in conditions {
                    reads.walk(c.get("body").unwrap_or(&Value::Null));
                }
            }
            None => reads.everything = true,
        }
        reads
    }

    pub fn union(&mut self, other: &Self) {
        self.everything |= other.everything;
        self.name |= other.name;
        self.platform |= other.platform;
        self.tags.extend(other.tags.iter().cloned());
        self.all_tags |= other.all_tags;
        self.ids.extend(other.ids.iter().cloned());
    }

    fn walk(&mut self, e: &Value) {
        if self.everything {
            return;
        }
        match e {
            Value::Object(map) => {
                if map.get("Var").and_then(Value::as_str) == Some("resource") {
                    // The resource itself, not one of the reads below: its identity.
                    self.everything = true;
                    return;
                }
                if let Some(entity) = map.get("__entity") {
                    let ty = entity.get("type").and_then(Value::as_str).unwrap_or("");
                    if !matches!(ty, "Drover::User" | "Drover::Group" | "Drover::Action") {
                        // A literal node (or anything that could lead to one).
                        self.everything = true;
                        return;
                    }
                }
                for (op, arg) in map {
                    match (op.as_str(), arg) {
                        ("." | "has", Value::Object(a)) if is_resource(a.get("left")) => {
                            match a.get("attr").and_then(Value::as_str) {
                                Some("name") => self.name = true,
                                Some("platform") => self.platform = true,
                                _ => self.everything = true,
                            }
                        }
                        ("hasTag" | "getTag", Value::Object(a)) if is_resource(a.get("left")) => {
                            match a.get("right").and_then(|r| r.get("Value")) {
                                Some(Value::String(key)) => {
                                    self.tags.insert(key.clone());
                                }
                                // A computed key could be any tag.
                                _ => {
                                    self.all_tags = true;
                                    self.walk(a.get("right").unwrap_or(&Value::Null));
                                }
                            }
                        }
                        ("==" | "in", Value::Object(a)) => {
                            match (node_literal(a.get("left")), node_literal(a.get("right"))) {
                                (None, Some(id)) if is_resource(a.get("left")) => {
                                    self.ids.insert(id.to_string());
                                }
                                (Some(id), None) if op == "==" && is_resource(a.get("right")) => {
                                    self.ids.insert(id.to_string());
                                }
                                _ => self.walk(arg),
                            }
                        }
                        // `resource is Drover::Node`: every resource here is a node.
                        ("is", Value::Object(a))
                            if is_resource(a.get("left")) && !a.contains_key("in") => {}
                        _ => self.walk(arg),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| self.walk(i)),
            _ => {}
        }
    }
}

/// The ID of a literal node: `{"Value": {"__entity": {"type": "Drover::Node", "id": ...}}}`.
fn node_literal(v: Option<&Value>) -> Option<&str> {
    let e = v?.get("Value")?.get("__entity")?;
    (e.get("type")?.as_str()? == "Drover::Node").then_some(())?;
    e.get("id")?.as_str()
}

fn is_resource(v: Option<&Value>) -> bool {
    v.and_then(|v| v.get("Var")).and_then(Value::as_str) == Some("resource")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    fn reads(text: &str) -> NodeReads {
        let p: Policy = text.parse().expect("a policy");
        NodeReads::of(&p)
    }

    fn tags(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn literal_tag_reads_are_bounded() {
        let r = reads(
            r#"permit (principal, action, resource is Drover::Node) when {
                principal.hasTag("department") && resource.hasTag("department") &&
                principal.getTag("department") == resource.getTag("department") &&
                resource.platform == "linux" && context.document like "Deploy*" };"#,
        );
        assert!(!r.everything && !r.name && r.platform);
        assert_eq!(r.tags, tags(&["department"]));
        let r = reads(
            r#"permit (principal, action, resource) when { resource has name && resource.name like "web-*" };"#,
        );
        assert!(!r.everything && r.name && r.tags.is_empty());
    }

    #[test]
    fn named_nodes_and_computed_keys_are_read_as_such() {
        for text in [
            r#"permit (principal, action, resource == Drover::Node::"n-1");"#,
            r#"permit (principal, action, resource in Drover::Node::"n-1");"#,
            r#"permit (principal, action, resource) when { resource == Drover::Node::"n-1" };"#,
            r#"permit (principal, action, resource) when { Drover::Node::"n-1" == resource };"#,
        ] {
            let r = reads(text);
            assert!(!r.everything && !r.all_tags, "{text}");
            assert_eq!(r.ids, tags(&["n-1"]), "{text}");
        }
        let r = reads(
            r#"permit (principal, action, resource) when { resource.getTag(principal.getTag("k")) == "v" };"#,
        );
        assert!(!r.everything && r.all_tags && r.ids.is_empty());
    }

    #[test]
    fn identity_and_other_nodes_read_everything() {
        for text in [
            r#"permit (principal, action, resource) when { [Drover::Node::"n-1"].contains(resource) };"#,
            r#"permit (principal, action, resource) when { resource.getTag(resource.name) == "v" && resource == principal };"#,
            r#"permit (principal, action, resource) when { Drover::Node::"n-1".getTag("k") == "v" };"#,
            r#"permit (principal, action, resource) when { resource.owner == "x" };"#,
            r#"permit (principal, action, resource) when { resource is Drover::Node in Drover::Node::"n-1" };"#,
        ] {
            assert!(reads(text).everything, "{text}");
        }
    }

    #[test]
    fn reads_nothing_of_the_node_when_nothing_names_it() {
        let r = reads(
            r#"permit (principal in Drover::Group::"admins", action, resource) when { principal.name == "a" };"#,
        );
        assert_eq!(r, NodeReads::default());
        let r = reads(r#"forbid (principal, action, resource) when { resource is Drover::Node };"#);
        assert_eq!(r, NodeReads::default());
    }
}
