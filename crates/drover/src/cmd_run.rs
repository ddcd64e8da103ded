//! `drover run`, `drover commands`, `drover invocations`: send a command, follow it with a
//! progress bar, and show results folded (identical results once, with how many nodes).

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use drover_api::{CommandView, InvocationView, SendCommand};
use drover_client::Client;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::cli::{CommandsCommand, InvocationsCommand, RunArgs, RunFormat};
use crate::client_config::client;
use crate::cmd_server::parse_duration;
use crate::UsageError;

/// `NAME=VALUE` pairs, then `NAME=FILE` pairs whose value is the file's text; a name given
/// twice builds a list.
pub(crate) fn parse_params(
    pairs: &[String],
    files: &[String],
) -> Result<BTreeMap<String, Value>, UsageError> {
    let split = |p: &str, flag: &str, what: &str| {
        p.split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .ok_or_else(|| UsageError(format!("invalid {flag} {p:?}: expected NAME={what}")))
    };
    let mut values = Vec::new();
    for p in pairs {
        values.push(split(p, "--param", "VALUE")?);
    }
    for p in files {
        let (k, file) = split(p, "--param-file", "FILE")?;
        let text = std::fs::read_to_string(&file)
            .map_err(|e| UsageError(format!("--param-file {k}: cannot read {file:?}: {e}")))?;
        values.push((k, text));
    }
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for (k, v) in values {
        let v = Value::String(v);
        match out.remove(&k) {
            None => {
                out.insert(k, v);
            }
            Some(Value::Array(mut items)) => {
                items.push(v);
                out.insert(k, Value::Array(items));
            }
            Some(first) => {
                out.insert(k, Value::Array(vec![first, v]));
            }
        }
    }
    Ok(out)
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut params = parse_params(&args.params, &args.param_files)?;
    let document = match (&args.document, args.command.is_empty()) {
        (Some(d), true) => d.clone(),
        (None, false) => {
            params.insert("commands".into(), Value::Array(vec![Value::String(args.command.join(" "))]));
            "RunShellScript".into()
        }
        (Some(_), false) => {
            return Err(UsageError("give either --doc or a command after --, not both".into()).into())
        }
        // `--param commands=...` or `--param-file commands=...` alone: a shell script.
        (None, true) if params.contains_key("commands") => "RunShellScript".into(),
        (None, true) => {
            return Err(UsageError("nothing to run: give --doc NAME or a command after --, e.g. drover run --targets all -- uptime".into()).into())
        }
    };
    let mut targets = args.targets.clone();
    if let Some(f) = &args.targets_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        targets.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    if targets.is_empty() {
        return Err(UsageError(
            "no targets: give --targets (all, node IDs or names, tag:KEY=VALUE) or --targets-file"
                .into(),
        )
        .into());
    }
    let delivery = parse_duration("delivery timeout", &args.delivery_timeout)?;
    let execution = parse_duration("execution timeout", &args.execution_timeout)?;
    let req = SendCommand {
        document,
        parameters: params,
        targets,
        max_concurrency: Some(args.max_concurrency.clone()),
        max_errors: Some(args.max_errors.clone()),
        delivery_timeout_secs: Some(delivery.as_secs()),
        execution_timeout_secs: Some(execution.as_secs()),
        comment: args.comment.clone(),
        output_limit: args.output_limit,
    };
    if !args.contexts.is_empty() {
        return crate::cmd_run_across::run(&args, &req).await;
    }
    let c = client()?;
    let cmd = c.send_command(&req).await?;
    if args.no_wait {
        // The ID alone is what scripts capture; `-o json` asks for the whole command.
        if args.format == RunFormat::Json {
            println!("{}", serde_json::to_string_pretty(&cmd)?);
        } else {
            println!("{}", cmd.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let done = follow(&c, cmd, args.follow).await?;
    report(&c, &done, args.per_node, args.format).await
}

/// Waits for the command to finish, showing a progress bar (on a terminal) and, with
/// `--follow`, output as it arrives.
pub(crate) async fn follow(
    c: &Client,
    cmd: CommandView,
    print_output: bool,
) -> anyhow::Result<CommandView> {
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(cmd.target_count.max(0) as u64);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {pos}/{len} done [{bar:30}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Some(bar)
    } else {
        None
    };
    let mut seen_output: HashMap<(String, String), (usize, usize)> = HashMap::new();
    let mut current = cmd;
    loop {
        if let Some(bar) = &bar {
            let finished: i64 = ["Success", "Failed", "TimedOut", "Cancelled"]
                .iter()
                .map(|s| current.counts.get(*s).copied().unwrap_or(0))
                .sum();
            bar.set_position(finished.max(0) as u64);
            bar.set_message(
                current
                    .counts
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        if print_output {
            print_new_output(c, &current.id, &mut seen_output, bar.as_ref()).await?;
        }
        if current.done {
            break;
        }
        current = c.wait_command(&current.id, current.version, 2000).await?;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(current)
}

async fn print_new_output(
    c: &Client,
    id: &str,
    seen: &mut HashMap<(String, String), (usize, usize)>,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<()> {
    for inv in c.list_invocations(id, true).await? {
        for step in &inv.steps {
            let key = (inv.node_name.clone(), step.name.clone());
            let (o, e) = seen.entry(key).or_default();
            for (text, at, err) in [
                (&step.stdout, &mut *o, false),
                (&step.stderr, &mut *e, true),
            ] {
                if let Some(new) = text.get(*at..).filter(|s| !s.is_empty()) {
                    for line in new.lines() {
                        let line =
                            format!("[{}] {}{line}", inv.node_name, if err { "! " } else { "" });
                        match bar {
                            Some(b) => b.println(line),
                            None => println!("{line}"),
                        }
                    }
                    *at = text.len();
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn failed(cmd: &CommandView) -> bool {
    cmd.counts.iter().any(|(k, v)| k != "Success" && *v > 0)
}

/// Prints the results: folded, per node, JSON, or every node's stdout.
async fn report(
    c: &Client,
    cmd: &CommandView,
    per_node: bool,
    format: RunFormat,
) -> anyhow::Result<ExitCode> {
    let invocations = c.list_invocations(&cmd.id, true).await?;
    if cmd.output_pruned {
        eprintln!("{PRUNED}");
    }
    match format {
        RunFormat::Json => {
            let v = serde_json::json!({ "command": cmd, "invocations": invocations });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        RunFormat::Text => {
            for inv in &invocations {
                for s in &inv.steps {
                    print!("{}", s.stdout);
                }
            }
        }
        RunFormat::Table if per_node => {
            println!(
                "{:<20} {:<16} {:<12} {:>5} {:>9}",
                "NODE", "NAME", "STATUS", "EXIT", "SECONDS"
            );
            for inv in &invocations {
                println!(
                    "{:<20} {:<16} {:<12} {:>5} {:>9}",
                    inv.node_id,
                    inv.node_name,
                    status_text(inv),
                    inv.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                    duration(inv).map(|d| format!("{d:.2}")).unwrap_or_default()
                );
            }
        }
        RunFormat::Table => print_folded(cmd, &invocations),
    }
    Ok(if failed(cmd) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub(crate) fn status_text(inv: &InvocationView) -> String {
    if inv.status_detail.is_empty() || inv.status_detail == inv.status {
        inv.status.clone()
    } else {
        format!("{} ({})", inv.status, inv.status_detail)
    }
}

pub(crate) fn duration(inv: &InvocationView) -> Option<f64> {
    let parse = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
    };
    let a = parse(inv.started_at.as_deref()?)?;
    let b = parse(inv.finished_at.as_deref()?)?;
    Some((b - a).as_seconds_f64())
}

/// Identical results (status, exit code, output) once, with how many nodes and which.
fn print_folded(cmd: &CommandView, invocations: &[InvocationView]) {
    fold(invocations.iter().map(|i| (i.node_name.clone(), i)));
    println!("{}", summary(cmd));
}

/// `command ID STATUS: counts`.
pub(crate) fn summary(cmd: &CommandView) -> String {
    format!(
        "command {} {}: {}",
        cmd.id,
        cmd.status,
        cmd.counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Prints groups of identical results, failures first, each with its nodes' labels.
pub(crate) fn fold<'a>(invocations: impl Iterator<Item = (String, &'a InvocationView)>) {
    let mut groups: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    for (label, inv) in invocations {
        let mut output = String::new();
        for s in &inv.steps {
            output.push_str(&s.stdout);
            if !s.stderr.is_empty() {
                output.push_str(&s.stderr);
            }
        }
        let exit = inv
            .exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into());
        groups
            .entry((status_text(inv), exit, output))
            .or_default()
            .push(label);
    }
    // Failures first: they are what an operator looks for.
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by_key(|((status, _, _), nodes)| (status.starts_with("Success"), nodes.len()));
    for ((status, exit, output), names) in groups {
        let shown = names.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
        let more = if names.len() > 8 {
            format!(" and {} more", names.len() - 8)
        } else {
            String::new()
        };
        println!(
            "{} node{}: {status}, exit {exit}: {shown}{more}",
            names.len(),
            if names.len() == 1 { "" } else { "s" }
        );
        for line in output.lines() {
            println!("    {line}");
        }
    }
}

pub(crate) const PRUNED: &str = "note: the retention policy deleted this command's output \
     (server setting output_max_age); statuses and exit codes remain";

pub async fn commands(cmd: CommandsCommand) -> anyhow::Result<ExitCode> {
    let c = client()?;
    match cmd {
        CommandsCommand::List { limit, output } => {
            let list = c.list_commands(limit.clamp(1, 1000), None).await?;
            let rows = list
                .commands
                .iter()
                .map(|x| {
                    vec![
                        x.id.clone(),
                        format!("{}:{}", x.document, x.document_version),
                        x.status.clone(),
                        x.target_count.to_string(),
                        x.created_at.clone(),
                        x.comment.clone(),
                    ]
                })
                .collect();
            crate::output::print(
                output.format,
                &["ID", "DOCUMENT", "STATUS", "TARGETS", "CREATED", "COMMENT"],
                rows,
                &list.commands,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        CommandsCommand::Show {
            id,
            per_node,
            format,
        } => {
            let cmd = c.get_command(&id).await?;
            report(&c, &cmd, per_node, format).await
        }
        CommandsCommand::Cancel { id } => {
            let cmd = c.cancel_command(&id).await?;
            println!("cancelling {}: {}", cmd.id, cmd.status);
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn invocations(cmd: InvocationsCommand) -> anyhow::Result<ExitCode> {
    let c = client()?;
    match cmd {
        InvocationsCommand::List { command, output } => {
            let list = c.list_invocations(&command, false).await?;
            let rows = list
                .iter()
                .map(|i| {
                    vec![
                        i.node_id.clone(),
                        i.node_name.clone(),
                        status_text(i),
                        i.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                    ]
                })
                .collect();
            crate::output::print(
                output.format,
                &["NODE", "NAME", "STATUS", "EXIT"],
                rows,
                &list,
            )?;
        }
        InvocationsCommand::Output {
            id,
            node,
            step,
            follow,
        } => {
            let node_id = if node.starts_with("n-") {
                node.clone()
            } else {
                c.get_node(&node).await?.id
            };
            let mut printed: HashMap<String, (usize, usize)> = HashMap::new();
            let mut headed = std::collections::HashSet::new();
            loop {
                let inv = c.get_invocation(&id, &node_id).await?;
                let mut found = false;
                for s in inv
                    .steps
                    .iter()
                    .filter(|s| step.as_ref().is_none_or(|want| *want == s.name))
                {
                    found = true;
                    if step.is_none() && headed.insert(s.name.clone()) {
                        eprintln!("--- step {}", s.name);
                    }
                    let (o, e) = printed.entry(s.name.clone()).or_default();
                    if let Some(new) = s.stdout.get(*o..) {
                        print!("{new}");
                        *o = s.stdout.len();
                    }
                    if let Some(new) = s.stderr.get(*e..) {
                        eprint!("{new}");
                        *e = s.stderr.len();
                    }
                }
                let done = matches!(
                    inv.status.as_str(),
                    "Success" | "Failed" | "TimedOut" | "Cancelled"
                );
                if done || !follow {
                    for s in inv
                        .steps
                        .iter()
                        .filter(|s| step.as_ref().is_none_or(|want| *want == s.name))
                    {
                        eprintln!(
                            "--- step {}: {}, exit {}{}",
                            s.name,
                            s.status,
                            s.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                            if s.truncated {
                                " (output truncated by the agent at the output limit)"
                            } else {
                                ""
                            }
                        );
                    }
                    let silent = inv
                        .steps
                        .iter()
                        .all(|s| s.stdout.is_empty() && s.stderr.is_empty());
                    if silent && c.get_command(&id).await?.output_pruned {
                        eprintln!("{PRUNED}");
                    }
                    if !found {
                        if let Some(want) = &step {
                            return Err(
                                UsageError(format!("no step {want:?} in this invocation")).into()
                            );
                        }
                    }
                    break;
                }
                // Following: wait for stored progress instead of polling on a timer.
                let cmd = c.get_command(&id).await?;
                c.wait_command(&id, cmd.version, 2000).await?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
