//! The subcommands' arguments, as clap parses them: what each `comfyfleet` command
//! takes (the top-level commands are in `main.rs`).

use std::time::Duration;

use clap::Subcommand;
use comfyfleet_config::Role;

use crate::{OutputFormat, commands};

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
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

pub const ROLLOUT_HELP: &str = "\
ROLLOUT is a rollout's id (`12`, from `comfyfleet rollout list`) or an environment's name (its
newest rollout); where it may be left out, the newest rollout of all is meant.

Exit status: 0 on success; 1 on an error, and for `watch` and `start|undo --wait` when the rollout
was aborted, paused itself over the failure budget, or outlasted --timeout; 2 on a usage error.";

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
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
pub enum EnvCommand {
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
pub enum TokenCommand {
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
pub enum MachinesCommand {
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
pub enum CredentialsCommand {
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
pub enum SecretsCommand {
    /// Store (or replace) a credential; the secret is read from stdin or --from-file.
    Set {
        name: String,
        /// The username sent with it (`__token__` for a bare API token, as PyPI-style
        /// indexes expect; GitHub takes any username with a token).
        #[arg(long, default_value = "__token__")]
        username: String,
        /// A bearer token (sent as `Authorization: Bearer`, as Hugging Face and
        /// Civitai take it) rather than a username and secret; serves [[model]]
        /// downloads only.
        #[arg(long, conflicts_with = "username")]
        bearer: bool,
        /// An origin it may be sent to: scheme, host and port, exactly
        /// (`https://mirror.farm.internal`, `http://10.0.0.5:8080`); repeatable, at
        /// least one. A spec naming it for any other origin is refused. Setting it
        /// again replaces the origins too.
        #[arg(long = "origin", value_name = "ORIGIN", required = true, value_parser = parse_origin)]
        origins: Vec<String>,
        /// Read the secret from the first line of this file instead of stdin.
        #[arg(long, value_name = "PATH")]
        from_file: Option<std::path::PathBuf>,
    },
    /// List the stored credentials: names, usernames, origins, who names them (never
    /// secrets).
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

pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = comfyfleet_config::duration::parse_positive(text).map_err(|e| e.to_string())?;
    if ttl < Duration::from_secs(1) { Err("the TTL must be at least 1s".into()) } else { Ok(ttl) }
}

pub fn parse_origin(text: &str) -> Result<String, String> {
    comfyfleet_config::source_credentials::parse_origin(text)
}

pub fn parse_role(text: &str) -> Result<Role, String> {
    text.parse().map_err(|e: comfyfleet_config::credential::UnknownRole| e.to_string())
}
