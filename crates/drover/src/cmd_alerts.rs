//! `drover webhooks` (the audit log's events, posted to your endpoints) and `drover windows`
//! (when sessions on tagged nodes are expected).

use std::process::ExitCode;

use clap::Subcommand;
use drover_api::{ChangeWindowView, CreateChangeWindow, CreateWebhook, DeliveryView, WebhookView};

use crate::cli::{Format, OutputArgs};
use crate::client_config::client;
use crate::output::print;

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Post events to a URL: `drover webhooks create --url https://hooks.example/drover
    /// --event 'access.*' --event '*access_request' --event session.outside_change_window`.
    /// Prints the signing secret, once.
    Create {
        #[arg(long)]
        url: String,
        /// An event (an audit action) to post; `*` matches any run of characters
        /// (repeatable) [default: every event].
        #[arg(long = "event")]
        events: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// A webhook and its delivery log, newest attempt first.
    Show {
        id: String,
        /// Attempts to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Send a `webhook.test` event now; exits 1 unless the receiver answers 2xx.
    Test {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum WindowsCommand {
    /// When sessions on nodes with a tag are expected: `drover windows create --tag
    /// Environment=Production --days mon-fri --start 09:00 --end 17:00 --timezone
    /// Europe/Berlin`. A session started outside raises `session.outside_change_window`.
    Create {
        /// KEY=VALUE.
        #[arg(long)]
        tag: String,
        /// mon-fri, mon,wed,fri, sat-sun or daily.
        #[arg(long)]
        days: String,
        /// HH:MM, local time.
        #[arg(long)]
        start: String,
        /// HH:MM; at or before the start, the window closes the next day.
        #[arg(long)]
        end: String,
        /// An IANA time zone (Europe/Berlin, America/New_York) or UTC.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
    Delete {
        id: String,
    },
}

const HOOK_HEADERS: &[&str] = &["ID", "URL", "EVENTS", "CURSOR", "FAILING", "LAST ERROR"];

fn hook_row(h: &WebhookView) -> Vec<String> {
    vec![
        h.id.clone(),
        h.url.clone(),
        h.events.join(","),
        h.cursor.to_string(),
        match (&h.next_attempt_at, h.attempts) {
            (Some(next), n) if n > 0 => format!("{n} attempts, next {next}"),
            _ => String::new(),
        },
        h.last_error.clone(),
    ]
}

const DELIVERY_HEADERS: &[&str] = &[
    "AT", "SEQ", "EVENT", "ATTEMPT", "OUTCOME", "STATUS", "MS", "ERROR",
];

fn delivery_row(d: &DeliveryView) -> Vec<String> {
    vec![
        d.at.clone(),
        d.seq.to_string(),
        d.event.clone(),
        d.attempt.to_string(),
        d.outcome.clone(),
        d.status.to_string(),
        d.duration_ms.to_string(),
        d.error.clone(),
    ]
}

pub async fn webhooks(cmd: WebhooksCommand) -> anyhow::Result<ExitCode> {
    let c = client()?;
    match cmd {
        WebhooksCommand::Create {
            url,
            events,
            description,
            output,
        } => {
            let created = c
                .create_webhook(&CreateWebhook {
                    url,
                    events: if events.is_empty() {
                        vec!["*".into()]
                    } else {
                        events
                    },
                    description,
                })
                .await?;
            if output.format == Format::Table {
                print(
                    output.format,
                    HOOK_HEADERS,
                    vec![hook_row(&created.webhook)],
                    &created,
                )?;
                println!(
                    "\nSigning secret (shown only now; the receiver checks Drover-Signature with it):\n{}",
                    created.secret
                );
            } else {
                print(output.format, HOOK_HEADERS, vec![], &created)?;
            }
        }
        WebhooksCommand::List { output } => {
            let list = c.list_webhooks().await?;
            print(
                output.format,
                HOOK_HEADERS,
                list.iter().map(hook_row).collect(),
                &list,
            )?;
        }
        WebhooksCommand::Show { id, limit, output } => {
            let d = c.get_webhook(&id, limit).await?;
            if output.format == Format::Table {
                print(output.format, HOOK_HEADERS, vec![hook_row(&d.webhook)], &d)?;
                println!();
                let rows = d.deliveries.iter().map(delivery_row).collect();
                print(output.format, DELIVERY_HEADERS, rows, &d.deliveries)?;
            } else {
                print(output.format, HOOK_HEADERS, vec![], &d)?;
            }
        }
        WebhooksCommand::Test { id } => {
            let d = c.test_webhook(&id).await?;
            if d.outcome == "delivered" {
                println!(
                    "delivered: the receiver answered {} in {} ms",
                    d.status, d.duration_ms
                );
            } else {
                println!("not delivered: {}", d.error);
                return Ok(ExitCode::FAILURE);
            }
        }
        WebhooksCommand::Delete { id } => {
            c.delete_webhook(&id).await?;
            println!("deleted {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

const WINDOW_HEADERS: &[&str] = &["ID", "TAG", "DAYS", "FROM", "TO", "TIMEZONE", "DESCRIPTION"];

fn window_row(w: &ChangeWindowView) -> Vec<String> {
    vec![
        w.id.clone(),
        w.tag.clone(),
        w.days.clone(),
        w.start.clone(),
        w.end.clone(),
        w.timezone.clone(),
        w.description.clone(),
    ]
}

pub async fn windows(cmd: WindowsCommand) -> anyhow::Result<ExitCode> {
    let c = client()?;
    match cmd {
        WindowsCommand::Create {
            tag,
            days,
            start,
            end,
            timezone,
            description,
            output,
        } => {
            let w = c
                .create_change_window(&CreateChangeWindow {
                    tag,
                    days,
                    start,
                    end,
                    timezone,
                    description,
                })
                .await?;
            print(output.format, WINDOW_HEADERS, vec![window_row(&w)], &w)?;
        }
        WindowsCommand::List { output } => {
            let list = c.list_change_windows().await?;
            print(
                output.format,
                WINDOW_HEADERS,
                list.iter().map(window_row).collect(),
                &list,
            )?;
        }
        WindowsCommand::Delete { id } => {
            c.delete_change_window(&id).await?;
            println!("deleted {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
