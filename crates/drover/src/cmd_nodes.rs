//! `drover nodes`: list, show, tag, untag, deregister.

use std::process::ExitCode;

use drover_api::{NodeView, TagUpdate};

use crate::cli::{Format, NodesCommand};
use crate::client_config::client;
use crate::output::{parse_tags, print};

const HEADERS: &[&str] = &[
    "ID",
    "NAME",
    "STATUS",
    "PLATFORM",
    "OS",
    "AGENT",
    "IP",
    "LAST SEEN",
    "TAGS",
];

fn row(n: &NodeView) -> Vec<String> {
    let inv = &n.inventory;
    vec![
        n.id.clone(),
        n.name.clone(),
        n.status.clone(),
        inv.platform.clone(),
        format!("{} {}", inv.os_name, inv.os_version)
            .trim()
            .to_string(),
        inv.agent_version.clone(),
        inv.ip_addresses.first().cloned().unwrap_or_default(),
        n.last_seen_at.clone().unwrap_or_default(),
        n.tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    ]
}

pub async fn run(cmd: NodesCommand) -> anyhow::Result<ExitCode> {
    let c = client()?;
    match cmd {
        NodesCommand::List(args) => {
            let nodes = c.list_nodes(&args.filters).await?;
            print(
                args.output.format,
                HEADERS,
                nodes.iter().map(row).collect(),
                &nodes,
            )?;
        }
        NodesCommand::Show { id, output } => {
            let n = c.get_node(&id).await?;
            match output.format {
                Format::Table => {
                    let inv = &n.inventory;
                    let fields: Vec<(&str, String)> = vec![
                        ("ID", n.id.clone()),
                        ("Name", n.name.clone()),
                        ("Status", n.status.clone()),
                        ("Last seen", n.last_seen_at.clone().unwrap_or_default()),
                        ("Registered", n.registered_at.clone()),
                        ("Activation", n.activation_id.clone()),
                        ("Hostname", inv.hostname.clone()),
                        ("Platform", inv.platform.clone()),
                        ("OS", format!("{} {}", inv.os_name, inv.os_version)),
                        ("Kernel", inv.kernel.clone()),
                        ("Architecture", inv.arch.clone()),
                        ("Agent version", inv.agent_version.clone()),
                        ("IP addresses", inv.ip_addresses.join(", ")),
                        ("Boot time", inv.boot_time.clone().unwrap_or_default()),
                        (
                            "Tags",
                            n.tags
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(", "),
                        ),
                    ];
                    for (k, v) in fields {
                        println!("{k:<14} {v}");
                    }
                }
                f => print(f, HEADERS, vec![row(&n)], &n)?,
            }
        }
        NodesCommand::Tag { id, tags } => {
            let set = parse_tags(&tags)?;
            let n = c
                .update_tags(
                    &id,
                    &TagUpdate {
                        set,
                        remove: vec![],
                    },
                )
                .await?;
            println!("{}: {}", n.id, fmt_tags(&n));
        }
        NodesCommand::Untag { id, keys } => {
            let n = c
                .update_tags(
                    &id,
                    &TagUpdate {
                        set: Default::default(),
                        remove: keys,
                    },
                )
                .await?;
            println!("{}: {}", n.id, fmt_tags(&n));
        }
        NodesCommand::Deregister { id } => {
            let n = c.deregister(&id).await?;
            println!(
                "deregistered {} ({}): it is refused from now on",
                n.id, n.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn fmt_tags(n: &NodeView) -> String {
    if n.tags.is_empty() {
        return "(no tags)".into();
    }
    n.tags
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}
