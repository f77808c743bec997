//! `comfyfleet`: the operator's command line.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod args;
mod checkout;
mod client;
mod commands;
mod format;
mod machine_view;
mod spec_file;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use args::*;
use clap::{Parser, Subcommand, ValueEnum};
use comfyfleet_config::Labels;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportArg {
    Gpus,
    Environments,
    Optimizations,
    Drift,
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
        /// Only the machines this selector picks: hardware, labels and what runs on
        /// them, e.g. 'gpu.compute >= 8.9 && opt.sageattention != verified'.
        #[arg(long = "where", value_name = "SELECTOR")]
        selector: Option<String>,
    },
    /// Reports over the fleet's hardware and software: gpus (model × compute
    /// capability × driver × CUDA), environments (revision × torch × phase),
    /// optimizations (outcomes per GPU model, with the most common failure) and
    /// drift (machines whose environment changed since it was verified).
    Report {
        #[arg(value_enum)]
        report: ReportArg,
        /// Only the machines this selector picks (as `machines --where`).
        #[arg(long = "where", value_name = "SELECTOR")]
        selector: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Operator credentials (viewer, operator, admin).
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// Credentials for the specs' sources (a private index or git host), named in
    /// specs as `credential = "NAME"`. Admin only; secrets are never shown back.
    #[command(subcommand)]
    Secrets(SecretsCommand),
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
        /// Also lock this build class, which no targeted machine has yet
        /// (repeatable), e.g. cp312-cu130-linux_x86_64.
        #[arg(long = "class", value_name = "CLASS")]
        classes: Vec<String>,
    },
    /// Stored environments and their revisions.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Roll a revision out over the machines it targets, and follow, pause, resume,
    /// abort or undo rollouts.
    #[command(subcommand, after_help = ROLLOUT_HELP)]
    Rollout(RolloutCommand),
    /// The controller's package cache: what it holds, pruning it, filling it ahead
    /// of a rollout (for air-gapped farms).
    #[command(subcommand)]
    Cache(CacheCommand),
    /// comfyfleet's torch facts (which CUDA builds, platforms, Pythons, companions
    /// and triton each torch release has) checked against what an index publishes.
    #[command(subcommand)]
    Facts(commands::facts::FactsCommand),
    /// Model files for specs: `import` reads the models a ComfyUI workflow declares
    /// and prints them as [[model]] entries, sha256 and size filled in.
    #[command(subcommand)]
    Models(commands::models::ModelsCommand),
}

