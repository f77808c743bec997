//! `comfyfleet-fleetsim`: thousands of simulated agents in one process, each with
//! its own identity and mutual-TLS session to a real controller, whose work is sleep.
//!
//! ```text
//! comfyfleet-fleetsim --controller URL --join-token TOKEN --data-dir DIR --count N \
//!     [--profile NAME]... [--prepare 2s] [--activate 1s] [--fail-prepare 0.01] [--events FILE]
//! ```
//!
//! stdout carries `ready <N>` once every agent had its first session, then one
//! answer (`ok …` / `error …`) per command read from stdin: `offline I`, `online I`,
//! `spawn K`, `fix`, `ids`, `stats`. Logs go to stderr. Stops on SIGTERM, SIGINT or
//! the end of stdin (unless stdin is /dev/null, as for a background job).
//!
//! `--events FILE` gets a JSON line per event, each with `at_ms` (Unix ms), `agent`,
//! `machine_id` and `event`: `enrolled` (`reused`), `failer` (`fails`), `connected`,
//! `disconnected`, `refused` (`error`), and with `generation`, `revision_number`,
//! `revision_id`, `activate`: `assigned` (a new generation arrived), `prepare_started`,
//! `prepared`, `prepare_failed` (`error`), `activation_started`, `activated`,
//! `activation_failed` (`error`).
#![forbid(unsafe_code)]

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use comfyfleet_config::{JoinToken, Labels};
use comfyfleet_daemon::logging::{self, LogFormat};
use comfyfleet_e2e::fleetsim::{self, SimOptions};
use tokio::sync::mpsc;

/// Exit status when the controller refused the fleet (bad token, wrong controller).
const EXIT_REFUSED: u8 = 3;
const EXIT_USAGE: u8 = 2;
/// Blocking work (inventory probes, mostly) never needs more threads than this.
const BLOCKING_THREADS: usize = 8;

/// Simulated comfyfleet agents: real enrollment and sessions, sleeping executors.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The controller's https:// URL; repeat it (or separate with commas) for a fleet
    /// of several controllers: each agent starts at one and fails over to the others.
    #[arg(long, env = "COMFYFLEET_CONTROLLER", value_parser = parse_https_url, value_delimiter = ',', required = true)]
    controller: Vec<String>,
    /// A join token (`comfyfleet token create`) with uses for every new agent; not
    /// needed when every agent is enrolled already. Prefer the environment variable.
    #[arg(long, env = "COMFYFLEET_JOIN_TOKEN", hide_env_values = true, value_parser = parse_token)]
    join_token: Option<JoinToken>,
    /// Agent I keeps its identity and journal in DIR/agent-I/ (reused by a later run).
    /// Put it on tmpfs for large fleets (e.g. /dev/shm/fleetsim).
    #[arg(long)]
    data_dir: PathBuf,
    /// How many agents to start with.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    count: u32,
    /// The GPU profiles file. Default: a built-in copy of tests/fixtures/gpu-profiles.json.
    #[arg(long, value_name = "PATH")]
    profiles: Option<PathBuf>,
    /// A profile agents cycle through (repeatable). Default: every profile of the file.
    #[arg(long = "profile", value_name = "NAME")]
    profile_names: Vec<String>,
    /// How long preparing a revision takes (jittered).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    prepare: Duration,
    /// How long activating a revision takes (jittered).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    activate: Duration,
    /// Each duration varies by up to this fraction either way (0.2: ±20 %).
    #[arg(long, default_value_t = 0.2, value_parser = parse_fraction)]
    jitter: f64,
    /// The fraction of agents whose preparations fail (chosen by --seed).
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    fail_prepare: f64,
    /// The fraction of agents whose activations fail their health check.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    fail_activate: f64,
    /// Failing agents still succeed with the first revision they are assigned, so a
    /// fleet can be brought up on a baseline before failures begin.
    #[arg(long)]
    spare_first_revision: bool,
    /// Seeds the choice of failing agents and the jitter.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Append one JSON line per event (enrolled, connected, assigned, prepared …) here.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    enroll_parallel: u32,
    /// A label for every agent, KEY=VALUE (repeatable); each also gets sim.index and
    /// sim.profile.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Agent I reports the hostname PREFIX<I>.
    #[arg(long, default_value = "sim-")]
    hostname_prefix: String,
    /// The longest wait between reconnection attempts.
    #[arg(long, default_value = "2s", value_parser = parse_positive_duration)]
    max_backoff: Duration,
    /// How often each agent looks for inventory changes (there are none to find).
    #[arg(long, default_value = "60s", value_parser = parse_positive_duration)]
    inventory_interval: Duration,
    /// Log format: text or json.
    #[arg(long, env = "COMFYFLEET_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Log filter (RUST_LOG wins).
    #[arg(long, env = "COMFYFLEET_LOG_LEVEL", default_value = "info,comfyfleet_agent=warn")]
    log_level: String,
}

