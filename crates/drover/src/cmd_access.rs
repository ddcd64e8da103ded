//! `drover users`, `drover groups`, `drover tokens`, `drover whoami`, `drover logout`.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use drover_api::{
    CreateGroupRequest, CreateTokenRequest, CreateUserRequest, TokenView, UpdateUserRequest,
    UserView,
};

use crate::cli::OutputArgs;
use crate::client_config::client;
use crate::cmd_server::parse_duration;
use crate::output::{parse_tags, print};

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a local user (the password is asked for, or read with --password-stdin).
    Create {
        name: String,
        /// Attribute as KEY=VALUE (repeatable): `department=Amber`.
        #[arg(long = "attr")]
        attributes: Vec<String>,
        /// A group to join (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Set a password (asked for on the terminal).
        #[arg(long)]
        password: bool,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    List(OutputArgs),
    Show {
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Set attributes: `drover users set-attr alice department=Amber`.
    SetAttr {
        name: String,
        pairs: Vec<String>,
    },
    /// Remove attributes by key.
    UnsetAttr {
        name: String,
        keys: Vec<String>,
    },
    /// Add the user to groups, or (with --remove) take it out.
    Groups {
        name: String,
        groups: Vec<String>,
        #[arg(long)]
        remove: bool,
    },
    /// Set a new password (asked for, or read with --password-stdin); lifts a lockout.
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Refuse the user everywhere at once: its tokens stop working, its sessions end.
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    List(OutputArgs),
    Delete {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Make an API token (shown once). Yours unless --user names another.
    Create(TokenCreateArgs),
    List {
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revoke a token by ID or name.
    Revoke {
        token: String,
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    pub name: String,
    #[arg(long)]
    pub user: Option<String>,
    /// Actions it may take (repeatable or comma-separated; `read` for every read-only one);
    /// none for all of the user's.
    #[arg(long, value_delimiter = ',')]
    pub scope: Vec<String>,
    /// Lifetime (`30d`, `12h`); none for a token that never expires.
    #[arg(long)]
    pub expires: Option<String>,
}

fn password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let p = rpassword::prompt_password("Password: ")?;
    let again = rpassword::prompt_password("Again: ")?;
    if p != again {
        anyhow::bail!("the passwords differ; nothing was changed");
    }
    Ok(p)
}

fn user_row(u: &UserView) -> Vec<String> {
    vec![
        u.name.clone(),
        u.source.clone(),
        u.groups.join(","),
        u.attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        if u.disabled {
            "disabled".into()
        } else if let Some(t) = &u.locked_until {
            format!("locked until {t}")
        } else {
            "active".into()
        },
    ]
}

const USER_HEADERS: &[&str] = &["NAME", "SOURCE", "GROUPS", "ATTRIBUTES", "STATE"];

async fn update(name: &str, req: UpdateUserRequest) -> anyhow::Result<ExitCode> {
    let u = client()?.update_user(name, &req).await?;
    print(
        crate::cli::Format::Table,
        USER_HEADERS,
        vec![user_row(&u)],
        &u,
    )?;
    Ok(ExitCode::SUCCESS)
}

pub async fn users(cmd: UsersCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UsersCommand::Create {
            name,
            attributes,
            groups,
            password: ask,
            password_stdin,
        } => {
            let password = (ask || password_stdin)
                .then(|| password(password_stdin))
                .transpose()?;
            let u = client()?
                .create_user(&CreateUserRequest {
                    name,
                    password,
                    attributes: parse_tags(&attributes)?,
                    groups,
                })
                .await?;
            println!("created user {}", u.name);
        }
        UsersCommand::List(out) => {
            let list = client()?.list_users().await?;
            print(
                out.format,
                USER_HEADERS,
                list.iter().map(user_row).collect(),
                &list,
            )?;
        }
        UsersCommand::Show { name, output } => {
            let u = client()?.get_user(&name).await?;
            print(output.format, USER_HEADERS, vec![user_row(&u)], &u)?;
        }
        UsersCommand::SetAttr { name, pairs } => {
            return update(
                &name,
                UpdateUserRequest {
                    set_attributes: parse_tags(&pairs)?,
                    ..Default::default()
                },
            )
            .await
        }
        UsersCommand::UnsetAttr { name, keys } => {
            return update(
                &name,
                UpdateUserRequest {
                    unset_attributes: keys,
                    ..Default::default()
                },
            )
            .await
        }
        UsersCommand::Groups {
            name,
            groups,
            remove,
        } => {
            let mut req = UpdateUserRequest::default();
            if remove {
                req.remove_groups = groups;
            } else {
                req.add_groups = groups;
            }
            return update(&name, req).await;
        }
        UsersCommand::Passwd {
            name,
            password_stdin,
        } => {
            let req = UpdateUserRequest {
                password: Some(password(password_stdin)?),
                unlock: true,
                ..Default::default()
            };
            client()?.update_user(&name, &req).await?;
            println!("password of {name} changed");
        }
        UsersCommand::Disable { name } => {
            let req = UpdateUserRequest {
                disabled: Some(true),
                ..Default::default()
            };
            return update(&name, req).await;
        }
        UsersCommand::Enable { name } => {
            let req = UpdateUserRequest {
                disabled: Some(false),
                ..Default::default()
            };
            return update(&name, req).await;
        }
        UsersCommand::Delete { name } => {
            client()?.delete_user(&name).await?;
            println!("deleted user {name} and its tokens");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn groups(cmd: GroupsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        GroupsCommand::Create { name, description } => {
            client()?
                .create_group(&CreateGroupRequest {
                    name: name.clone(),
                    description,
                })
                .await?;
            println!("created group {name}");
        }
        GroupsCommand::List(out) => {
            let list = client()?.list_groups().await?;
            let rows = list
                .iter()
                .map(|g| vec![g.name.clone(), g.members.join(","), g.description.clone()])
                .collect();
            print(out.format, &["NAME", "MEMBERS", "DESCRIPTION"], rows, &list)?;
        }
        GroupsCommand::Delete { name } => {
            client()?.delete_group(&name).await?;
            println!("deleted group {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn me_or(user: Option<String>) -> anyhow::Result<String> {
    match user {
        Some(u) => Ok(u),
        None => Ok(client()?.whoami().await?.user.name),
    }
}

fn token_row(t: &TokenView) -> Vec<String> {
    vec![
        t.id.clone(),
        t.name.clone(),
        t.kind.clone(),
        if t.scope.is_empty() {
            "all".into()
        } else {
            t.scope.join(",")
        },
        t.expires_at.clone().unwrap_or_else(|| "never".into()),
        if t.live {
            "live".into()
        } else if t.revoked_at.is_some() {
            "revoked".into()
        } else {
            "expired".into()
        },
    ]
}

pub async fn tokens(cmd: TokensCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokensCommand::Create(args) => {
            let user = me_or(args.user).await?;
            let expires_in_secs = args
                .expires
                .map(|e| parse_duration("expiry", &e).map(|d| d.as_secs()))
                .transpose()?;
            let t = client()?
                .create_token(
                    &user,
                    &CreateTokenRequest {
                        name: args.name,
                        scope: args.scope,
                        expires_in_secs,
                    },
                )
                .await?;
            println!("{}", t.token);
            eprintln!(
                "token {} ({}) of {user}: shown only now; keep it like a password",
                t.view.id, t.view.name
            );
        }
        TokensCommand::List { user, output } => {
            let user = me_or(user).await?;
            let list = client()?.list_tokens(&user).await?;
            print(
                output.format,
                &["ID", "NAME", "KIND", "SCOPE", "EXPIRES", "STATE"],
                list.iter().map(token_row).collect(),
                &list,
            )?;
        }
        TokensCommand::Revoke { token, user } => {
            let user = me_or(user).await?;
            client()?
                .revoke_token(&user, &token)
                .await
                .with_context(|| format!("revoking {token}"))?;
            println!("revoked {token}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn whoami(out: OutputArgs) -> anyhow::Result<ExitCode> {
    let me = client()?.whoami().await?;
    print(out.format, USER_HEADERS, vec![user_row(&me.user)], &me)?;
    Ok(ExitCode::SUCCESS)
}
