//! Puts the controller together: store, CA, TLS listener, the agents' and operators'
//! services plus gRPC health and reflection, and a bounded shutdown.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use comfyfleet_daemon::files;
use comfyfleet_proto::v1::agent_service_server::AgentServiceServer;
use comfyfleet_proto::v1::fleet_service_server::FleetServiceServer;
use jiff::Timestamp;
use tokio::net::TcpListener;

use crate::app::admin_file;
use crate::app::tls;
use crate::edges::agent_grpc::AgentApi;
use crate::edges::operator_grpc::fleet_service::FleetApi;
use crate::store::{SqliteStore, Store};
use crate::use_cases::credentials::pki::CertificateAuthority;
use crate::use_cases::credentials::server_certificate::ServerCertificate;
use crate::use_cases::presence::{KickReason, Presence};
use crate::use_cases::rollouts::Rollouts;
use crate::use_cases::rollouts::report_writer::ReportWriter;
use crate::use_cases::{ControllerState, Settings};

/// How long in-flight calls get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often live sessions' last-seen times are written to the store.
const LAST_SEEN_FLUSH: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub data_dir: PathBuf,
    /// `HOST:PORT`; port 0 picks a free port (written to admin.toml).
    pub listen: String,
    /// The URL operators and agents use; default derived from the bound address.
    pub advertise_url: Option<String>,
    /// Extra DNS names or IPs for the server certificate.
    pub tls_sans: Vec<String>,
    pub settings: Settings,
    /// `HOST:PORT` to serve `/metrics` on (plain HTTP); `None`: no metrics.
    pub metrics_listen: Option<String>,
    /// The bearer token `/metrics` asks for; `None`: open.
    pub metrics_token: Option<String>,
    /// `HOST:PORT` to serve the web page on (HTTPS); `None`: no web page.
    pub web_listen: Option<String>,
    /// `--initialize`: start a new fleet on an empty database even though the data dir
    /// has served one (or adopt the database's fleet into this data dir).
    pub initialize: bool,
    /// `--backup-interval`: a snapshot into `<data-dir>/backups/` this often.
    pub backup_interval: Option<Duration>,
    /// `--backup-keep`: how many rotating snapshots stay.
    pub backup_keep: usize,
    pub retention: crate::app::retention::Retention,
    /// `--database-url postgres://…`: the fleet's PostgreSQL database; `None`: the
    /// SQLite file in the data dir.
    pub database_url: Option<String>,
    /// `--secrets-key-file`: the key the fleet's CA is sealed with in a PostgreSQL
    /// database (required with `database_url`).
    pub secrets_key_file: Option<PathBuf>,
    /// What a connection must do before its first request, and how many one address
    /// may hold (`--max-connections-per-address`).
    pub connection_limits: crate::app::connection_guard::Limits,
    /// How long a server certificate is valid (`--server-cert-validity`, for tests);
    /// it is renewed at two-thirds of it.
    pub server_certificate_life: Duration,
}

