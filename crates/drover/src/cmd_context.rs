//! `drover context`: named logins to several Drover servers (one per environment or region),
//! like kubectl's contexts. Every verb takes `--context NAME`; `drover run --contexts a,b`
//! sends one command through several.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;

use crate::cli::OutputArgs;
use crate::client_config::{
    check_context_name, context_name, load_file, login_as, save_file, LoginArgs,
};
use crate::output::print;

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// Log in to a server and keep the login as context NAME (the first becomes current):
    /// `drover context add prod-eu --server https://drover.eu:8443 --token-file t`.
    Add {
        name: String,
        #[command(flatten)]
        login: LoginArgs,
    },
    /// Make NAME the context verbs use when --context is not given.
    Use { name: String },
    /// The contexts, and which one is current.
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Forget a context (its token stays valid on the server: revoke it there if need be).
    Remove { name: String },
}

#[derive(serde::Serialize)]
struct Row {
    name: String,
    server: String,
    current: bool,
    logged_in: bool,
}

pub async fn run(cmd: ContextCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ContextCommand::Add { name, login } => login_as(&name, login).await,
        ContextCommand::Use { name } => {
            let mut file = load_file()?;
            if !file.contexts.contains_key(&name) {
                bail!(
                    "no context {name:?} (there are: {}); add it with 'drover context add'",
                    file.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            file.current = name.clone();
            save_file(&file)?;
            println!("now using context {name}");
            Ok(ExitCode::SUCCESS)
        }
        ContextCommand::List { output } => {
            let file = load_file()?;
            let current = context_name(&file);
            let rows: Vec<Row> = file
                .contexts
                .iter()
                .map(|(name, c)| Row {
                    name: name.clone(),
                    server: c.server.clone(),
                    current: *name == current,
                    logged_in: !c.token.is_empty(),
                })
                .collect();
            let table = rows
                .iter()
                .map(|r| {
                    vec![
                        if r.current { "*" } else { "" }.to_string(),
                        r.name.clone(),
                        r.server.clone(),
                        if r.logged_in { "yes" } else { "no" }.to_string(),
                    ]
                })
                .collect();
            print(
                output.format,
                &["CURRENT", "NAME", "SERVER", "LOGGED IN"],
                table,
                &rows,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        ContextCommand::Remove { name } => {
            check_context_name(&name)?;
            let mut file = load_file()?;
            if file.contexts.remove(&name).is_none() {
                bail!("no context {name:?}");
            }
            if file.current == name {
                // Another one becomes current only when it is the only choice.
                file.current = match file.contexts.keys().collect::<Vec<_>>().as_slice() {
                    [only] => only.to_string(),
                    _ => String::new(),
                };
            }
            save_file(&file)?;
            println!("removed context {name}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
