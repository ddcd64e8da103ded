//! `drover audit`: the tamper-evident log of everything done, to read, check and export.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Subcommand;
use drover_client::AuditFilter;

use crate::cli::OutputArgs;
use crate::client_config::client;
use crate::cmd_server::parse_duration;
use crate::output::print;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Entries, oldest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many entries [default: 100].
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Checks every entry's hash and link and every signed checkpoint; exits 1 naming the
    /// first bad entry when something was edited, removed or reordered.
    Verify {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Every matching entry as JSON lines (for a log shipper).
    Export {
        #[command(flatten)]
        filter: FilterArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// From this time: RFC 3339 (2026-11-27T09:00:00Z) or an age (24h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Before this time, as --since.
    #[arg(long)]
    until: Option<String>,
    /// Only what this user did.
    #[arg(long)]
    user: Option<String>,
    /// Only actions starting with this (create_user, session., login).
    #[arg(long)]
    action: Option<String>,
    /// Only entries naming this node (or any resource text: user/alice, command/cmd-...).
    #[arg(long)]
    node: Option<String>,
}

/// An RFC 3339 time as is, or an age (`24h`) as the time that long ago.
fn time_arg(what: &str, v: Option<String>) -> anyhow::Result<Option<String>> {
    let Some(v) = v else { return Ok(None) };
    if v.contains('T') {
        return Ok(Some(v));
    }
    let age = parse_duration(what, &v)?;
    let at = time::OffsetDateTime::now_utc() - age;
    Ok(Some(
        at.format(&time::format_description::well_known::Rfc3339)?,
    ))
}

impl FilterArgs {
    fn filter(self, limit: usize) -> anyhow::Result<AuditFilter> {
        Ok(AuditFilter {
            since: time_arg("--since", self.since)?,
            until: time_arg("--until", self.until)?,
            user: self.user,
            action: self.action,
            resource: self.node,
            after: None,
            limit,
        })
    }
}

pub async fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::List {
            filter,
            limit,
            output,
        } => {
            let list = client()?.list_audit(&filter.filter(limit)?).await?;
            // Entries hold text others wrote (error messages quote input): no control
            // character reaches the terminal.
            let plain = |s: &str| -> String {
                s.chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect()
            };
            let rows = list
                .entries
                .iter()
                .map(|e| {
                    vec![
                        e.seq.to_string(),
                        e.time.clone(),
                        plain(&e.actor),
                        e.source.clone(),
                        plain(&e.action),
                        plain(&e.resource),
                        e.outcome.clone(),
                        plain(&e.reason.chars().take(80).collect::<String>()),
                    ]
                })
                .collect();
            let headers = [
                "SEQ", "TIME", "ACTOR", "SOURCE", "ACTION", "RESOURCE", "OUTCOME", "REASON",
            ];
            print(output.format, &headers, rows, &list.entries)?;
        }
        AuditCommand::Verify { output } => {
            let r = client()?.verify_audit().await?;
            let verdict = match &r.problem {
                None => "intact".to_string(),
                Some(p) => format!("BROKEN: {p}"),
            };
            let row = vec![
                verdict.clone(),
                r.checked.to_string(),
                r.checkpoints.to_string(),
                format!("{}..{}", r.anchor + 1, r.head),
            ];
            print(
                output.format,
                &["VERDICT", "ENTRIES", "CHECKPOINTS", "RANGE"],
                vec![row],
                &r,
            )?;
            if !r.ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        AuditCommand::Export { filter } => {
            let c = client()?;
            let mut f = filter.filter(5_000)?;
            let mut out = std::io::stdout().lock();
            loop {
                let page = c.list_audit(&f).await?;
                for e in &page.entries {
                    writeln!(out, "{}", serde_json::to_string(e)?)?;
                }
                match page.next_after {
                    Some(a) => f.after = Some(a),
                    None => break,
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
