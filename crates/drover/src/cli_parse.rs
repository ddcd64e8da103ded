//! Which parser reads the command line: `drover agent ...`, the process that stays resident on
//! every node, is read by a command line of the agent's verbs only; everything else by [`Cli`].

use clap::{Parser, Subcommand};

use crate::cli::{Cli, Command, GlobalArgs};
use crate::cli_agent::AgentCommand;

/// `drover agent ...` alone: the same name, version, flags and `agent` verb as [`Cli`], and no
/// other verb.
#[derive(Debug, Parser)]
#[command(
    name = "drover",
    version,
    about = "Remote and session management of a fleet of servers"
)]
struct AgentCli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: AgentVerb,
}

#[derive(Debug, Subcommand)]
enum AgentVerb {
    /// The node side: register, run, install as a service.
    #[command(subcommand)]
    Agent(AgentCommand),
}

impl Cli {
    /// Parses the command line. `drover agent ...` is parsed by [`AgentCli`], which builds only
    /// the agent's verbs: the agent is the process that stays resident on every node, and
    /// building the forty other verbs' arguments touches code that would then stay in its
    /// memory for good (BENCHMARKS.md, section 9). Anything else, global flags before `agent`
    /// included, goes through the whole command line.
    pub fn parse_args() -> Self {
        Self::parse_from_args(std::env::args_os())
    }

    fn parse_from_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Self {
        let args: Vec<std::ffi::OsString> = args.into_iter().collect();
        if args.get(1).is_some_and(|a| a == "agent") {
            let AgentCli {
                global,
                command: AgentVerb::Agent(cmd),
            } = AgentCli::parse_from(args);
            return Cli {
                global,
                command: Command::Agent(cmd),
            };
        }
        Cli::parse_from(args)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clap::CommandFactory;

    fn argv(args: &[&str]) -> Vec<std::ffi::OsString> {
        std::iter::once("drover")
            .chain(args.iter().copied())
            .map(Into::into)
            .collect()
    }

    #[test]
    fn both_command_lines_are_well_formed() {
        Cli::command().debug_assert();
        AgentCli::command().debug_assert();
    }

    /// `drover agent ...` means the same through the agent's own parser as through the whole
    /// command line: the same arguments, the same help and the same errors, word for word.
    #[test]
    fn the_agents_parser_agrees_with_the_whole_command_line() {
        for args in [
            &["agent", "run", "--state-dir", "/var/lib/x"][..],
            &[
                "agent",
                "-vv",
                "run",
                "--log-format",
                "json",
                "--context",
                "prod",
            ],
            &[
                "agent",
                "register",
                "--server",
                "https://s:8443",
                "--activation",
                "a:b",
            ],
            &[
                "agent",
                "register",
                "--server",
                "s",
                "--activation",
                "a",
                "--tag",
                "k=v",
            ],
            &["agent", "install-service"],
            &["agent", "configure-sshd"],
        ] {
            let fast = Cli::parse_from_args(argv(args));
            let whole = Cli::try_parse_from(argv(args)).unwrap();
            assert_eq!(format!("{fast:?}"), format!("{whole:?}"), "{args:?}");
            assert!(matches!(fast.command, Command::Agent(_)), "{args:?}");
        }
        for args in [
            &["agent"][..],
            &["agent", "--help"],
            &["agent", "run", "--help"],
            &["agent", "bogus"],
            &["agent", "run", "--no-such-flag"],
            &["agent", "register"],
            &["agent", "--version"],
        ] {
            let fast = AgentCli::try_parse_from(argv(args)).unwrap_err();
            let whole = Cli::try_parse_from(argv(args)).unwrap_err();
            assert_eq!(fast.kind(), whole.kind(), "{args:?}");
            assert_eq!(fast.to_string(), whole.to_string(), "{args:?}");
        }
    }

    #[test]
    fn other_verbs_and_flags_before_agent_take_the_whole_command_line() {
        let cli = Cli::parse_from_args(argv(&["-v", "agent", "run"]));
        assert_eq!(cli.global.verbose, 1);
        assert!(matches!(cli.command, Command::Agent(AgentCommand::Run(_))));
        let cli = Cli::parse_from_args(argv(&["nodes", "list"]));
        assert!(matches!(cli.command, Command::Nodes(_)));
    }
}
