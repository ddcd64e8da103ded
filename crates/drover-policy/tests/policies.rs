//! The schema, the action table, the default policy and the example policies agree, and the
//! examples decide what their comments say.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use drover_policy::{
    Action, Context, Engine, NodeFacts, PolicyError, PolicyFile, Resource, UserFacts,
    DEFAULT_POLICY,
};

fn example(name: &str) -> PolicyFile {
    let path = format!(
        "{}/../../examples/policies/{name}.cedar",
        env!("CARGO_MANIFEST_DIR")
    );
    PolicyFile {
        name: name.into(),
        text: std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")),
    }
}

fn engine() -> Engine {
    let mut files = vec![PolicyFile {
        name: "default".into(),
        text: DEFAULT_POLICY.into(),
    }];
    for n in [
        "departments",
        "database-admins",
        "developers",
        "command-prefix",
    ] {
        files.push(example(n));
    }
    Engine::new(&files).unwrap()
}

fn user(name: &str, attrs: &[(&str, &str)], groups: &[&str]) -> UserFacts {
    UserFacts {
        name: name.into(),
        source: "local".into(),
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn node(id: &str, tags: &[(&str, &str)]) -> NodeFacts {
    NodeFacts {
        id: id.into(),
        name: id.into(),
        platform: "linux".into(),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn allowed(e: &Engine, u: &UserFacts, a: Action, n: &NodeFacts, doc: &str) -> bool {
    let ctx = Context {
        document: Some(doc.into()),
        kind: Some("shell".into()),
    };
    e.decide(u, a, &Resource::Node(n.clone()), &ctx)
        .unwrap()
        .allowed
}

#[test]
fn the_schema_declares_exactly_the_action_table() {
    let schema = drover_policy::schema().unwrap();
    let mut declared: Vec<String> = schema
        .actions()
        .map(|a| a.id().unescaped().to_string())
        .collect();
    declared.sort();
    let mut table: Vec<String> = Action::all().map(|a| a.name().to_string()).collect();
    table.sort();
    assert_eq!(declared, table);
}

#[test]
fn departments_reach_only_their_own_nodes() {
    let e = engine();
    let alice = user("alice", &[("department", "Amber")], &[]);
    let bob = user("bob", &[("department", "Blue")], &[]);
    let amber = node("n-00000000000000001", &[("department", "Amber")]);
    let blue = node("n-00000000000000002", &[("department", "Blue")]);
    let untagged = node("n-00000000000000003", &[]);
    for a in [Action::StartSession, Action::SendCommand, Action::ReadNode] {
        assert!(allowed(&e, &alice, a, &amber, "AWS-RunShellScript"));
        assert!(!allowed(&e, &alice, a, &blue, "AWS-RunShellScript"));
        assert!(allowed(&e, &bob, a, &blue, "AWS-RunShellScript"));
        assert!(!allowed(&e, &bob, a, &amber, "AWS-RunShellScript"));
        assert!(!allowed(&e, &alice, a, &untagged, "AWS-RunShellScript"));
    }
    assert!(!allowed(&e, &alice, Action::DeregisterNode, &amber, ""));
    let fanout = e
        .decide_nodes(
            &alice,
            Action::SendCommand,
            &[amber, blue, untagged],
            &Context {
                document: Some("D".into()),
                kind: None,
            },
        )
        .unwrap();
    assert_eq!(fanout, vec![true, false, false]);
}

#[test]
fn developers_only_tail_the_log_in_production() {
    let e = engine();
    let dev = user("dev", &[], &["developers"]);
    let prod = node("n-00000000000000004", &[("Environment", "Production")]);
    let devel = node("n-00000000000000005", &[("Environment", "Development")]);
    assert!(allowed(&e, &dev, Action::StartSession, &prod, "TailAppLog"));
    assert!(!allowed(
        &e,
        &dev,
        Action::StartSession,
        &prod,
        "SessionManagerRunShell"
    ));
    assert!(allowed(
        &e,
        &dev,
        Action::StartSession,
        &devel,
        "SessionManagerRunShell"
    ));
    assert!(allowed(&e, &dev, Action::ReadNode, &prod, ""));
    assert!(!allowed(&e, &dev, Action::SendCommand, &prod, "TailAppLog"));
    let dba = user("dba", &[], &["dba"]);
    let db = node("n-00000000000000006", &[("Component", "Database")]);
    assert!(allowed(
        &e,
        &dba,
        Action::StartSession,
        &db,
        "SessionManagerRunShell"
    ));
    assert!(!allowed(
        &e,
        &dba,
        Action::StartSession,
        &prod,
        "SessionManagerRunShell"
    ));
}

#[test]
fn a_prefix_and_named_nodes_bound_commands() {
    let e = engine();
    let rel = user("rel", &[], &["release"]);
    let web = node("n-00000000000000007", &[("role", "web")]);
    let named = node("n-0123456789abcdef0", &[]);
    let other = node("n-00000000000000008", &[("role", "db")]);
    assert!(allowed(
        &e,
        &rel,
        Action::SendCommand,
        &web,
        "Release-Deploy"
    ));
    assert!(allowed(
        &e,
        &rel,
        Action::SendCommand,
        &named,
        "Release-Deploy"
    ));
    assert!(!allowed(
        &e,
        &rel,
        Action::SendCommand,
        &other,
        "Release-Deploy"
    ));
    assert!(!allowed(
        &e,
        &rel,
        Action::SendCommand,
        &web,
        "AWS-RunShellScript"
    ));
    assert!(!allowed(
        &e,
        &rel,
        Action::StartSession,
        &web,
        "Release-Deploy"
    ));
}

#[test]
fn defaults_give_admins_everything_and_others_their_own() {
    let e = engine();
    let admin = user("admin", &[], &["admins"]);
    let nobody = user("nobody", &[], &[]);
    let ctx = Context::default();
    for a in Action::all() {
        let resource = match a.resource() {
            drover_policy::ResourceKind::Node => Resource::Node(node("n-00000000000000009", &[])),
            drover_policy::ResourceKind::Command => Resource::Command {
                id: "cmd-1".into(),
                sender: "someone".into(),
                document: "D".into(),
            },
            drover_policy::ResourceKind::Session => Resource::Session {
                id: "s-1".into(),
                owner: "someone".into(),
                node: node("n-00000000000000009", &[]),
                document: "D".into(),
                kind: "shell".into(),
            },
            drover_policy::ResourceKind::Document => Resource::Document { name: "D".into() },
            drover_policy::ResourceKind::Parameter => Resource::Parameter { name: "/p".into() },
            drover_policy::ResourceKind::Server => Resource::Server,
            drover_policy::ResourceKind::User => Resource::User {
                name: "someone".into(),
            },
        };
        let d = e.decide(&admin, a, &resource, &ctx).unwrap();
        assert!(d.allowed, "{a}");
        assert!(
            d.reasons.contains(&"default/admins".to_string()),
            "{:?}",
            d.reasons
        );
        let d = e.decide(&nobody, a, &resource, &ctx).unwrap();
        // Anyone may read documents, and ask for access (which someone else approves).
        assert_eq!(
            d.allowed,
            matches!(a, Action::ReadDocument | Action::RequestAccess),
            "{a}"
        );
    }
    let own = Resource::Session {
        id: "s-1".into(),
        owner: "nobody".into(),
        node: node("n-00000000000000009", &[]),
        document: "D".into(),
        kind: "shell".into(),
    };
    assert!(
        e.decide(&nobody, Action::TerminateSession, &own, &ctx)
            .unwrap()
            .allowed
    );
    assert!(
        !e.decide(&nobody, Action::ReplaySession, &own, &ctx)
            .unwrap()
            .allowed
    );
    let me = Resource::User {
        name: "nobody".into(),
    };
    assert!(
        e.decide(&nobody, Action::ManageTokens, &me, &ctx)
            .unwrap()
            .allowed
    );
}

#[test]
fn bad_policies_are_refused_with_line_and_column() {
    let schema = drover_policy::schema().unwrap();
    let check = |text: &str| match drover_policy::parse(
        &PolicyFile {
            name: "p".into(),
            text: text.into(),
        },
        &schema,
    ) {
        Err(PolicyError::Invalid { problems, .. }) => problems,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let p = check("permit (principal, action, resource)\nwhen { resource.nope };");
    assert_eq!((p[0].line, p[0].column), (2, 8), "{p:?}");
    let p = check("permit (principal, action, resource);\nforbid (principal action, resource);");
    assert_eq!(p[0].line, 2, "{p:?}");
    let p = check("permit (principal, action == Drover::Action::\"Fly\", resource);");
    assert_eq!(p[0].line, 1, "{p:?}");
    assert!(p[0].message.contains("Fly"), "{p:?}");
    // getTag without hasTag is refused: it would error at decision time.
    let p = check(
        "permit (principal, action, resource is Drover::Node)\n  when { resource.getTag(\"a\") == \"b\" };",
    );
    assert_eq!(p[0].line, 2, "{p:?}");
}

/// Every action for every kind of user under the default policy, written to a file: a change
/// of policy shows in review, and an action added without a decision shows here
/// (`UPDATE_EXPECT=1 cargo test -p drover-policy` rewrites the file).
#[test]
fn permission_table() {
    let e = Engine::new(&[PolicyFile {
        name: "default".into(),
        text: DEFAULT_POLICY.into(),
    }])
    .unwrap();
    let roles = [
        ("admin", user("root", &[], &["admins"])),
        ("viewer", user("vera", &[], &["viewers"])),
        ("user", user("uma", &[], &[])),
    ];
    let mut table = String::from("# role, action, resource (own: the user's own), decision\n");
    for (role, who) in &roles {
        for a in Action::all() {
            for own in [false, true] {
                let owner = if own {
                    who.name.clone()
                } else {
                    "someone".into()
                };
                let node = node("n-00000000000000009", &[]);
                let resource = match a.resource() {
                    drover_policy::ResourceKind::Node if !own => Resource::Node(node),
                    drover_policy::ResourceKind::Command => Resource::Command {
                        id: "cmd-1".into(),
                        sender: owner,
                        document: "D".into(),
                    },
                    drover_policy::ResourceKind::Session => Resource::Session {
                        id: "s-1".into(),
                        owner,
                        node,
                        document: "D".into(),
                        kind: "shell".into(),
                    },
                    drover_policy::ResourceKind::Document if !own => {
                        Resource::Document { name: "D".into() }
                    }
                    drover_policy::ResourceKind::Parameter if !own => Resource::Parameter {
                        name: "/app/p".into(),
                    },
                    drover_policy::ResourceKind::Server if !own => Resource::Server,
                    drover_policy::ResourceKind::User => Resource::User { name: owner },
                    _ => continue,
                };
                let d = e.decide(who, a, &resource, &Context::default()).unwrap();
                let verdict = if d.allowed { "allow" } else { "deny" };
                let whose = if own { "own" } else { "any" };
                table.push_str(&format!("{role:6} {a:20} {whose:4} {verdict}\n"));
            }
        }
    }
    expect_test::expect_file!["permissions.txt"].assert_eq(&table);
}
