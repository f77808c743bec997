//! `comfyfleet-controller`: the fleet's control plane.
#![allow(clippy::print_stdout)] // backup and restore answer on stdout, as a command does

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
    #[arg(
        long,
        global = true,
        env = "COMFYFLEET_DATA_DIR",
        default_value = "/var/lib/comfyfleet-controller"
    )]
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
    /// The uv binary apply resolves locks with (default: `uv` on PATH).
    #[arg(long, env = "COMFYFLEET_UV", value_name = "PATH")]
    uv: Option<PathBuf>,
    /// Disk limit of the package cache (e.g. 200GiB): files no kept revision needs
    /// are evicted, least recently used first. Default: no limit.
    #[arg(long, env = "COMFYFLEET_CACHE_MAX_SIZE", value_parser = parse_size, value_name = "SIZE")]
    cache_max_size: Option<u64>,
    /// HOST:PORT to serve Prometheus metrics on, at /metrics (plain HTTP; port 0 picks
    /// a free one). Default: off.
    #[arg(long, env = "COMFYFLEET_METRICS_LISTEN", value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// A file holding the bearer token /metrics asks for (Prometheus:
    /// authorization.credentials_file). Default: no token.
    #[arg(long, env = "COMFYFLEET_METRICS_TOKEN_FILE", value_name = "PATH", requires = "metrics_listen")]
    metrics_token_file: Option<PathBuf>,
    /// HOST:PORT to serve the read-only web page on (HTTPS with the controller's
    /// certificate; sign in with a viewer credential). Default: off.
    #[arg(long, env = "COMFYFLEET_WEB_LISTEN", value_name = "HOST:PORT")]
    web_listen: Option<String>,
    /// The fleet's PostgreSQL database (postgres://user:password@host:5432/db, with
    /// ?sslmode=verify-full&sslrootcert=… for TLS). Default: the SQLite file
    /// controller.db in the data dir.
    #[arg(long, env = "COMFYFLEET_DATABASE_URL", value_name = "URL", value_parser = parse_database_url, hide_env_values = true)]
    database_url: Option<String>,
    /// The key (64 hex digits, e.g. `openssl rand -hex 32`) the fleet's CA is sealed
    /// with in a PostgreSQL database; every controller of the fleet gets the same file.
    #[arg(long, env = "COMFYFLEET_SECRETS_KEY_FILE", value_name = "PATH", requires = "database_url")]
    secrets_key_file: Option<PathBuf>,
    /// Let apply read git from local paths and file:// URLs on the controller's host
    /// (off: a spec could otherwise probe which paths exist there).
    #[arg(long, env = "COMFYFLEET_GIT_ALLOW_FILE")]
    git_allow_file: bool,
    /// A host the controller may fetch sources from — git, package indexes, wheels —
    /// at any address (repeatable; `*.example.com` for a domain). With none, any host
    /// whose addresses are all public; once one is named, only the named ones (add
    /// --source-allow-public to keep public hosts too). A host on a private, loopback
    /// or link-local address must be named. `--git-allow-host` is the same flag.
    #[arg(long = "source-allow-host", alias = "git-allow-host", value_name = "HOST")]
    source_allow_hosts: Vec<String>,
    /// With --source-allow-host: hosts it does not name are still fetched from when
    /// every address they resolve to is public.
    #[arg(long, env = "COMFYFLEET_SOURCE_ALLOW_PUBLIC")]
    source_allow_public: bool,
    /// Another variable of the controller's environment that the uv and git it runs
    /// may see (repeatable), e.g. SSH_AUTH_SOCK. They get only PATH, HOME, the locale,
    /// proxies and CA bundles otherwise, never the controller's own secrets.
    #[arg(long = "pass-env", value_name = "NAME")]
    pass_env: Vec<String>,
    /// The most connections one source address may hold at once on each listener
    /// (the gRPC port, the web page, /metrics; handshakes included); past it, its new
    /// ones are closed at accept. 0: no cap. Raise it when many machines reach the
    /// controller through one NAT address.
    #[arg(long, env = "COMFYFLEET_MAX_CONNECTIONS_PER_ADDRESS", value_name = "N", default_value_t = 1024)]
    max_connections_per_address: usize,
    /// Start a new, empty fleet on an empty database even though this data dir has
    /// served one (or let this data dir serve the database's fleet). Without it, a
    /// controller whose database was emptied or replaced refuses to start.
    #[arg(long)]
    initialize: bool,
    /// Write a snapshot of the database into <data-dir>/backups/ this often (e.g. 1h).
    #[arg(long, env = "COMFYFLEET_BACKUP_INTERVAL", value_parser = parse_duration, value_name = "DURATION", conflicts_with = "database_url")]
    backup_interval: Option<Duration>,
    /// How many --backup-interval snapshots to keep (the oldest go first).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..), requires = "backup_interval")]
    backup_keep: u32,
    /// Rollout events of finished rollouts and machines' reports older than this are
    /// deleted (hourly, in small batches).
    #[arg(long, env = "COMFYFLEET_EVENT_RETENTION", default_value = "90d", value_parser = parse_duration)]
    event_retention: Duration,
    /// Audit entries older than this are deleted.
    #[arg(long, env = "COMFYFLEET_AUDIT_RETENTION", default_value = "365d", value_parser = parse_duration)]
    audit_retention: Duration,
    /// For tests: how long a server certificate is valid (e.g. 20s) instead of 365
    /// days. The controller renews it at two-thirds of its life either way.
    #[arg(long, hide = true, value_parser = parse_duration, value_name = "DURATION")]
    server_cert_validity: Option<Duration>,
    #[command(subcommand)]
    command: Option<Command>,
    /// Log format: text or json.
    #[arg(long, env = "COMFYFLEET_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Log filter (RUST_LOG wins), e.g. info or comfyfleet_controller=debug.
    #[arg(long, env = "COMFYFLEET_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Write a consistent snapshot of the database to FILE while the controller runs.
    Backup {
        /// The snapshot to write (must not exist).
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },
    /// Put a snapshot back in place of the database (stop the controller first); the
    /// database it replaces is kept beside it.
    Restore {
        /// The snapshot to restore.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
}

