//! `comfyfleet`: the operator's command line.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod client;
mod commands;
mod format;
mod machine_view;
mod spec_file;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use comfyfleet_config::{Labels, Role};

/// Provision and inspect ComfyUI GPU fleets.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Operator config (admin.toml). Default: ~/.config/comfyfleet/admin.toml.
    #[arg(long, global = true, env = "COMFYFLEET_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join tokens: what a new machine needs to enroll.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List machines, or act on one.
    #[command(args_conflicts_with_subcommands = true)]
    Machines {
        #[command(subcommand)]
        command: Option<MachinesCommand>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
        /// Include revoked machines.
        #[arg(long)]
        all: bool,
    },
    /// Operator credentials (viewer, operator, admin).
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// Who changed what, newest first.
    Audit {
        #[arg(long, default_value = "50")]
        limit: u32,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Which credential this config holds, and its role.
    Whoami,
    /// What every machine would get from a spec: torch build, CUDA variant, wheels,
    /// or why it cannot run it. Installs nothing.
    Plan {
        /// The spec file (TOML or JSON; `-` reads standard input).
        #[arg(short, long = "file", value_name = "SPEC")]
        file: PathBuf,
        /// Plan offline against a saved `comfyfleet machines -o json` instead of the live fleet.
        #[arg(long, value_name = "FILE")]
        facts: Option<PathBuf>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Validate a spec, pin its git refs to commits and store it as a revision.
    Apply {
        /// The spec file (TOML or JSON; `-` reads standard input).
        #[arg(short, long = "file", value_name = "SPEC")]
        file: PathBuf,
    },
    /// Stored environments and their revisions.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Send a revision to the machines it targets.
    #[command(subcommand)]
    Rollout(RolloutCommand),
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Assign ENV[@REV] to every machine its selector targets (or only those named):
    /// each builds, verifies and switches to it. Assigning what a machine already runs
    /// changes nothing on it; assigning it again after a failure retries.
    Start {
        /// The environment, and optionally its revision: a number or an id prefix (default: the latest).
        #[arg(value_name = "ENV[@REV]")]
        reference: String,
        /// Only these machines (ids or unique prefixes, comma-separated or repeated).
        #[arg(long, value_name = "ID,ID...", value_delimiter = ',')]
        machines: Vec<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
        /// Follow the assigned machines until each is active, prepared or failed
        /// (exit status 1 if any failed or the timeout passed first).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "30m", value_parser = commands::convergence::parse_wait_limit)]
        timeout: commands::convergence::WaitLimit,
    },
}

#[derive(Debug, Subcommand)]
enum EnvCommand {
    /// Every environment with its latest revision.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// One revision's pinned spec: NAME (latest), NAME@NUMBER or NAME@ID-PREFIX.
    Show {
        #[arg(value_name = "NAME[@REV]")]
        reference: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Every revision of an environment, oldest first.
    History {
        name: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// What changed between two revisions (NAME@REV NAME@REV, or NAME@REV REV).
    Diff {
        #[arg(value_name = "NAME@REV_A")]
        from: String,
        #[arg(value_name = "REV_B")]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a join token and print only the token.
    Create {
        /// How long the token stays valid (e.g. 30m, 24h, 7d).
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: Duration,
        /// How many machines may enroll with it (default: unlimited until it expires).
        #[arg(long)]
        uses: Option<u32>,
        /// A label every machine enrolled with it gets, KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// A note for `token list`.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List join tokens (never their secrets).
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Delete a join token: no machine can enroll with it any more.
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
enum MachinesCommand {
    /// Everything known about one machine (ID or a unique prefix).
    Show {
        id: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Revoke a machine: its agent is cut off now and can never reconnect.
    Revoke { id: String },
    /// Send a machine back to the environment it ran before (still on its disk, so
    /// nothing is installed).
    Rollback {
        id: String,
        /// Follow the machine until it is active again or failed.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "5m", value_parser = commands::convergence::parse_wait_limit)]
        timeout: commands::convergence::WaitLimit,
    },
    /// Set (KEY=VALUE) or remove (KEY-) operator labels.
    Label {
        id: String,
        #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
        changes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum CredentialsCommand {
    /// Mint a credential and print a config file for it (keep it secret).
    Create {
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Print only the credential instead of a whole config file.
        #[arg(long)]
        token_only: bool,
    },
    /// List credentials (never their secrets).
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Revoke a credential by id.
    Revoke { id: String },
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = comfyfleet_config::duration::parse_positive(text).map_err(|e| e.to_string())?;
    if ttl < Duration::from_secs(1) { Err("the TTL must be at least 1s".into()) } else { Ok(ttl) }
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse().map_err(|e: comfyfleet_config::credential::UnknownRole| e.to_string())
}

async fn run(cli: Cli) -> anyhow::Result<String> {
    // Offline planning needs no controller and no credentials.
    if let Command::Plan { file, facts: Some(facts), output } = &cli.command {
        let spec = spec_file::load(file)?;
        let machines = commands::plan::read_facts(facts)?;
        return commands::plan::render(&commands::plan::plan(&spec.spec, &machines)?, *output);
    }
    // A spec with mistakes is reported before any connection is tried.
    let spec = match &cli.command {
        Command::Plan { file, .. } | Command::Apply { file } => Some(spec_file::load(file)?),
        _ => None,
    };
    let config_path = client::config_path(cli.config)?;
    let config = client::load_config(&config_path)?;
    let mut fleet = client::connect(&config).await?;
    match cli.command {
        Command::Token(TokenCommand::Create { ttl, uses, labels, description }) => {
            let labels = Labels::parse_pairs(&labels)?;
            commands::tokens::create(&mut fleet, ttl, uses.unwrap_or(0), &labels, description).await
        }
        Command::Token(TokenCommand::List { output }) => commands::tokens::list(&mut fleet, output).await,
        Command::Token(TokenCommand::Delete { id }) => commands::tokens::delete(&mut fleet, id).await,
        Command::Machines { command: None, output, all } => {
            commands::machines::list(&mut fleet, all, output).await
        }
        Command::Machines { command: Some(MachinesCommand::Show { id, output }), .. } => {
            commands::machines::show(&mut fleet, id, output).await
        }
        Command::Machines { command: Some(MachinesCommand::Revoke { id }), .. } => {
            commands::machines::revoke(&mut fleet, id).await
        }
        Command::Machines { command: Some(MachinesCommand::Rollback { id, wait, timeout }), .. } => {
            commands::machines::rollback(&mut fleet, id, wait.then_some(timeout)).await
        }
        Command::Machines { command: Some(MachinesCommand::Label { id, changes }), .. } => {
            commands::machines::label(&mut fleet, id, changes).await
        }
        Command::Credentials(CredentialsCommand::Create { name, role, token_only }) => {
            commands::credentials::create(&mut fleet, &config, name, role, token_only).await
        }
        Command::Credentials(CredentialsCommand::List { output }) => {
            commands::credentials::list(&mut fleet, output).await
        }
        Command::Credentials(CredentialsCommand::Revoke { id }) => {
            commands::credentials::revoke(&mut fleet, id).await
        }
        Command::Audit { limit, output } => commands::audit::list(&mut fleet, limit, output).await,
        Command::Plan { output, .. } => {
            let spec = spec.ok_or_else(|| anyhow::anyhow!("no spec"))?;
            let machines = commands::machines::fetch_all(&mut fleet, false).await?;
            commands::plan::render(&commands::plan::plan(&spec.spec, &machines)?, output)
        }
        Command::Apply { .. } => {
            let spec = spec.ok_or_else(|| anyhow::anyhow!("no spec"))?;
            commands::environments::apply(&mut fleet, spec).await
        }
        Command::Env(EnvCommand::List { output }) => commands::environments::list(&mut fleet, output).await,
        Command::Env(EnvCommand::Show { reference, output }) => {
            commands::environments::show(&mut fleet, reference, output).await
        }
        Command::Env(EnvCommand::History { name, output }) => {
            commands::environments::history(&mut fleet, name, output).await
        }
        Command::Env(EnvCommand::Diff { from, to }) => {
            commands::environments::diff(&mut fleet, from, to).await
        }
        Command::Rollout(RolloutCommand::Start { reference, machines, output, wait, timeout }) => {
            commands::rollout::start(&mut fleet, reference, machines, output, wait.then_some(timeout)).await
        }
        Command::Whoami => {
            let me = fleet
                .who_am_i(comfyfleet_proto::v1::WhoAmIRequest {})
                .await
                .map_err(commands::status_error)?
                .into_inner();
            Ok(format!(
                "{} ({}) with role {} on {} (controller {})\n",
                me.name,
                me.credential_id,
                commands::role_name(me.role),
                config.server,
                me.controller_version
            ))
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(text) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth a message.
            let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
