//! `comfyfleet-controller`: the fleet's control plane.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use comfyfleet_controller::{ControllerOptions, Settings};
use comfyfleet_daemon::logging::{self, LogFormat};

/// comfyfleet's controller: enrolls agents, knows every machine's GPUs, answers operators.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Where the CA, the database and admin.toml live.
    #[arg(long, env = "COMFYFLEET_DATA_DIR", default_value = "/var/lib/comfyfleet-controller")]
    data_dir: PathBuf,
    /// HOST:PORT to serve gRPC (agents and operators) on; port 0 picks a free one.
    #[arg(long, env = "COMFYFLEET_LISTEN", default_value = "0.0.0.0:7443")]
    listen: String,
    /// The https:// URL operators and agents reach this controller at (written to
    /// admin.toml and added to the server certificate). Default: the bound address.
    #[arg(long, env = "COMFYFLEET_ADVERTISE_URL", value_parser = parse_https_url)]
    advertise_url: Option<String>,
    /// Another DNS name or IP address for the server certificate (repeatable).
    #[arg(long = "tls-san", value_name = "NAME")]
    tls_sans: Vec<String>,
    /// How often agents send a heartbeat; silence for three intervals ends a session.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    heartbeat_interval: Duration,
    /// Log format: text or json.
    #[arg(long, env = "COMFYFLEET_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Log filter (RUST_LOG wins), e.g. info or comfyfleet_controller=debug.
    #[arg(long, env = "COMFYFLEET_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    comfyfleet_config::duration::parse_positive(text).map_err(|e| e.to_string())
}

fn parse_https_url(text: &str) -> Result<String, String> {
    if text.starts_with("https://") && text.len() > "https://".len() {
        Ok(text.trim_end_matches('/').to_owned())
    } else {
        Err(format!("`{text}` must be an https:// URL, e.g. https://controller.example:7443"))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    logging::init(args.log_format, &args.log_level);
    let open_files = comfyfleet_daemon::limits::raise_open_files_limit();
    tracing::info!(open_files = ?open_files, "open-files limit (one per connected agent)");
    let options = ControllerOptions {
        data_dir: args.data_dir,
        listen: args.listen,
        advertise_url: args.advertise_url,
        tls_sans: args.tls_sans,
        settings: Settings { heartbeat_interval: args.heartbeat_interval, ..Settings::default() },
    };
    comfyfleet_controller::run(options, comfyfleet_daemon::shutdown::signal(), |_| {}).await?;
    Ok(())
}
