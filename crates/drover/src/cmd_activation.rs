//! `drover activation`: create and list activations.

use std::process::ExitCode;

use drover_api::CreateActivation;

use crate::cli::{ActivationCommand, Format};
use crate::client_config::client;
use crate::cmd_server::parse_duration;
use crate::output::{parse_tags, print};

pub async fn run(cmd: ActivationCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ActivationCommand::Create(args) => {
            let expires = parse_duration("expiry", &args.expires)?;
            let tags = parse_tags(&args.tags)?;
            let c = client()?;
            let a = c
                .create_activation(&CreateActivation {
                    registration_limit: args.count,
                    expires_in_secs: expires.as_secs(),
                    tags,
                    description: args.description,
                    default_name: args.default_name,
                })
                .await?;
            match args.output.format {
                Format::Table => {
                    println!("Activation ID:   {}", a.id);
                    println!("Activation code: {}", a.code);
                    println!("Registrations:   {}", a.registration_limit);
                    println!("Expires:         {}", a.expires_at);
                    println!();
                    println!("The code is shown only now. On each node:");
                    println!(
                        "  drover agent register --server {} --activation {}:{} --ca-fingerprint <CA fingerprint>",
                        c.base_url(),
                        a.id,
                        a.code
                    );
                }
                f => print(
                    f,
                    &["ID", "CODE", "LIMIT", "EXPIRES"],
                    vec![vec![
                        a.id.clone(),
                        a.code.clone(),
                        a.registration_limit.to_string(),
                        a.expires_at.clone(),
                    ]],
                    &a,
                )?,
            }
        }
        ActivationCommand::List(out) => {
            let list = client()?.list_activations().await?;
            let rows = list
                .activations
                .iter()
                .map(|a| {
                    vec![
                        a.id.clone(),
                        format!("{}/{}", a.registrations, a.registration_limit),
                        a.expires_at.clone(),
                        if a.expired { "yes" } else { "no" }.into(),
                        a.tags
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(","),
                        a.description.clone(),
                    ]
                })
                .collect();
            print(
                out.format,
                &["ID", "USED", "EXPIRES", "EXPIRED", "TAGS", "DESCRIPTION"],
                rows,
                &list.activations,
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