fn parse_database_url(text: &str) -> Result<String, String> {
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        Ok(text.to_owned())
    } else {
        Err("the database URL must start with postgres:// (e.g. postgres://comfyfleet@db.example:5432/comfyfleet); \
             leave it out to use the SQLite file in the data dir"
            .to_owned())
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    comfyfleet_config::duration::parse_positive(text).map_err(|e| e.to_string())
}

/// `500000000`, `500M`, `200GiB`, `1.5T`: binary units (K = KiB = 1024 bytes).
fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "`{text}` is not a size: write bytes or a number with K, M, G or T (e.g. 200GiB)"
            ));
        }
    };
    let value: f64 = number.parse().map_err(|_| {
        format!("`{text}` is not a size: write bytes or a number with K, M, G or T (e.g. 200GiB)")
    })?;
    let bytes = value * f64::from(1u32 << (shift % 32)) * if shift >= 32 { 4_294_967_296.0 } else { 1.0 };
    if !(1.0..1.8e19).contains(&bytes) {
        return Err(format!("`{text}` is not a usable cache size"));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(bytes as u64)
}

/// The metrics bearer token: the file's first line, at least 16 characters.
fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| anyhow::anyhow!("cannot read the metrics token file {}: {error}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_owned();
    if token.len() < 16 || !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        anyhow::bail!(
            "the metrics token in {} must be at least 16 printable characters on the first line \
             (e.g. openssl rand -hex 32 > {})",
            path.display(),
            path.display()
        );
    }
    Ok(token)
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
    match &args.command {
        Some(Command::Backup { .. } | Command::Restore { .. }) if args.database_url.is_some() => {
            anyhow::bail!(
                "a PostgreSQL fleet is backed up and restored with PostgreSQL's own tools: \
                 pg_dump --format=custom --file=FILE URL (consistent while controllers run), and \
                 pg_restore --clean --if-exists --dbname=URL FILE with every controller stopped"
            );
        }
        Some(Command::Backup { to }) => {
            let facts = comfyfleet_controller::backup::snapshot_data_dir(&args.data_dir, to).await?;
            println!(
                "wrote {}: fleet {}, {} machines, {} credentials, {} open rollouts",
                to.display(),
                facts.fleet_id.as_deref().unwrap_or("(no id yet)"),
                facts.machines,
                facts.credentials,
                facts.open_rollouts
            );
            return Ok(());
        }
        Some(Command::Restore { from }) => {
            let restored = comfyfleet_controller::backup::restore(&args.data_dir, from).await?;
            let facts = &restored.facts;
            println!(
                "restored {} into {}: fleet {}, {} machines, {} credentials, {} open rollouts",
                from.display(),
                args.data_dir.display(),
                facts.fleet_id.as_deref().unwrap_or("(no id yet)"),
                facts.machines,
                facts.credentials,
                facts.open_rollouts
            );
            if let Some(replaced) = &restored.replaced {
                println!("the database it replaced is kept as {}", replaced.display());
            }
            println!("start the controller again; agents reconnect on their own");
            return Ok(());
        }
        None => {}
    }
    let open_files = comfyfleet_daemon::limits::raise_open_files_limit();
    tracing::info!(open_files = ?open_files, "open-files limit (one per connected agent)");
    let metrics_token = match &args.metrics_token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    let options = ControllerOptions {
        data_dir: args.data_dir,
        listen: args.listen,
        advertise_url: args.advertise_url,
        tls_sans: args.tls_sans,
        settings: Settings {
            heartbeat_interval: args.heartbeat_interval,
            uv: args.uv,
            cache_max_size: args.cache_max_size,
            sources: comfyfleet_controller::source_policy::SourcePolicy {
                allow_file: args.git_allow_file,
                allow_hosts: args.source_allow_hosts,
                allow_public: args.source_allow_public,
                allow_any: false,
            },
            children: comfyfleet_daemon::child_env::ChildEnvironment::from_process(&args.pass_env),
            ..Settings::default()
        },
        metrics_listen: args.metrics_listen,
        metrics_token,
        web_listen: args.web_listen,
        initialize: args.initialize,
        database_url: args.database_url,
        secrets_key_file: args.secrets_key_file,
        connection_limits: comfyfleet_controller::connection_guard::Limits {
            per_address: args.max_connections_per_address,
            ..Default::default()
        },
        backup_interval: args.backup_interval,
        backup_keep: args.backup_keep as usize,
        server_certificate_life: args
            .server_cert_validity
            .unwrap_or(comfyfleet_controller::pki::SERVER_VALIDITY),
        retention: comfyfleet_controller::retention::Retention {
            events: args.event_retention,
            audit: args.audit_retention,
        },
    };
    comfyfleet_controller::run(options, comfyfleet_daemon::shutdown::signal(), |_| {}).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("200GiB").unwrap(), 200 << 30);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert!(parse_size("lots").unwrap_err().contains("e.g. 200GiB"));
        assert!(parse_size("0").is_err());
    }
}