async fn run(cli: Cli) -> anyhow::Result<String> {
    // Checking the facts against an index needs no controller either.
    if let Command::Facts(command) = &cli.command {
        return commands::facts::run(command).await;
    }
    // So does reading a workflow's models.
    if let Command::Models(command) = &cli.command {
        return commands::models::run(command).await;
    }
    // Offline planning needs no controller and no credentials.
    if let Command::Plan { file, facts: Some(facts), output } = &cli.command {
        let spec = spec_file::load(file)?;
        let machines = commands::plan::read_facts(facts)?;
        return commands::plan::render(&commands::plan::plan_with_checkout(&spec.spec, &machines)?, *output);
    }
    // A spec with mistakes is reported before any connection is tried.
    let spec = match &cli.command {
        Command::Plan { file, .. } | Command::Apply { file, .. } => Some(spec_file::load(file)?),
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
        Command::Machines { command: None, output, all, selector } => {
            commands::machines::list(&mut fleet, all, selector, output).await
        }
        Command::Report { report, selector, output } => {
            commands::reports::show(&mut fleet, report, selector.unwrap_or_default(), output).await
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
        Command::Secrets(SecretsCommand::Set { name, username, bearer, origins, from_file }) => {
            let secret = commands::secrets::read_secret(&name, from_file.as_deref())?;
            let username = if bearer { String::new() } else { username };
            commands::secrets::set(&mut fleet, name, username, bearer, origins, secret).await
        }
        Command::Secrets(SecretsCommand::List { output }) => {
            commands::secrets::list(&mut fleet, output).await
        }
        Command::Secrets(SecretsCommand::Delete { name, force }) => {
            commands::secrets::delete(&mut fleet, name, force).await
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
            commands::plan::render(&commands::plan::plan_with_checkout(&spec.spec, &machines)?, output)
        }
        Command::Apply { classes, .. } => {
            let spec = spec.ok_or_else(|| anyhow::anyhow!("no spec"))?;
            commands::environments::apply(&mut fleet, spec, classes).await
        }
        Command::Env(EnvCommand::Lock { reference, classes }) => {
            commands::environments::lock(&mut fleet, reference, classes).await
        }
        Command::Cache(CacheCommand::Status { output }) => commands::cache::status(&mut fleet, output).await,
        Command::Cache(CacheCommand::Prune { all }) => commands::cache::prune(&mut fleet, all).await,
        Command::Cache(CacheCommand::Fill { reference }) => {
            commands::cache::fill(&mut fleet, reference).await
        }
        Command::Env(EnvCommand::List { output }) => commands::environments::list(&mut fleet, output).await,
        Command::Env(EnvCommand::Show { reference, lock: true, class, output }) => {
            commands::environments::show_lock(&mut fleet, reference, class, output).await
        }
        Command::Env(EnvCommand::Show { reference, output, .. }) => {
            commands::environments::show(&mut fleet, reference, output).await
        }
        Command::Env(EnvCommand::History { name, output }) => {
            commands::environments::history(&mut fleet, name, output).await
        }
        Command::Env(EnvCommand::Diff { from, to }) => {
            commands::environments::diff(&mut fleet, from, to).await
        }
        Command::Rollout(command) => rollout(&mut fleet, &config, command).await,
        Command::Facts(command) => commands::facts::run(&command).await,
        Command::Models(command) => commands::models::run(&command).await,
        Command::Whoami => commands::credentials::whoami(&mut fleet, &config).await,
    }
}

async fn rollout(
    fleet: &mut client::Fleet,
    config: &comfyfleet_config::AdminConfig,
    command: RolloutCommand,
) -> anyhow::Result<String> {
    use commands::rollout::{StartArgs, UndoArgs};
    use commands::rollout_status::{self, Action};
    match command {
        RolloutCommand::Start { reference, machines, output, wait, timeout, policy } => {
            let args = StartArgs { config, machines, policy, output, wait: wait.then_some(timeout) };
            commands::rollout::start(fleet, reference, args).await
        }
        RolloutCommand::Undo { environment, to_revision, output, wait, timeout, policy } => {
            let args = UndoArgs { config, to_revision, policy, output, wait: wait.then_some(timeout) };
            commands::rollout::undo(fleet, environment, args).await
        }
        RolloutCommand::Status { rollout, machines, output } => {
            rollout_status::status(fleet, rollout.unwrap_or_default(), machines, output).await
        }
        RolloutCommand::Watch { rollout, timeout, interval } => {
            let printer = commands::convergence::Printer::Stdout;
            let options = commands::rollout_watch::WatchOptions { limit: timeout, interval, printer };
            commands::rollout_watch::watch(fleet, config, &rollout.unwrap_or_default(), &options).await
        }
        RolloutCommand::Pause { rollout, reason, output } => {
            rollout_status::act(fleet, Action::Pause, rollout, reason.unwrap_or_default(), output).await
        }
        RolloutCommand::Resume { rollout, output } => {
            rollout_status::act(fleet, Action::Resume, rollout, String::new(), output).await
        }
        RolloutCommand::Abort { rollout, reason, output } => {
            rollout_status::act(fleet, Action::Abort, rollout, reason.unwrap_or_default(), output).await
        }
        RolloutCommand::List { environment, limit, output } => {
            rollout_status::list(fleet, environment.unwrap_or_default(), limit, output).await
        }
        RolloutCommand::Events { rollout, after, output } => {
            rollout_status::events(fleet, rollout.unwrap_or_default(), after, output).await
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
            if let Some(found) = error.downcast_ref::<commands::facts::Differences>() {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(found.report.as_bytes()).and_then(|()| stdout.flush());
                return ExitCode::FAILURE;
            }
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
