//! `drover access`: ask for temporary access, and approve, deny or revoke it.

use std::process::ExitCode;

use clap::Subcommand;
use drover_api::{AccessRequestView, CreateAccessRequest};

use crate::cli::OutputArgs;
use crate::client_config::client;
use crate::cmd_server::parse_duration;
use crate::output::print;

#[derive(Debug, Subcommand)]
pub enum AccessCommand {
    /// Ask for access: `drover access request --node web-1 --action StartSession --reason
    /// "INC-123" --duration 2h`. Another user approves it.
    Request {
        /// A node by ID or name (repeatable).
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// Nodes by filter: tag:KEY=VALUE (repeatable; all must match).
        #[arg(long = "targets")]
        targets: Vec<String>,
        /// An action on those nodes (repeatable) [default: StartSession].
        #[arg(long = "action")]
        actions: Vec<String>,
        /// Only with this document.
        #[arg(long)]
        document: Option<String>,
        #[arg(long)]
        reason: String,
        /// How long the grant runs once approved: 30m, 2h, 1d.
        #[arg(long, default_value = "1h")]
        duration: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Your requests and those you may decide on, newest first.
    List {
        /// Pending, Approved, Denied, Revoked or Expired.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    Show {
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Approve another user's request (the grant starts once enough approvers agree).
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Refuse another user's request.
    Deny {
        id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// End a request or its grant (yours, or one you may approve); its sessions end.
    Revoke {
        id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
}

const HEADERS: &[&str] = &[
    "ID",
    "REQUESTER",
    "STATUS",
    "ACTIONS",
    "NODES",
    "APPROVALS",
    "EXPIRES",
    "REASON",
];

fn row(r: &AccessRequestView) -> Vec<String> {
    let approvals = r
        .decisions
        .iter()
        .filter(|d| d.verdict == "approve")
        .count();
    vec![
        r.id.clone(),
        r.requester.clone(),
        r.status.clone(),
        r.actions.join(","),
        if r.nodes.len() > 3 {
            format!("{} nodes", r.nodes.len())
        } else {
            r.nodes.join(",")
        },
        format!("{approvals}/{}", r.approvals_needed),
        r.expires_at.clone().unwrap_or_default(),
        r.reason.clone(),
    ]
}

pub async fn run(cmd: AccessCommand) -> anyhow::Result<ExitCode> {
    let c = client()?;
    match cmd {
        AccessCommand::Request {
            nodes,
            targets,
            actions,
            document,
            reason,
            duration,
            output,
        } => {
            let secs = parse_duration("--duration", &duration)?.as_secs();
            if !(1..=7 * 86400).contains(&secs) {
                anyhow::bail!("--duration {duration}: from 1s to 7d");
            }
            let r = c
                .request_access(&CreateAccessRequest {
                    targets: nodes.into_iter().chain(targets).collect(),
                    actions: if actions.is_empty() {
                        vec!["StartSession".into()]
                    } else {
                        actions
                    },
                    document,
                    reason,
                    duration_secs: secs,
                })
                .await?;
            print(output.format, HEADERS, vec![row(&r)], &r)?;
        }
        AccessCommand::List { status, output } => {
            let list = c.list_access_requests(status.as_deref()).await?;
            print(
                output.format,
                HEADERS,
                list.iter().map(row).collect(),
                &list,
            )?;
        }
        AccessCommand::Show { id, output } => {
            let r = c.get_access_request(&id).await?;
            print(output.format, HEADERS, vec![row(&r)], &r)?;
        }
        AccessCommand::Approve { id, comment } => {
            let r = c.decide_access(&id, "approve", &comment).await?;
            println!("{}: {}", r.id, r.status);
        }
        AccessCommand::Deny { id, comment } => {
            let r = c.decide_access(&id, "deny", &comment).await?;
            println!("{}: {}", r.id, r.status);
        }
        AccessCommand::Revoke { id, comment } => {
            let r = c.decide_access(&id, "revoke", &comment).await?;
            println!("{}: {}", r.id, r.status);
        }
    }
    Ok(ExitCode::SUCCESS)
}
