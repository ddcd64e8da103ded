//! `drover sessions list|show|terminate|replay|download`: the session history and recordings.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use comfy_table::Table;
use drover_api::SessionView;

use crate::cli::{Format, SessionsCommand};

pub async fn run(cmd: SessionsCommand) -> anyhow::Result<ExitCode> {
    let client = crate::client_config::client()?;
    match cmd {
        SessionsCommand::List {
            node,
            active,
            limit,
            output,
        } => {
            let list = client
                .list_sessions(node.as_deref(), active, None, limit)
                .await?;
            match output.format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&list.sessions)?),
                Format::Csv => anyhow::bail!("-o csv is not offered for sessions; use json"),
                Format::Table => print_table(&list.sessions),
            }
        }
        SessionsCommand::Show { id, output } => {
            let s = client.get_session(&id).await?;
            match output.format {
                Format::Table => print_one(&s),
                _ => println!("{}", serde_json::to_string_pretty(&s)?),
            }
        }
        SessionsCommand::Terminate { id } => {
            client.terminate_session(&id).await?;
            println!("terminating {id}");
        }
        SessionsCommand::Download { id, out } => {
            let path = out.unwrap_or_else(|| format!("{id}.cast").into());
            let mut resp = client.recording(&id).await?;
            let mut f = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            while let Some(chunk) = resp.chunk().await.context("reading the recording")? {
                f.write_all(&chunk)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            eprintln!("saved {}", path.display());
        }
        SessionsCommand::Replay {
            id,
            speed,
            idle_time_limit,
        } => {
            if !(speed > 0.0 && speed.is_finite()) {
                anyhow::bail!("--speed must be a positive number, got {speed}");
            }
            if let Some(l) = idle_time_limit.filter(|l| !(*l >= 0.0 && l.is_finite())) {
                anyhow::bail!("--idle-time-limit must be zero or more seconds, got {l}");
            }
            replay(&client, &id, speed, idle_time_limit).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Plays a recording's output in this terminal with its timing, streaming it line by line.
async fn replay(
    client: &drover_client::Client,
    id: &str,
    speed: f64,
    idle_limit: Option<f64>,
) -> anyhow::Result<()> {
    let mut lines = Lines {
        resp: client.recording(id).await?,
        pending: Vec::new(),
        ready: std::collections::VecDeque::new(),
    };
    let mut stdout = std::io::stdout();
    let mut last = 0.0f64;
    let mut first = true;
    while let Some(line) = lines.next().await? {
        if first {
            first = false;
            continue; // the header
        }
        let Ok(serde_json::Value::Array(ev)) = serde_json::from_str::<serde_json::Value>(&line)
        else {
            anyhow::bail!("the recording has a line that is not an event: {line:.80}");
        };
        let (Some(t), Some(code), Some(data)) = (
            ev.first().and_then(|v| v.as_f64()),
            ev.get(1).and_then(|v| v.as_str()),
            ev.get(2).and_then(|v| v.as_str()),
        ) else {
            continue;
        };
        let mut wait = (t - last).max(0.0);
        if let Some(limit) = idle_limit {
            wait = wait.min(limit);
        }
        last = t;
        if code != "o" {
            continue;
        }
        let wait = Duration::from_secs_f64((wait / speed).min(3600.0));
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        stdout.write_all(data.as_bytes())?;
        stdout.flush()?;
    }
    Ok(())
}

/// A streamed response, line by line.
struct Lines {
    resp: drover_client::Download,
    pending: Vec<u8>,
    ready: std::collections::VecDeque<String>,
}

impl Lines {
    async fn next(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            if let Some(l) = self.ready.pop_front() {
                return Ok(Some(l));
            }
            match self.resp.chunk().await.context("reading the recording")? {
                Some(chunk) => {
                    self.pending.extend_from_slice(&chunk);
                    // Whole lines only; the rest waits for the next chunk.
                    while let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
                        let rest = self.pending.split_off(nl + 1);
                        let line = std::mem::replace(&mut self.pending, rest);
                        self.ready
                            .push_back(String::from_utf8_lossy(&line).trim_end().to_string());
                    }
                }
                None if self.pending.is_empty() => return Ok(None),
                None => {
                    let rest = std::mem::take(&mut self.pending);
                    return Ok(Some(String::from_utf8_lossy(&rest).into_owned()));
                }
            }
        }
    }
}

fn print_table(sessions: &[SessionView]) {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header([
        "ID", "USER", "NODE", "KIND", "STATUS", "STARTED", "ENDED", "EXIT",
    ]);
    for s in sessions {
        t.add_row([
            s.id.clone(),
            s.user.clone(),
            s.node.clone(),
            s.kind.clone(),
            s.status.clone(),
            s.started_at.clone(),
            s.ended_at.clone().unwrap_or_default(),
            s.exit_code.map(|c| c.to_string()).unwrap_or_default(),
        ]);
    }
    println!("{t}");
}

fn print_one(s: &SessionView) {
    println!("ID:        {}", s.id);
    println!("User:      {}", s.user);
    println!("Node:      {}", s.node);
    println!("Kind:      {} ({})", s.kind, s.document);
    if !s.run_as.is_empty() {
        println!("Run as:    {}", s.run_as);
    }
    if !s.reason.is_empty() {
        println!("Reason:    {}", s.reason);
    }
    println!("Status:    {}", s.status);
    if !s.detail.is_empty() {
        println!("Detail:    {}", s.detail);
    }
    println!("Started:   {}", s.started_at);
    if let Some(e) = &s.ended_at {
        println!("Ended:     {e}");
    }
    if let Some(c) = s.exit_code {
        println!("Exit:      {c}");
    }
    if !s.target.is_empty() {
        let plural = if s.connections == 1 { "" } else { "s" };
        println!(
            "Target:    {} ({} connection{plural})",
            s.target, s.connections
        );
        let sealed = if s.end_to_end { "yes" } else { "no" };
        println!("Sealed:    {sealed} (end-to-end encrypted between client and agent)");
    }
    println!("Bytes:     {} in, {} out", s.bytes_in, s.bytes_out);
    println!("Recorded:  {}", if s.recorded { "yes" } else { "no" });
    for e in &s.events {
        println!("  {}  {:<20} {:<12} {}", e.at, e.event, e.actor, e.detail);
    }
}
