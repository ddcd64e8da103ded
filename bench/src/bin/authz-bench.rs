//! Authorization at fleet scale: one user's decision on each of 10,000 nodes (a command's
//! fan-out, a node listing) under 100 policies, through `drover-policy` as the server calls it.
//! Prints the median and the slowest of the runs. The last row is a user whose policy reads each
//! node's unique name, so that no two nodes can share a decision: the worst case; and one whose
//! policy reads nodes' identity, decided node by node, each alone with the user.
#![allow(clippy::indexing_slicing)] // fixed tables indexed modulo their length

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use drover_policy::{Action, Context, Engine, NodeFacts, PolicyFile, UserFacts, DEFAULT_POLICY};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    #[arg(long, default_value_t = 100)]
    policies: usize,
    #[arg(long, default_value_t = 20)]
    runs: usize,
}

/// The shipped examples, then generated ones like them (other departments, teams and
/// environments) until there are `n` policies.
fn policies(n: usize) -> anyhow::Result<Vec<PolicyFile>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policies");
    let mut files = vec![PolicyFile {
        name: "default".into(),
        text: DEFAULT_POLICY.into(),
    }];
    for name in [
        "departments",
        "database-admins",
        "developers",
        "command-prefix",
    ] {
        files.push(PolicyFile {
            name: name.into(),
            text: std::fs::read_to_string(format!("{dir}/{name}.cedar"))?,
        });
    }
    // Read by the last row: names are unique, so no two nodes look alike to this policy.
    files.push(PolicyFile {
        name: "by-name".into(),
        text: "permit (principal in Drover::Group::\"namers\", \
               action == Drover::Action::\"SendCommand\", resource is Drover::Node) \
               when { resource.name like \"node-1*\" };"
            .into(),
    });
    // Read by the row after it: a policy that reads a node's identity (and names another node),
    // so that each node is decided on its own, among the entities alone with the user.
    files.push(PolicyFile {
        name: "by-identity".into(),
        text: "permit (principal in Drover::Group::\"identities\", \
               action == Drover::Action::\"SendCommand\", resource is Drover::Node) \
               when { resource != Drover::Node::\"n-0\" && resource.name like \"node-1*\" };"
            .into(),
    });
    let mut count: usize = files
        .iter()
        .map(|f| f.text.matches("permit").count() + f.text.matches("forbid").count())
        .sum();
    let mut i = 0;
    while count < n {
        // Alternately: commands with the team's documents, and seeing the team's nodes.
        let text = if i % 2 == 0 {
            format!(
                "permit (principal in Drover::Group::\"team-{i}\", \
                 action == Drover::Action::\"SendCommand\", resource is Drover::Node) \
                 when {{ resource.hasTag(\"team\") && resource.getTag(\"team\") == \"team-{i}\" && \
                 context.document like \"Team{i}-*\" }};"
            )
        } else {
            format!(
                "permit (principal in Drover::Group::\"team-{i}\", \
                 action in [Drover::Action::\"ReadNode\", Drover::Action::\"TagNode\"], \
                 resource is Drover::Node) \
                 when {{ resource.hasTag(\"team\") && resource.getTag(\"team\") == \"team-{i}\" }};"
            )
        };
        files.push(PolicyFile {
            name: format!("team-{i}"),
            text,
        });
        count += 1;
        i += 1;
    }
    Ok(files)
}

fn nodes(n: usize) -> Vec<NodeFacts> {
    let departments = ["Amber", "Blue", "Green", "Red"];
    let environments = ["Production", "Development", "Staging"];
    (0..n)
        .map(|i| NodeFacts {
            id: format!("n-{i:017x}"),
            name: format!("node-{i}"),
            platform: "linux".into(),
            tags: BTreeMap::from([
                ("department".into(), departments[i % 4].into()),
                ("Environment".into(), environments[i % 3].into()),
                ("team".into(), format!("team-{}", i % 97)),
                ("role".into(), if i % 5 == 0 { "web" } else { "app" }.into()),
            ]),
        })
        .collect()
}

fn measure(runs: usize, mut f: impl FnMut() -> usize) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(runs);
    let mut allowed = 0;
    for _ in 0..runs {
        let start = Instant::now();
        allowed = f();
        times.push(start.elapsed());
    }
    times.sort();
    (times[times.len() / 2], times[times.len() - 1], allowed)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let files = policies(args.policies)?;
    let engine = Engine::new(&files)?;
    let nodes = nodes(args.nodes);
    let alice = UserFacts {
        name: "alice".into(),
        source: "oidc".into(),
        attributes: BTreeMap::from([("department".into(), "Amber".into())]),
        groups: vec!["team-3".into(), "developers".into()],
    };
    println!(
        "{} nodes, {} policies in {} files, {} runs each",
        nodes.len(),
        engine.policy_count(),
        files.len(),
        args.runs
    );
    let send = Context {
        document: Some("RunShellScript".into()),
        kind: None,
    };
    // A user whose policies name a node by ID (command-prefix.cedar): that node is decided on
    // its own, the others by their `role` tag.
    let releaser = UserFacts {
        name: "rel".into(),
        groups: vec!["release".into()],
        ..alice.clone()
    };
    let release = Context {
        document: Some("Release-web".into()),
        kind: None,
    };
    // A user whose policy reads each node's (unique) name: every node is decided on its own,
    // the engine's slowest path.
    let namer = UserFacts {
        name: "nam".into(),
        groups: vec!["namers".into()],
        ..alice.clone()
    };
    let by_name = Context {
        document: Some("RunShellScript".into()),
        kind: None,
    };
    let identifier = UserFacts {
        name: "ide".into(),
        groups: vec!["identities".into()],
        ..alice.clone()
    };
    for (what, who, action, ctx) in [
        ("fan-out (SendCommand)", &alice, Action::SendCommand, send),
        (
            "listing (ReadNode)",
            &alice,
            Action::ReadNode,
            Context::default(),
        ),
        (
            "fan-out, node named",
            &releaser,
            Action::SendCommand,
            release,
        ),
        (
            "fan-out, all distinct",
            &namer,
            Action::SendCommand,
            by_name.clone(),
        ),
        (
            "fan-out, node identity",
            &identifier,
            Action::SendCommand,
            by_name,
        ),
    ] {
        let (median, slowest, allowed) = measure(args.runs, || {
            engine
                .decide_nodes(who, action, &nodes, &ctx)
                .map(|d| d.iter().filter(|a| **a).count())
                .unwrap_or(0)
        });
        println!(
            "{what:24} median {:8.2} ms  slowest {:8.2} ms  ({:.2} µs a node; {allowed} allowed)",
            median.as_secs_f64() * 1e3,
            slowest.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e6 / nodes.len() as f64
        );
    }
    Ok(())
}
