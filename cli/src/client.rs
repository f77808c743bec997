//! Connecting to the controller as an operator: admin.toml gives the URL, the CA to
//! trust and the credential sent with every call.

use std::path::{Path, PathBuf};
use std::time::Duration;

use comfyfleet_config::AdminConfig;
use comfyfleet_proto::transport;
use comfyfleet_proto::v1::fleet_service_client::FleetServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// How long connecting to one controller (TCP, TLS, HTTP/2) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub type Fleet = FleetServiceClient<InterceptedService<Channel, Bearer>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no operator config: pass --config FILE or set COMFYFLEET_CONFIG (the controller writes DATA_DIR/admin.toml at first start)"
    )]
    NoConfig,
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: comfyfleet_config::admin_config::AdminConfigError },
    #[error(transparent)]
    Endpoint(#[from] transport::EndpointError),
    #[error("cannot reach the controller at {url}: {detail}")]
    Connect { url: String, detail: String },
}

/// Adds `authorization: Bearer …` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// The config file to use: the flag, else the environment, else the per-user default.
pub fn config_path(flag: Option<PathBuf>) -> Result<PathBuf, ClientError> {
    if let Some(path) = flag {
        return Ok(path);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let default = home.map(|home| home.join(".config/comfyfleet/admin.toml"));
    default.filter(|path| path.exists()).ok_or(ClientError::NoConfig)
}

pub fn load_config(path: &Path) -> Result<AdminConfig, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ClientError::Read { path: path.to_owned(), source })?;
    AdminConfig::parse(&text).map_err(|source| ClientError::Invalid { path: path.to_owned(), source })
}

/// Connects to the first of the config's controllers that answers (`server`, then
/// `other_servers` in order): any controller of a fleet takes every call.
pub async fn connect(config: &AdminConfig) -> Result<Fleet, ClientError> {
    let mut failures = Vec::new();
    for url in config.servers() {
        match connect_to(config, url).await {
            Ok(fleet) => return Ok(fleet),
            Err(ClientError::Connect { url, detail }) => failures.push((url, detail)),
            Err(other) => return Err(other),
        }
    }
    if let [(url, detail)] = failures.as_slice() {
        return Err(ClientError::Connect { url: url.clone(), detail: detail.clone() });
    }
    Err(ClientError::Connect {
        url: format!("any of the fleet's {} controllers", failures.len()),
        detail: failures
            .iter()
            .map(|(url, detail)| format!("{url}: {detail}"))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// Moves a connection to another of the fleet's controllers, for commands that
/// outlive the controller they started on (`rollout watch`, `--wait`): any controller
/// of a fleet answers for the whole fleet.
#[derive(Debug)]
pub struct Failover {
    /// The index in the config's servers to try first.
    next: usize,
}

impl Failover {
    /// For a connection [`connect`] made: most likely to `server`, so the others
    /// come first.
    pub fn after_connect() -> Self {
        Self { next: 1 }
    }

    /// Replaces `fleet` with a connection to the next of the config's controllers that
    /// accepts one, each tried once, round from the one after the last reached (so
    /// with one controller, a fresh connection to it); the URL reached.
    pub async fn reconnect(
        &mut self,
        config: &AdminConfig,
        fleet: &mut Fleet,
    ) -> Result<String, ClientError> {
        let servers: Vec<&str> = config.servers().collect();
        let mut failures = Vec::new();
        for offset in 0..servers.len() {
            let index = (self.next + offset) % servers.len();
            match connect_to(config, servers[index]).await {
                Ok(connected) => {
                    *fleet = connected;
                    self.next = index + 1;
                    return Ok(servers[index].to_owned());
                }
                Err(ClientError::Connect { url, detail }) => failures.push(format!("{url}: {detail}")),
                Err(other) => return Err(other),
            }
        }
        Err(ClientError::Connect {
            url: "any of the fleet's controllers".into(),
            detail: failures.join("; "),
        })
    }
}

async fn connect_to(config: &AdminConfig, url: &str) -> Result<Fleet, ClientError> {
    // A controller that accepts the connection and then says nothing (overloaded, or
    // not a controller) fails the call within seconds rather than hanging it: the
    // connection and handshakes have a deadline, and a silent HTTP/2 peer is found by
    // its unanswered pings.
    let endpoint = transport::endpoint(url)?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .tls_config(transport::tls_config(&config.ca_certificate, None))
        .map_err(|e| ClientError::Connect { url: url.to_owned(), detail: e.to_string() })?;
    let channel = match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
        Ok(connected) => connected
            .map_err(|e| ClientError::Connect { url: url.to_owned(), detail: transport::error_chain(&e) })?,
        Err(_) => {
            return Err(ClientError::Connect {
                url: url.to_owned(),
                detail: format!("no TLS and HTTP/2 connection within {} s", CONNECT_TIMEOUT.as_secs()),
            });
        }
    };
    let header = format!("Bearer {}", config.credential).parse::<MetadataValue<Ascii>>().map_err(|_| {
        ClientError::Connect { url: url.to_owned(), detail: "the credential is not ASCII".into() }
    })?;
    Ok(FleetServiceClient::with_interceptor(channel, Bearer(header))
        .max_decoding_message_size(comfyfleet_proto::MAX_FLEET_MESSAGE_BYTES))
}
