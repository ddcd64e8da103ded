//! `drover run --contexts a,b`: one command through several servers (one per environment or
//! region), shown as one result: folded across all of them, each node labelled with its
//! context; the exit code is non-zero when any node anywhere did not succeed, or a server
//! could not be reached.

use std::process::ExitCode;

use drover_api::{CommandView, InvocationView, SendCommand};

use crate::cli::{RunArgs, RunFormat};
use crate::client_config::{check_context_name, client_for};
use crate::cmd_run::{duration, failed, fold, follow, status_text, summary, PRUNED};
use crate::UsageError;

/// What one context did: its command and invocations, or why it could not.
struct Outcome {
    context: String,
    result: anyhow::Result<(CommandView, Vec<InvocationView>)>,
}

async fn through(
    context: &str,
    req: &SendCommand,
    wait: bool,
) -> anyhow::Result<(CommandView, Vec<InvocationView>)> {
    let c = client_for(context)?;
    let cmd = c.send_command(req).await?;
    if !wait {
        return Ok((cmd, Vec::new()));
    }
    let done = follow(&c, cmd, false).await?;
    let invocations = c.list_invocations(&done.id, true).await?;
    Ok((done, invocations))
}

pub async fn run(args: &RunArgs, req: &SendCommand) -> anyhow::Result<ExitCode> {
    if std::env::var_os("DROVER_TOKEN").is_some() {
        return Err(UsageError(
            "DROVER_TOKEN is one server's token: unset it to use --contexts (each context \
             keeps its own login)"
                .into(),
        )
        .into());
    }
    let mut contexts: Vec<String> = Vec::new();
    for c in &args.contexts {
        if !contexts.contains(c) {
            contexts.push(c.clone());
        }
    }
    for c in &contexts {
        check_context_name(c).map_err(|e| UsageError(format!("--contexts: {e}")))?;
    }
    // Every context must exist before anything is sent anywhere.
    for c in &contexts {
        client_for(c)?;
    }
    let outcomes: Vec<Outcome> =
        futures::future::join_all(contexts.iter().map(|context| async move {
            Outcome {
                context: context.clone(),
                result: through(context, req, !args.no_wait).await,
            }
        }))
        .await;
    let mut bad = false;
    for o in &outcomes {
        if let Err(e) = &o.result {
            eprintln!("context {}: {e:#}", o.context);
            bad = true;
        }
    }
    let ok: Vec<(&str, &CommandView, &[InvocationView])> = outcomes
        .iter()
        .filter_map(|o| {
            o.result
                .as_ref()
                .ok()
                .map(|(c, i)| (o.context.as_str(), c, i.as_slice()))
        })
        .collect();
    if args.no_wait {
        for (context, cmd, _) in &ok {
            println!("{context} {}", cmd.id);
        }
        return Ok(if bad {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    if ok.iter().any(|(_, c, _)| c.output_pruned) {
        eprintln!("{PRUNED}");
    }
    match args.format {
        RunFormat::Json => {
            let v: Vec<serde_json::Value> = ok
                .iter()
                .map(|(context, cmd, inv)| {
                    serde_json::json!({ "context": context, "command": cmd, "invocations": inv })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        RunFormat::Text => {
            for inv in ok.iter().flat_map(|(_, _, i)| i.iter()) {
                for s in &inv.steps {
                    print!("{}", s.stdout);
                }
            }
        }
        RunFormat::Table if args.per_node => {
            println!(
                "{:<12} {:<20} {:<16} {:<12} {:>5} {:>9}",
                "CONTEXT", "NODE", "NAME", "STATUS", "EXIT", "SECONDS"
            );
            for (context, _, invocations) in &ok {
                for inv in invocations.iter() {
                    println!(
                        "{:<12} {:<20} {:<16} {:<12} {:>5} {:>9}",
                        context,
                        inv.node_id,
                        inv.node_name,
                        status_text(inv),
                        inv.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                        duration(inv).map(|d| format!("{d:.2}")).unwrap_or_default()
                    );
                }
            }
        }
        RunFormat::Table => {
            fold(ok.iter().flat_map(|(context, _, invocations)| {
                invocations
                    .iter()
                    .map(move |i| (format!("{context}/{}", i.node_name), i))
            }));
            for (context, cmd, _) in &ok {
                println!("{context}: {}", summary(cmd));
            }
        }
    }
    Ok(if bad || ok.iter().any(|(_, c, _)| failed(c)) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
