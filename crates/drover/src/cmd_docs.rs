//! `drover docs`: command documents.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::DocsCommand;
use crate::client_config::client;
use crate::output::print;

fn read(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

pub async fn run(cmd: DocsCommand) -> anyhow::Result<ExitCode> {
    let c = client()?;
    match cmd {
        DocsCommand::Create { name, file } => {
            let d = c.create_document(&name, &read(&file)?).await?;
            println!("created {} version {}", d.name, d.version);
        }
        DocsCommand::Update { name, file } => {
            let d = c.update_document(&name, &read(&file)?).await?;
            println!(
                "{} now has version {} (default stays version {} until set-default)",
                d.name,
                d.version,
                default_of(&c, &d.name).await
            );
        }
        DocsCommand::Get { name } => {
            let (n, v) =
                match name.rsplit_once(':') {
                    Some((n, v)) => (
                        n.to_string(),
                        Some(v.parse::<i64>().map_err(|_| {
                            crate::UsageError(format!("invalid version in {name:?}"))
                        })?),
                    ),
                    None => (name.clone(), None),
                };
            let d = c.get_document(&n, v).await?;
            print!("{}", d.content.unwrap_or_default());
        }
        DocsCommand::List(out) => {
            let list = c.list_documents().await?;
            let rows = list
                .documents
                .iter()
                .map(|d| {
                    vec![
                        d.name.clone(),
                        d.version.to_string(),
                        d.latest_version.to_string(),
                        if d.builtin { "yes" } else { "no" }.into(),
                        d.description.clone(),
                    ]
                })
                .collect();
            print(
                out.format,
                &["NAME", "DEFAULT", "LATEST", "BUILT-IN", "DESCRIPTION"],
                rows,
                &list.documents,
            )?;
        }
        DocsCommand::Delete { name } => {
            c.delete_document(&name).await?;
            println!("deleted {name}");
        }
        DocsCommand::Versions { name, output } => {
            let list = c.document_versions(&name).await?;
            let rows = list
                .documents
                .iter()
                .map(|d| {
                    vec![
                        d.version.to_string(),
                        if d.is_default { "yes" } else { "" }.into(),
                        d.format.clone(),
                        d.created_at.clone(),
                    ]
                })
                .collect();
            print(
                output.format,
                &["VERSION", "DEFAULT", "FORMAT", "CREATED"],
                rows,
                &list.documents,
            )?;
        }
        DocsCommand::SetDefault { name, version } => {
            let d = c.set_default_version(&name, version).await?;
            println!("{} runs version {} by default", d.name, d.version);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn default_of(c: &drover_client::Client, name: &str) -> String {
    c.get_document(name, None)
        .await
        .map(|d| d.version.to_string())
        .unwrap_or_else(|_| "?".into())
}
