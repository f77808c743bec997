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
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// Size, files, hit rate, and bytes fetched from upstream versus served.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Remove the files no kept revision (each environment's newest, every assigned
    /// one) needs; with --all, every file.
    Prune {
        #[arg(long)]
        all: bool,
    },
    /// Fetch everything every build class of a revision needs: after it, a rollout
    /// of that revision builds with every upstream unreachable.
    Fill {
        #[arg(value_name = "NAME[@REV]")]
        reference: String,
    },
}

const ROLLOUT_HELP: &str = "\
ROLLOUT is a rollout's id (`12`, from `comfyfleet rollout list`) or an environment's name (its
newest rollout); where it may be left out, the newest rollout of all is meant.

Exit status: 0 on success; 1 on an error, and for `watch` and `start|undo --wait` when the rollout
was aborted, paused itself over the failure budget, or outlasted --timeout; 2 on a usage error.";

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Roll ENV[@REV] out over every machine its selector targets (or only those named):
    /// machines prepare it a few at a time, then switch canaries first and in batches,
    /// as the spec's [rollout] policy (or the flags below) allows. Machines already on
    /// the revision change nothing. Prints which machines it took and the rollout's id.
    #[command(
        after_help = "Follow it with `comfyfleet rollout watch ID`, steer it with `rollout pause|resume|abort ID`."
    )]
    Start {
        /// The environment, and optionally its revision: a number or an id prefix (default: the latest).
        #[arg(value_name = "ENV[@REV]")]
        reference: String,
        /// Only these machines (ids or unique prefixes, comma-separated or repeated).
        #[arg(long, value_name = "ID,ID...", value_delimiter = ',')]
        machines: Vec<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
        /// Then follow the rollout as `rollout watch` does, until it ends (exit status 0
        /// if it succeeded; 1 if it was aborted, paused itself over the failure budget,
        /// or the timeout passed first).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "30m", value_parser = commands::convergence::parse_wait_limit)]
        timeout: commands::convergence::WaitLimit,
        #[command(flatten)]
        policy: commands::rollout_policy::PolicyFlags,
    },
    /// Where a rollout stands: its state and policy, its phases, and its machines
    /// (every machine up to 50; in a bigger rollout only those failed, rolling back,
    /// stalled or offline, unless --machines).
    Status {
        /// A rollout id or an environment (default: the newest rollout of all).
        #[arg(value_name = "ROLLOUT")]
        rollout: Option<String>,
        /// List every machine, however many.
        #[arg(long)]
        machines: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Follow a rollout until it ends: a line per machine and rollout event, and a
    /// progress bar per phase (redrawn in place on a terminal). Exit status 0 when it
    /// succeeded; 1 when it was aborted, paused itself over the failure budget, or the
    /// timeout passed. A pause by an operator is waited out.
    Watch {
        /// A rollout id or an environment (default: the newest rollout of all).
        #[arg(value_name = "ROLLOUT")]
        rollout: Option<String>,
        /// Give up after this long (default: wait until the rollout ends).
        #[arg(long, value_name = "DUR", value_parser = commands::convergence::parse_wait_limit)]
        timeout: Option<commands::convergence::WaitLimit>,
        /// How often to ask the controller.
        #[arg(long, value_name = "DUR", default_value = "500ms", value_parser = commands::rollout_watch::parse_interval)]
        interval: Duration,
    },
    /// Start no new work on a rollout (machines preparing or switching finish).
    Pause {
        /// A rollout id or an environment (its newest rollout).
        #[arg(value_name = "ROLLOUT")]
        rollout: String,
        /// Why, kept with the rollout's events.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Go on with a paused rollout; machines that failed are tried again.
    Resume {
        /// A rollout id or an environment (its newest rollout).
        #[arg(value_name = "ROLLOUT")]
        rollout: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// End a rollout: nothing more starts, machines that had not switched go back to
    /// the revision they run, machines that switched stay.
    Abort {
        /// A rollout id or an environment (its newest rollout).
        #[arg(value_name = "ROLLOUT")]
        rollout: String,
        /// Why, kept with the rollout's events.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Roll ENV back to an earlier revision (by default the one its newest rollout
    /// started from) as a new rollout, batched like any other. A rollout of ENV still
    /// running is aborted first.
    Undo {
        /// The environment to roll back.
        #[arg(value_name = "ENV")]
        environment: String,
        /// The revision to go back to: a number or an id prefix.
        #[arg(long, value_name = "REV")]
        to_revision: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
        /// Then follow the rollout until it ends, as `rollout start --wait` does.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "30m", value_parser = commands::convergence::parse_wait_limit)]
        timeout: commands::convergence::WaitLimit,
        #[command(flatten)]
        policy: commands::rollout_policy::PolicyFlags,
    },
    /// Rollouts, newest first.
    List {
        /// Only this environment's.
        #[arg(value_name = "ENV")]
        environment: Option<String>,
        /// At most this many (0: the controller's default, 50).
        #[arg(long, default_value = "50")]
        limit: u32,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// A rollout's stored events, oldest first.
    Events {
        /// A rollout id or an environment (default: the newest rollout of all).
        #[arg(value_name = "ROLLOUT")]
        rollout: Option<String>,
        /// Only events after this event id.
        #[arg(long, value_name = "ID", default_value = "0")]
        after: u64,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
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
        /// Show the revision's locks instead: every package, version, URL, sha256.
        #[arg(long)]
        lock: bool,
        /// With --lock: only this build class's lock.
        #[arg(long = "class", value_name = "CLASS", requires = "lock")]
        class: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Lock more build classes of a revision (a GPU generation that joined); the
    /// result is a new revision.
    Lock {
        #[arg(value_name = "NAME[@REV]")]
        reference: String,
        #[arg(long = "class", value_name = "CLASS", required = true)]
        classes: Vec<String>,
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

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Store (or replace) a credential; the secret is read from stdin or --from-file.
    Set {
        name: String,
        /// The username sent with it (`__token__` for a bare API token, as PyPI-style
        /// indexes expect; GitHub takes any username with a token).
        #[arg(long, default_value = "__token__")]
        username: String,
        /// Read the secret from the first line of this file instead of stdin.
        #[arg(long, value_name = "PATH")]
        from_file: Option<std::path::PathBuf>,
    },
    /// List the stored credentials: names, usernames, who names them (never secrets).
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Delete a credential (refused while an environment's latest revision names it).
    Delete {
        name: String,
        /// Delete it even though a spec names it.
        #[arg(long)]
        force: bool,
    },
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = comfyfleet_config::duration::parse_positive(text).map_err(|e| e.to_string())?;
    if ttl < Duration::from_secs(1) { Err("the TTL must be at least 1s".into()) } else { Ok(ttl) }
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse().map_err(|e: comfyfleet_config::credential::UnknownRole| e.to_string())
}

async fn run(cli: Cli) -> anyhow::Result<String> {
    // Checking the facts against an index needs no controller either.
    if let Command::Facts(command) = &cli.command {
        return commands::facts::run(command).await;
    }
    // Offline planning needs no controller and no credentials.
    if let Command::Plan { file, facts: Some(facts), output } = &cli.command {
        let spec = spec_file::load(file)?;
        let machines = commands::plan::read_facts(facts)?;
        return commands::plan::render(&commands::plan::plan(&spec.spec, &machines)?, *output);
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
        Command::Secrets(SecretsCommand::Set { name, username, from_file }) => {
            let secret = commands::secrets::read_secret(&name, from_file.as_deref())?;
            commands::secrets::set(&mut fleet, name, username, secret).await
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
            commands::plan::render(&commands::plan::plan(&spec.spec, &machines)?, output)
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
        Command::Rollout(command) => rollout(&mut fleet, command).await,
        Command::Facts(command) => commands::facts::run(&command).await,
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

async fn rollout(fleet: &mut client::Fleet, command: RolloutCommand) -> anyhow::Result<String> {
    use commands::rollout::{StartArgs, UndoArgs};
    use commands::rollout_status::{self, Action};
    match command {
        RolloutCommand::Start { reference, machines, output, wait, timeout, policy } => {
            let args = StartArgs { machines, policy, output, wait: wait.then_some(timeout) };
            commands::rollout::start(fleet, reference, args).await
        }
        RolloutCommand::Undo { environment, to_revision, output, wait, timeout, policy } => {
            let args = UndoArgs { to_revision, policy, output, wait: wait.then_some(timeout) };
            commands::rollout::undo(fleet, environment, args).await
        }
        RolloutCommand::Status { rollout, machines, output } => {
            rollout_status::status(fleet, rollout.unwrap_or_default(), machines, output).await
        }
        RolloutCommand::Watch { rollout, timeout, interval } => {
            let printer = commands::convergence::Printer::Stdout;
            let options = commands::rollout_watch::WatchOptions { limit: timeout, interval, printer };
            commands::rollout_watch::watch(fleet, &rollout.unwrap_or_default(), &options).await
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