impl ControllerOptions {
    /// The defaults for a controller on `data_dir` listening on `listen`.
    pub fn new(data_dir: PathBuf, listen: String) -> Self {
        Self {
            data_dir,
            listen,
            advertise_url: None,
            tls_sans: Vec::new(),
            settings: Settings::default(),
            metrics_listen: None,
            metrics_token: None,
            web_listen: None,
            initialize: false,
            backup_interval: None,
            backup_keep: 7,
            retention: crate::app::retention::Retention::default(),
            database_url: None,
            secrets_key_file: None,
            connection_limits: crate::app::connection_guard::Limits::default(),
            server_certificate_life: crate::use_cases::credentials::pki::SERVER_VALIDITY,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("cannot create the data dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("`{listen}` is not HOST:PORT that resolves to an address: {detail}")]
    ListenAddress { listen: String, detail: String },
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Fleet(#[from] crate::use_cases::credentials::fleet_identity::FleetIdentityError),
    #[error(transparent)]
    Backup(#[from] crate::app::backup::BackupError),
    #[error(transparent)]
    Secrets(#[from] crate::use_cases::credentials::fleet_secrets::FleetSecretsError),
    #[error(
        "a fleet in PostgreSQL keeps its CA in the database, sealed with a key every controller is given: create one \
         (`openssl rand -hex 32 > /etc/comfyfleet/secrets.key`, mode 0600) and start with --secrets-key-file"
    )]
    NoSecretsKey,
    #[error(transparent)]
    Pki(#[from] crate::use_cases::credentials::pki::PkiError),
    #[error(transparent)]
    Tls(#[from] crate::app::tls::TlsSetupError),
    #[error(transparent)]
    ServerCertificate(#[from] crate::use_cases::credentials::server_certificate::ServerCertificateError),
    #[error(transparent)]
    AdminFile(#[from] admin_file::AdminFileError),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot set up the package cache: {0}")]
    Cache(String),
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Runs the controller until `shutdown` resolves. `on_ready` gets the URL it serves.
pub async fn run(
    options: ControllerOptions,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(&str),
) -> Result<(), ControllerError> {
    let data_dir = &options.data_dir;
    files::create_private_dir(data_dir)
        .map_err(|source| ControllerError::DataDir { path: data_dir.clone(), source })?;
    let _data_dir_lock = crate::app::backup::lock_data_dir(data_dir)?;
    let metrics = crate::counters::Metrics::default();
    let (store, database, clustered) = open_store(&options, &metrics).await?;
    let fleet = crate::use_cases::credentials::fleet_identity::establish(
        data_dir,
        &database,
        store.as_ref(),
        options.initialize,
    )
    .await?;
    let secrets_key = if options.database_url.is_some() {
        let path = options.secrets_key_file.as_deref().ok_or(ControllerError::NoSecretsKey)?;
        let key = crate::use_cases::credentials::fleet_secrets::SecretsKey::load(path)?;
        crate::use_cases::credentials::fleet_secrets::share_ca(store.as_ref(), &key, &fleet.id, data_dir)
            .await?;
        key
    } else {
        match options.secrets_key_file.as_deref() {
            Some(path) => crate::use_cases::credentials::fleet_secrets::SecretsKey::load(path)?,
            // One controller: its source credentials are sealed with a key of its own.
            None => crate::use_cases::credentials::fleet_secrets::SecretsKey::load_or_create(
                &data_dir.join("pki").join("secrets.key"),
            )?,
        }
    };
    let source_secrets = Arc::new(crate::use_cases::source_secrets::SourceSecrets::new(
        store.clone(),
        secrets_key,
        fleet.id.clone(),
    ));
    let ca = Arc::new(CertificateAuthority::load_or_create(data_dir)?);

    let address = resolve_listen(&options.listen).await?;
    let listener =
        TcpListener::bind(address).await.map_err(|source| ControllerError::Bind { address, source })?;
    let bound = listener.local_addr().map_err(|source| ControllerError::Bind { address, source })?;
    let url = options.advertise_url.clone().unwrap_or_else(|| default_url(bound));
    let names = certificate_names(bound, &url, &options.tls_sans);
    let server_certificate =
        Arc::new(ServerCertificate::issue(&ca, names, options.server_certificate_life, data_dir)?);
    let tls_config = tls::server_config(&ca, server_certificate.resolver())?;
    // Bound now, so a port in use is an error before anything else starts.
    let metrics_listener = match &options.metrics_listen {
        Some(listen) => Some(bind(listen).await?),
        None => None,
    };
    let web = match &options.web_listen {
        Some(listen) => Some((bind(listen).await?, tls::web_server_config(server_certificate.resolver())?)),
        None => None,
    };

    let cache_dir = data_dir.join("cache");
    let packages = Arc::new(
        crate::use_cases::package_cache::PackageCache::with_secrets(
            cache_dir.join("packages"),
            options.settings.cache_max_size,
            store.clone(),
            options.settings.sources.clone(),
            Some(source_secrets.clone()),
        )
        .map_err(ControllerError::Cache)?,
    );
    let mirror = crate::use_cases::sources::git_mirror::GitMirror::new(
        cache_dir.join("git"),
        options.settings.sources.clone(),
        options.settings.children.clone(),
    );
    let locker = crate::use_cases::environments::locking::Locker {
        uv: options.settings.uv.clone(),
        children: options.settings.children.clone(),
        work: cache_dir.join("locking"),
        mirror: mirror.clone(),
        upstream: packages.upstream().clone(),
    };
    let cluster = match clustered {
        Some((pool, link)) => Some(crate::use_cases::cluster::Cluster::join(pool, link, &url).await?),
        None => None,
    };
    // With one controller it always leads (the sender lives as long as the server).
    let (_always, alone) = tokio::sync::watch::channel(true);
    let leading = cluster.as_ref().map_or(alone, |cluster| cluster.leading());
    let (rollouts, inbox) = Rollouts::new();
    let reports = ReportWriter::spawn(store.clone(), rollouts.clone());
    let state = Arc::new(ControllerState {
        store,
        ca,
        server_certificate,
        presence: Presence::new(),
        settings: options.settings.clone(),
        reports,
        rollouts,
        specs: Default::default(),
        packages,
        mirror,
        locker,
        metrics,
        fleet_id: fleet.id.clone(),
        cluster: cluster.clone(),
        source_secrets,
        access: Default::default(),
        fleet: Default::default(),
    });
    state.fleet.load(state.store.as_ref()).await?;
    if cluster.is_some() {
        tokio::spawn(state.fleet.clone().refresh_from(state.store.clone()));
    }
    let _engine = crate::use_cases::rollouts::spawn(state.clone(), inbox, leading);
    let handed = Arc::new(crate::edges::operator_grpc::rollout_api::HandedRolloutCalls);
    let cluster_tasks =
        cluster.as_ref().map(|cluster| cluster.start(state.clone(), handed)).unwrap_or_default();
    let urls = match &cluster {
        Some(cluster) => cluster.urls().await,
        None => vec![url.clone()],
    };
    let admin_path = admin_file::ensure(data_dir, &urls, &state).await?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServiceServer<AgentApi>>().await;
    health.set_serving::<FleetServiceServer<FleetApi>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(comfyfleet_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(comfyfleet_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let agent_api = AgentServiceServer::new(AgentApi::new(state.clone()))
        .max_decoding_message_size(comfyfleet_proto::MAX_AGENT_MESSAGE_BYTES);
    let fleet_api = FleetServiceServer::new(FleetApi::new(state.clone()))
        .max_encoding_message_size(comfyfleet_proto::MAX_FLEET_MESSAGE_BYTES);

    let flusher = tokio::spawn(flush_last_seen(state.clone()));
    let mut side_tasks = vec![
        tokio::spawn(crate::app::retention::prune_forever(state.store.clone(), options.retention)),
        tokio::spawn(crate::use_cases::credentials::server_certificate::renew_forever(
            state.server_certificate.clone(),
            state.ca.clone(),
        )),
    ];
    if let Some(interval) = options.backup_interval {
        side_tasks.push(tokio::spawn(crate::app::backup::rotate_forever(
            state.store.clone(),
            data_dir.clone(),
            interval,
            options.backup_keep,
        )));
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let routes = tonic::service::Routes::from(crate::edges::cache_http::router(state.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(agent_api)
        .add_service(fleet_api);
    let server = tonic::transport::Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            tls::incoming(listener, tls_config, options.connection_limits),
            async {
                let _ = stopped.await;
            },
        );
    tokio::pin!(server);

    let mut side_servers = Vec::new();
    if let Some(listener) = metrics_listener {
        let limits = options.connection_limits;
        let address = listener.local_addr().ok();
        let endpoint =
            crate::edges::metrics::MetricsEndpoint::new(state.clone(), options.metrics_token.clone());
        tracing::info!(listen = ?address, token = options.metrics_token.is_some(), "serving /metrics");
        // The web page's server and limits: a deadline for the first request, hyper's
        // header-read timeout after it, and the per-address cap.
        let routes = tonic::service::Routes::from(crate::edges::metrics::router(endpoint));
        side_servers.push(tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .accept_http1(true)
                .add_routes(routes)
                .serve_with_incoming(crate::app::connection_guard::incoming(listener, limits))
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "the metrics server failed");
            }
        }));
    }
    if let Some((listener, config)) = web {
        let limits = options.connection_limits;
        let address = listener.local_addr().ok();
        tracing::info!(listen = ?address, "serving the web page");
        let routes = tonic::service::Routes::from(crate::edges::web::router(state.clone()));
        side_servers.push(tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .accept_http1(true)
                .add_routes(routes)
                .serve_with_incoming(tls::incoming(listener, config, limits))
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "the web server failed");
            }
        }));
    }

    tracing::info!(%url, listen = %bound, fleet_id = %fleet.id, admin_config = %admin_path.display(), ca_sha256 = %state.ca.sha256(), "controller ready");
    on_ready(&url);

    tokio::select! {
        result = &mut server => {
            flusher.abort();
            return result.map_err(ControllerError::from);
        }
        () = shutdown => {}
    }
    for side in side_servers.iter().chain(&side_tasks) {
        side.abort();
    }
    health.set_not_serving::<AgentServiceServer<AgentApi>>().await;
    health.set_not_serving::<FleetServiceServer<FleetApi>>().await;
    state.presence.kick_all(KickReason::Shutdown);
    let _ = stop.send(());
    match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!("connections still open after {} s; closing them", DRAIN_TIMEOUT.as_secs()),
    }
    flusher.abort();
    if let Err(error) = state.store.record_last_seen(&state.presence.snapshot()).await {
        tracing::warn!(%error, "cannot record last-seen times at shutdown");
    }
    for task in &cluster_tasks {
        task.abort();
    }
    if let Some(cluster) = &cluster {
        cluster.leave().await;
    }
    state.store.close().await;
    tracing::info!("controller stopped");
    Ok(())
}

/// What a controller on PostgreSQL joins the fleet's other controllers with.
type Clustered = Option<(sqlx::PgPool, Arc<crate::store::ClusterLink>)>;

/// The store `--database-url` names (PostgreSQL), else the data dir's SQLite file,
/// metered; how messages name it; and, on PostgreSQL, what joins the cluster.
async fn open_store(
    options: &ControllerOptions,
    metrics: &crate::counters::Metrics,
) -> Result<(Arc<dyn Store>, String, Clustered), ControllerError> {
    let data_dir = &options.data_dir;
    let may_create =
        options.initialize || !crate::use_cases::credentials::fleet_identity::has_served(data_dir);
    if let Some(url) = &options.database_url {
        let shown = crate::store::redact_url(url);
        let store = crate::store::PostgresStore::connect(url).await?;
        if !may_create && !store.holds_fleet().await? && store.fleet_id().await?.is_none() {
            return Err(crate::use_cases::credentials::fleet_identity::empty_refusal(data_dir, &shown).into());
        }
        let clustered = Some((store.pool().clone(), store.cluster_link()));
        let metered = crate::store::MeteredStore { inner: store, metrics: metrics.clone() };
        return Ok((Arc::new(metered), shown, clustered));
    }
    let database = data_dir.join(crate::app::backup::DATABASE_FILE);
    let opened = SqliteStore::open_with(&database, may_create).await.map_err(|error| match error {
        crate::store::StoreError::Empty { path } => ControllerError::Fleet(
            crate::use_cases::credentials::fleet_identity::empty_refusal(data_dir, &path),
        ),
        crate::store::StoreError::Damaged { path, detail } => ControllerError::Fleet(
            crate::use_cases::credentials::fleet_identity::FleetIdentityError::Damaged {
                database: path,
                detail,
                advice: crate::use_cases::credentials::fleet_identity::restore_advice(data_dir, false),
            },
        ),
        other => ControllerError::Store(other),
    })?;
    let metered = crate::store::MeteredStore { inner: opened, metrics: metrics.clone() };
    Ok((Arc::new(metered), database.display().to_string(), None))
}

async fn bind(listen: &str) -> Result<TcpListener, ControllerError> {
    let address = resolve_listen(listen).await?;
    TcpListener::bind(address).await.map_err(|source| ControllerError::Bind { address, source })
}

async fn resolve_listen(listen: &str) -> Result<SocketAddr, ControllerError> {
    let invalid = |detail: String| ControllerError::ListenAddress { listen: listen.to_owned(), detail };
    let mut addresses = tokio::net::lookup_host(listen).await.map_err(|e| invalid(e.to_string()))?;
    addresses.next().ok_or_else(|| invalid("no address".into()))
}

/// The URL written to admin.toml when `--advertise-url` is not given: the bound
/// address, or loopback when bound to every interface (give `--advertise-url` for
/// operators on other hosts).
fn default_url(bound: SocketAddr) -> String {
    let host = match bound.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    format!("https://{host}:{}", bound.port())
}

/// Every name the server certificate covers: loopback, this host's name, the bound
/// and advertised addresses, and whatever `--tls-san` adds.
fn certificate_names(bound: SocketAddr, url: &str, extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if let Ok(uname) = rustix::system::uname().nodename().to_str() {
        names.push(uname.to_owned());
    }
    if !bound.ip().is_unspecified() {
        names.push(bound.ip().to_string());
    }
    if let Some(host) = url_host(url) {
        names.push(host);
    }
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    names
}

fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    (!host.is_empty()).then(|| host.to_owned())
}

async fn flush_last_seen(state: Arc<ControllerState>) {
    let mut tick = tokio::time::interval(LAST_SEEN_FLUSH);
    tick.tick().await;
    loop {
        tick.tick().await;
        let seen = state.presence.snapshot();
        if let Err(error) = state.store.record_last_seen(&seen).await {
            tracing::warn!(%error, "cannot record last-seen times");
        }
        tracing::debug!(online = seen.len(), at = %Timestamp::now(), "flushed last-seen times");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_names() {
        assert_eq!(default_url("127.0.0.1:7443".parse().unwrap()), "https://127.0.0.1:7443");
        assert_eq!(default_url("0.0.0.0:7443".parse().unwrap()), "https://127.0.0.1:7443");
        assert_eq!(default_url("[::]:1".parse().unwrap()), "https://[::1]:1");
        assert_eq!(url_host("https://ctl.example:7443").as_deref(), Some("ctl.example"));
        assert_eq!(url_host("https://[fd00::1]:7443").as_deref(), Some("fd00::1"));
        let names =
            certificate_names("10.0.0.5:7443".parse().unwrap(), "https://ctl.example:7443", &["x".into()]);
        for expected in ["localhost", "127.0.0.1", "10.0.0.5", "ctl.example", "x"] {
            assert!(names.iter().any(|name| name == expected), "{expected} missing from {names:?}");
        }
    }
}