fn parse_token(text: &str) -> Result<JoinToken, String> {
    text.parse().map_err(|e: comfyfleet_config::join_token::JoinTokenError| e.to_string())
}

fn parse_https_url(text: &str) -> Result<String, String> {
    if text.starts_with("https://") && text.len() > "https://".len() {
        Ok(text.trim_end_matches('/').to_owned())
    } else {
        Err(format!("`{text}` must be the controller's https:// URL, e.g. https://127.0.0.1:7443"))
    }
}

/// Zero allowed: an instant step.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. 2s, 500ms"))
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    comfyfleet_config::duration::parse_positive(text).map_err(|e| e.to_string())
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("`{text}` is not a fraction from 0 to 1 (e.g. 0.05 for 5 %)")),
    }
}

impl Args {
    fn into_options(self) -> Result<SimOptions, String> {
        let labels = Labels::parse_pairs(&self.labels).map_err(|error| format!("--label: {error}"))?;
        let prefix_ok = !self.hostname_prefix.is_empty()
            && self.hostname_prefix.len() <= 200
            && !self.hostname_prefix.chars().any(|c| c.is_control() || c.is_whitespace());
        if !prefix_ok {
            return Err("--hostname-prefix: give 1 to 200 printable characters without spaces".into());
        }
        Ok(SimOptions {
            controller_urls: self.controller,
            join_token: self.join_token,
            data_dir: self.data_dir,
            count: self.count as usize,
            profiles_file: self.profiles,
            profile_names: self.profile_names,
            prepare: self.prepare,
            activate: self.activate,
            jitter: self.jitter,
            fail_prepare: self.fail_prepare,
            fail_activate: self.fail_activate,
            spare_first_revision: self.spare_first_revision,
            seed: self.seed,
            events: self.events,
            enroll_parallel: self.enroll_parallel as usize,
            labels,
            hostname_prefix: self.hostname_prefix,
            max_backoff: self.max_backoff,
            inventory_interval: self.inventory_interval,
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(args.log_format, &args.log_level);
    let options = match args.into_options() {
        Ok(options) => options,
        Err(error) => {
            tracing::error!("{error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // One runtime for every agent: tasks, never a thread per agent.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fleetsim")
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let (commands, command_lines) = mpsc::channel(64);
    // Held to the end: with stdin not read, the command channel must stay open.
    let _unread_stdin = read_stdin(commands);
    let (output, output_lines) = mpsc::unbounded_channel();
    let printer = std::thread::spawn(move || print_lines(output_lines));
    let result = runtime.block_on(fleetsim::run(
        options,
        command_lines,
        output,
        comfyfleet_daemon::shutdown::signal(),
    ));
    // The stdin reader may still block in read(2); it dies with the process.
    runtime.shutdown_timeout(Duration::from_secs(2));
    let _ = printer.join();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            if error.is_refusal() {
                ExitCode::from(EXIT_REFUSED)
            } else if error.is_usage() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Forwards stdin's lines; its end closes the channel. /dev/null (a background job)
/// is not read: the sender is returned to be held instead.
fn read_stdin(commands: mpsc::Sender<String>) -> Option<mpsc::Sender<String>> {
    let stdin = std::io::stdin();
    let is_null_device = !stdin.is_terminal()
        && rustix::fs::fstat(&stdin).is_ok_and(|stat| {
            rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::CharacterDevice
        });
    if is_null_device {
        return Some(commands);
    }
    std::thread::spawn(move || {
        let mut stdin = stdin.lock();
        let mut line = Vec::new();
        loop {
            line.clear();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    // Not UTF-8 is still a line to answer (with an error), not the end.
                    let text = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_owned();
                    if commands.blocking_send(text).is_err() {
                        break;
                    }
                }
            }
        }
    });
    None
}

/// stdout gets answers only, a line each, flushed at once (a script waits on them).
fn print_lines(mut lines: mpsc::UnboundedReceiver<String>) {
    let mut stdout = std::io::stdout();
    while let Some(line) = lines.blocking_recv() {
        if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
            // Nobody reads any more; the simulation goes on until told to stop.
            continue;
        }
    }
}
