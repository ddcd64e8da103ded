//! `drover params`: Parameter Store (configuration and secrets that documents reference).

use std::io::Read;
use std::process::ExitCode;

use clap::Subcommand;
use drover_api::{LabelParameterRequest, ParameterView, PutParameterRequest};
use drover_client::ParamSelector;

use crate::cli::OutputArgs;
use crate::client_config::client;
use crate::output::print;

#[derive(Debug, Subcommand)]
pub enum ParamsCommand {
    /// Store a value: `drover params put /app/prod/db-url postgres://db/app`. A secret is
    /// better read from standard input (`-`) than given on the command line, where the
    /// shell's history keeps it.
    Put {
        name: String,
        /// The value, or `-` to read it from standard input (one trailing newline dropped).
        value: String,
        /// String, StringList (comma-separated) or SecureString (encrypted at rest).
        #[arg(long = "type", default_value = "String")]
        kind: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Add a version to an existing parameter.
        #[arg(long)]
        overwrite: bool,
    },
    /// One parameter: NAME (the newest version), NAME:VERSION or NAME:LABEL.
    Get {
        name: String,
        /// Show a SecureString's value (needs DecryptParameter).
        #[arg(long)]
        decrypt: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// The parameters under a path, newest versions.
    GetByPath {
        path: String,
        /// Under sub-paths too.
        #[arg(long)]
        recursive: bool,
        #[arg(long)]
        decrypt: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Every version kept, oldest first.
    History {
        name: String,
        #[arg(long)]
        decrypt: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Put labels on a version (a label moves from any other version).
    Label {
        name: String,
        #[arg(long)]
        version: i64,
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// Delete a parameter and all its versions.
    Delete { name: String },
}

const HEADERS: &[&str] = &[
    "NAME", "TYPE", "VERSION", "LABELS", "VALUE", "MODIFIED", "BY",
];

fn row(p: &ParameterView) -> Vec<String> {
    vec![
        p.name.clone(),
        p.kind.clone(),
        p.version.to_string(),
        p.labels.join(","),
        p.value.clone().unwrap_or_else(|| "(encrypted)".into()),
        p.modified_at.clone(),
        p.modified_by.clone(),
    ]
}

/// `NAME`, `NAME:3` or `NAME:stable` (names hold no `:`).
fn selector(spec: &str) -> (String, ParamSelector) {
    match spec.rsplit_once(':') {
        Some((name, v)) => match v.parse::<i64>() {
            Ok(n) => (
                name.to_string(),
                ParamSelector {
                    version: Some(n),
                    label: None,
                },
            ),
            Err(_) => (
                name.to_string(),
                ParamSelector {
                    version: None,
                    label: Some(v.to_string()),
                },
            ),
        },
        None => (spec.to_string(), ParamSelector::default()),
    }
}

pub async fn run(cmd: ParamsCommand) -> anyhow::Result<ExitCode> {
    let c = client()?;
    match cmd {
        ParamsCommand::Put {
            name,
            value,
            kind,
            description,
            overwrite,
        } => {
            let value = if value == "-" {
                let mut v = String::new();
                std::io::stdin().read_to_string(&mut v)?;
                v.strip_suffix('\n').map(str::to_string).unwrap_or(v)
            } else {
                value
            };
            let r = c
                .put_parameter(&PutParameterRequest {
                    name,
                    kind,
                    value,
                    description,
                    overwrite,
                })
                .await?;
            println!("{} version {}", r.name, r.version);
        }
        ParamsCommand::Get {
            name,
            decrypt,
            output,
        } => {
            let (name, which) = selector(&name);
            let p = c.get_parameter(&name, &which, decrypt).await?;
            print(output.format, HEADERS, vec![row(&p)], &p)?;
        }
        ParamsCommand::GetByPath {
            path,
            recursive,
            decrypt,
            output,
        } => {
            let list = c.parameters_by_path(&path, recursive, decrypt).await?;
            print(
                output.format,
                HEADERS,
                list.iter().map(row).collect(),
                &list,
            )?;
        }
        ParamsCommand::History {
            name,
            decrypt,
            output,
        } => {
            let list = c.parameter_history(&name, decrypt).await?;
            print(
                output.format,
                HEADERS,
                list.iter().map(row).collect(),
                &list,
            )?;
        }
        ParamsCommand::Label {
            name,
            version,
            labels,
        } => {
            c.label_parameter(&LabelParameterRequest {
                name: name.clone(),
                version,
                labels,
            })
            .await?;
            println!("{name} version {version} labelled");
        }
        ParamsCommand::Delete { name } => {
            c.delete_parameter(&name).await?;
            println!("deleted {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_or_a_label_follows_the_last_colon() {
        let (n, s) = selector("/app/db:3");
        assert_eq!((n.as_str(), s.version, s.label), ("/app/db", Some(3), None));
        let (n, s) = selector("/app/db:stable");
        assert_eq!(
            (n.as_str(), s.version, s.label.as_deref()),
            ("/app/db", None, Some("stable"))
        );
        let (n, s) = selector("/app/db");
        assert_eq!((n.as_str(), s.version, s.label), ("/app/db", None, None));
    }
}
