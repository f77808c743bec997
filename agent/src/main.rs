//! `comfyfleet-agent`: runs on every GPU machine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use comfyfleet_agent::AgentOptions;
use comfyfleet_config::{JoinToken, Labels};
use comfyfleet_daemon::logging::{self, LogFormat};

/// Exit status when the controller refused this machine (revoked, bad token, wrong
/// CA): an operator must act, so supervisors should not restart in a tight loop.
const EXIT_REFUSED: u8 = 3;

/// comfyfleet's agent: reports this machine's GPUs and keeps a session to the controller.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The controller's https:// URL (remembered after enrollment). Repeat it (or
    /// separate with commas) for a fleet served by several controllers: the agent
    /// fails over between them.
    #[arg(long, env = "COMFYFLEET_CONTROLLER", value_delimiter = ',')]
    controller: Vec<String>,
    /// A join token from `comfyfleet token create`, needed only for the first start.
    /// Prefer the environment variable: it stays out of `ps`.
    #[arg(long, env = "COMFYFLEET_JOIN_TOKEN", hide_env_values = true, value_parser = parse_token)]
    join_token: Option<JoinToken>,
    /// Where the identity (and later the environments) live.
    #[arg(long, env = "COMFYFLEET_DATA_DIR", default_value = "/var/lib/comfyfleet")]
    data_dir: PathBuf,
    /// The NVIDIA management library to load.
    #[arg(long, env = "COMFYFLEET_NVML_LIB", default_value = "libnvidia-ml.so.1")]
    nvml_lib: PathBuf,
    /// A label for this machine, KEY=VALUE (repeatable), e.g. --label pool=render-a.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Report this hostname instead of the kernel's (containers, tests).
    #[arg(long, env = "COMFYFLEET_HOSTNAME")]
    hostname_override: Option<String>,
    /// How often to look for inventory changes.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    inventory_interval: Duration,
    /// The longest wait between reconnection attempts.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    max_backoff: Duration,
    /// Use this uv binary. Default: `uv` on PATH, else the uv wheel this agent pins,
    /// fetched from the spec's package index and checked against its sha256.
    #[arg(long, env = "COMFYFLEET_UV")]
    uv: Option<PathBuf>,
    /// uv's cache directory (default: `<data-dir>/cache/uv`). Keep it on the data
    /// dir's filesystem: environments hardlink their packages from it.
    #[arg(long, env = "COMFYFLEET_UV_CACHE_DIR")]
    uv_cache_dir: Option<PathBuf>,
    /// Fetch packages, kernel wheels and git commits from upstream directly instead
    /// of through the controller's package cache.
    #[arg(long, env = "COMFYFLEET_NO_PACKAGE_CACHE")]
    no_package_cache: bool,
    /// Earlier environments kept on disk besides the current one, for instant rollback.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=8))]
    keep_revisions: u8,
    /// Run ComfyUI on this port instead of the spec's `run.port` (several agents on
    /// one host).
    #[arg(long, env = "COMFYFLEET_COMFYUI_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    comfyui_port: Option<u16>,
    /// Whether uv may download a Python this machine lacks: automatic, manual or never.
    #[arg(long, default_value = "automatic", value_parser = ["automatic", "manual", "never"])]
    python_downloads: String,
    /// An environment variable passed on to ComfyUI and the build commands
    /// (repeatable); only a built-in allow-list is passed otherwise.
    #[arg(long = "pass-env", value_name = "NAME")]
    pass_env: Vec<String>,
    /// Log format: text or json.
    #[arg(long, env = "COMFYFLEET_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Log filter (RUST_LOG wins).
    #[arg(long, env = "COMFYFLEET_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

fn parse_token(text: &str) -> Result<JoinToken, String> {
    text.parse().map_err(|e: comfyfleet_config::join_token::JoinTokenError| e.to_string())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    comfyfleet_config::duration::parse_positive(text).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(args.log_format, &args.log_level);
    let labels = match Labels::parse_pairs(&args.labels) {
        Ok(labels) => labels,
        Err(error) => {
            tracing::error!("--label: {error}");
            return ExitCode::from(2);
        }
    };
    let options = AgentOptions {
        controller_urls: args.controller,
        join_token: args.join_token,
        data_dir: args.data_dir,
        nvml_library: args.nvml_lib,
        labels,
        hostname_override: args.hostname_override,
        inventory_interval: args.inventory_interval,
        max_backoff: args.max_backoff,
        provisioning: comfyfleet_agent::ProvisioningOptions {
            uv: args.uv,
            keep_previous: usize::from(args.keep_revisions),
            comfyui_port: args.comfyui_port,
            python_downloads: args.python_downloads,
            pass_env: args.pass_env,
            uv_cache_dir: args.uv_cache_dir,
            package_cache: !args.no_package_cache,
        },
    };
    match comfyfleet_agent::run(options, comfyfleet_daemon::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is_refusal() => {
            tracing::error!("{error}");
            ExitCode::from(EXIT_REFUSED)
        }
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}
