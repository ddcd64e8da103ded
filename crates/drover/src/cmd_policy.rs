//! `drover policy`: list, get, put, delete, validate, check and test policies.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use drover_api::{CheckRequest, CheckResponse};
use serde::Deserialize;

use crate::cli::OutputArgs;
use crate::client_config::client;
use crate::output::print;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    List(OutputArgs),
    /// Print a policy's Cedar text.
    Get {
        name: String,
    },
    /// Store a policy file (validated against the schema first; a bad one is refused with the
    /// line and column).
    Put {
        name: String,
        file: PathBuf,
    },
    Delete {
        name: String,
    },
    /// Check a Cedar file against the schema, here, without storing it.
    Validate {
        file: PathBuf,
    },
    /// Would this user be allowed? Names the policies that decided.
    Check(CheckArgs),
    /// Run a YAML table of expected decisions and print each mismatch (exit 1 if any).
    Test {
        file: PathBuf,
    },
    /// Print the Cedar schema policies are checked against.
    Schema,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[arg(long)]
    pub user: String,
    /// An action: StartSession, SendCommand, ReadNode, ... (`drover policy check --help`).
    #[arg(long)]
    pub action: String,
    /// The node (ID or unique name) of a node action.
    #[arg(long)]
    pub node: Option<String>,
    /// The document of a command or session, or of a document action.
    #[arg(long = "doc")]
    pub document: Option<String>,
    /// A session's kind: shell, command, port or ssh.
    #[arg(long)]
    pub kind: Option<String>,
    #[arg(long)]
    pub command: Option<String>,
    #[arg(long)]
    pub session: Option<String>,
    /// For ManageTokens: whose tokens (default: the user's own).
    #[arg(long)]
    pub owner: Option<String>,
}

/// One row of a `policy test` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    user: String,
    action: String,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    document: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    /// `allow` or `deny`.
    expect: String,
}

async fn check(c: &drover_client::Client, req: CheckRequest) -> anyhow::Result<CheckResponse> {
    let mut req = req;
    // A node may be named; the API takes IDs.
    if let Some(n) = &req.node {
        if !n.starts_with("n-") {
            req.node = Some(c.get_node(n).await?.id);
        }
    }
    Ok(c.check_policy(&req).await?)
}

fn read(file: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

pub async fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::List(out) => {
            let list = client()?.list_policies().await?;
            let rows = list
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.text.matches("permit").count().to_string(),
                        p.text.matches("forbid").count().to_string(),
                        p.updated_at.clone(),
                    ]
                })
                .collect();
            print(
                out.format,
                &["NAME", "PERMITS", "FORBIDS", "UPDATED"],
                rows,
                &list,
            )?;
        }
        PolicyCommand::Get { name } => print!("{}", client()?.get_policy(&name).await?.text),
        PolicyCommand::Put { name, file } => {
            let p = client()?.put_policy(&name, &read(&file)?).await?;
            println!("stored policy {} ({})", p.name, p.updated_at);
        }
        PolicyCommand::Delete { name } => {
            client()?.delete_policy(&name).await?;
            println!("deleted policy {name}");
        }
        PolicyCommand::Validate { file } => {
            let text = read(&file)?;
            let schema = drover_policy::schema()?;
            let name = file.display().to_string();
            match drover_policy::parse(
                &drover_policy::PolicyFile {
                    name: name.clone(),
                    text,
                },
                &schema,
            ) {
                Ok(set) => println!("{name}: valid ({} policies)", set.policies().count()),
                Err(drover_policy::PolicyError::Invalid { problems, .. }) => {
                    for p in problems {
                        eprintln!("{name}:{}:{}: {}", p.line, p.column, p.message);
                    }
                    return Ok(ExitCode::from(1));
                }
                Err(e) => return Err(e.into()),
            }
        }
        PolicyCommand::Check(a) => {
            let c = client()?;
            let d = check(
                &c,
                CheckRequest {
                    user: a.user,
                    action: a.action,
                    node: a.node,
                    document: a.document,
                    kind: a.kind,
                    command: a.command,
                    session: a.session,
                    owner: a.owner,
                },
            )
            .await?;
            println!("{}", d.decision);
            if d.reasons.is_empty() {
                println!("  no policy applies: denied by default");
            }
            for r in &d.reasons {
                println!("  decided by {r}");
            }
            for e in &d.errors {
                println!("  error in {e}");
            }
            return Ok(if d.decision == "allow" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        PolicyCommand::Test { file } => {
            let cases: Vec<Case> = serde_yaml_ng::from_str(&read(&file)?).with_context(|| {
                format!(
                    "{}: a YAML list of cases (user, action, node, document, kind, expect)",
                    file.display()
                )
            })?;
            let c = client()?;
            let mut failed = 0;
            for (i, case) in cases.iter().enumerate() {
                if !matches!(case.expect.as_str(), "allow" | "deny") {
                    anyhow::bail!(
                        "case {}: expect must be allow or deny, not {:?}",
                        i + 1,
                        case.expect
                    );
                }
                let d = check(
                    &c,
                    CheckRequest {
                        user: case.user.clone(),
                        action: case.action.clone(),
                        node: case.node.clone(),
                        document: case.document.clone(),
                        kind: case.kind.clone(),
                        command: case.command.clone(),
                        session: case.session.clone(),
                        owner: case.owner.clone(),
                    },
                )
                .await
                .with_context(|| format!("case {}", i + 1))?;
                if d.decision != case.expect {
                    failed += 1;
                    println!(
                        "case {}: {} {} {}{}: expected {}, got {} ({})",
                        i + 1,
                        case.user,
                        case.action,
                        case.node.as_deref().unwrap_or(""),
                        case.document
                            .as_deref()
                            .map(|d| format!(" with {d}"))
                            .unwrap_or_default(),
                        case.expect,
                        d.decision,
                        if d.reasons.is_empty() {
                            "no policy applied".to_string()
                        } else {
                            d.reasons.join(", ")
                        }
                    );
                }
            }
            println!(
                "{} cases, {} as expected, {failed} not",
                cases.len(),
                cases.len() - failed
            );
            return Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        PolicyCommand::Schema => print!("{}", drover_policy::SCHEMA),
    }
    Ok(ExitCode::SUCCESS)
}
