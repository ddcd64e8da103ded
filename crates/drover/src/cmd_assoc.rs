//! `drover assoc` and `drover compliance`: State Manager associations (a document kept
//! applied to targets on a schedule) and each node's compliance with them.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use drover_api::{AssociationRequest, AssociationView, ComplianceView, ExecutionView};

use crate::cli::OutputArgs;
use crate::client_config::client;
use crate::cmd_run::parse_params;
use crate::output::print;
use crate::UsageError;

/// What `create` and `update` set.
#[derive(Debug, Args)]
pub struct AssocFields {
    /// The command document.
    #[arg(long = "doc")]
    pub document: Option<String>,
    /// $DEFAULT (the default), $LATEST, or a version number.
    #[arg(long = "doc-version")]
    pub document_version: Option<String>,
    /// Parameter as NAME=VALUE (repeat a name to build a list).
    #[arg(long = "param")]
    pub params: Vec<String>,
    /// Parameter as NAME=FILE: the value is the file's text.
    #[arg(long = "param-file")]
    pub param_files: Vec<String>,
    /// Targets: all, node IDs, node names, tag:KEY=VALUE (repeatable, or comma-separated).
    #[arg(long = "targets", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// `rate(30 minutes)` or `cron(0 2 ? * SUN *)` (UTC, SSM's six fields).
    #[arg(long)]
    pub schedule: Option<String>,
    /// A number or a percentage of the targets (default 50).
    #[arg(long)]
    pub max_concurrency: Option<String>,
    /// A number or a percentage (default 100%: every node is tried).
    #[arg(long)]
    pub max_errors: Option<String>,
    /// Apply only on the schedule, not at once.
    #[arg(long)]
    pub apply_only_at_cron_interval: bool,
    /// CRITICAL, HIGH, MEDIUM, LOW or UNSPECIFIED.
    #[arg(long = "severity")]
    pub severity: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AssocCommand {
    /// Keep a document applied: `drover assoc create patch --doc RunShellScript --param
    /// commands='apt-get -y upgrade' --targets tag:env=prod --schedule 'rate(1 day)'`.
    Create {
        name: String,
        #[command(flatten)]
        fields: AssocFields,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Every association, with its last execution.
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// One association (by name or ID).
    Show {
        association: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Change an association (it is applied again at once, and you become its owner).
    Update {
        association: String,
        /// A new name.
        #[arg(long)]
        rename: Option<String>,
        /// Apply again only on the schedule (default: at once).
        #[arg(long)]
        no_apply_only_at_cron_interval: bool,
        #[command(flatten)]
        fields: AssocFields,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete an association, its executions and compliance.
    Delete { association: String },
    /// Apply an association now, outside its schedule.
    RunNow { association: String },
    /// An association's executions, newest first, each with the command it sent.
    History {
        association: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ComplianceCommand {
    /// Counts by association and severity.
    Summary {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Each node's status per association, with the reason when not compliant.
    List {
        /// One node (ID or name).
        #[arg(long)]
        node: Option<String>,
        /// One association (name or ID).
        #[arg(long)]
        association: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
}

fn request(f: AssocFields, name: Option<String>) -> Result<AssociationRequest, UsageError> {
    let params = parse_params(&f.params, &f.param_files)?;
    Ok(AssociationRequest {
        name,
        document: f.document,
        document_version: f.document_version,
        parameters: (!params.is_empty()).then_some(params),
        targets: (!f.targets.is_empty()).then_some(f.targets),
        schedule: f.schedule,
        max_concurrency: f.max_concurrency,
        max_errors: f.max_errors,
        apply_only_at_cron_interval: f.apply_only_at_cron_interval.then_some(true),
        compliance_severity: f.severity,
        revision: None,
    })
}

const HEADERS: &[&str] = &[
    "NAME", "ID", "DOCUMENT", "TARGETS", "SCHEDULE", "SEVERITY", "NEXT RUN", "LAST", "OWNER",
];

fn row(a: &AssociationView) -> Vec<String> {
    let last = a
        .last_execution
        .as_ref()
        .map(|e| format!("{} ({})", e.status, e.trigger))
        .unwrap_or_default();
    vec![
        a.name.clone(),
        a.id.clone(),
        format!("{}:{}", a.document, a.document_version),
        a.targets.join(","),
        a.schedule.clone(),
        a.compliance_severity.clone(),
        a.next_run_at.clone().unwrap_or_else(|| "never".into()),
        last,
        a.owner.clone(),
    ]
}

const EXEC_HEADERS: &[&str] = &[
    "EXECUTION",
    "TRIGGER",
    "STATUS",
    "COMMAND",
    "CREATED",
    "DETAIL",
];

fn exec_row(e: &ExecutionView) -> Vec<String> {
    vec![
        e.id.clone(),
        e.trigger.clone(),
        e.status.clone(),
        e.command_id.clone(),
        e.created_at.clone(),
        e.detail.clone(),
    ]
}

const COMPLIANCE_HEADERS: &[&str] = &[
    "NODE",
    "NAME",
    "ASSOCIATION",
    "SEVERITY",
    "STATUS",
    "AT",
    "REASON",
];

fn compliance_row(c: &ComplianceView) -> Vec<String> {
    vec![
        c.node_id.clone(),
        c.node_name.clone(),
        c.association_name.clone(),
        c.severity.clone(),
        c.status.clone(),
        c.at.clone(),
        c.reason.clone(),
    ]
}

pub async fn run(cmd: AssocCommand) -> anyhow::Result<ExitCode> {
    let c = client()?;
    match cmd {
        AssocCommand::Create {
            name,
            fields,
            output,
        } => {
            let a = c.create_association(&request(fields, Some(name))?).await?;
            print(output.format, HEADERS, vec![row(&a)], &a)?;
        }
        AssocCommand::List { output } => {
            let list = c.list_associations().await?.associations;
            print(
                output.format,
                HEADERS,
                list.iter().map(row).collect(),
                &list,
            )?;
        }
        AssocCommand::Show {
            association,
            output,
        } => {
            let a = c.get_association(&association).await?;
            print(output.format, HEADERS, vec![row(&a)], &a)?;
        }
        AssocCommand::Update {
            association,
            rename,
            no_apply_only_at_cron_interval,
            fields,
            output,
        } => {
            if no_apply_only_at_cron_interval && fields.apply_only_at_cron_interval {
                return Err(UsageError(
                    "give --apply-only-at-cron-interval or --no-apply-only-at-cron-interval, \
                     not both"
                        .into(),
                )
                .into());
            }
            let mut req = request(fields, rename)?;
            if no_apply_only_at_cron_interval {
                req.apply_only_at_cron_interval = Some(false);
            }
            let a = c.update_association(&association, &req).await?;
            print(output.format, HEADERS, vec![row(&a)], &a)?;
        }
        AssocCommand::Delete { association } => {
            c.delete_association(&association).await?;
            println!("deleted {association}");
        }
        AssocCommand::RunNow { association } => {
            let e = c.run_association(&association).await?;
            println!(
                "{} {} (its command will be {})",
                e.id, e.status, e.command_id
            );
        }
        AssocCommand::History {
            association,
            limit,
            output,
        } => {
            let list = c
                .association_executions(&association, limit)
                .await?
                .executions;
            print(
                output.format,
                EXEC_HEADERS,
                list.iter().map(exec_row).collect(),
                &list,
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn compliance(cmd: ComplianceCommand) -> anyhow::Result<ExitCode> {
    let c = client()?;
    match cmd {
        ComplianceCommand::Summary { output } => {
            let list = c.compliance_summary().await?.associations;
            let rows = list
                .iter()
                .map(|r| {
                    vec![
                        r.association_name.clone(),
                        r.severity.clone(),
                        r.compliant.to_string(),
                        r.non_compliant.to_string(),
                        r.pending.to_string(),
                    ]
                })
                .collect();
            print(
                output.format,
                &[
                    "ASSOCIATION",
                    "SEVERITY",
                    "COMPLIANT",
                    "NON-COMPLIANT",
                    "PENDING",
                ],
                rows,
                &list,
            )?;
        }
        ComplianceCommand::List {
            node,
            association,
            output,
        } => {
            // A name is resolved to the node's ID, which is what compliance is kept by.
            let node = match node {
                Some(n) => Some(c.get_node(&n).await?.id),
                None => None,
            };
            let list = c
                .compliance(association.as_deref(), node.as_deref())
                .await?
                .items;
            print(
                output.format,
                COMPLIANCE_HEADERS,
                list.iter().map(compliance_row).collect(),
                &list,
            )?;
            // Like `run`: non-zero when anything listed is not compliant.
            if list.iter().any(|c| c.status == "NonCompliant") {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
