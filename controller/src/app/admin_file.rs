//! `<data-dir>/admin.toml`: written at first start with the first admin credential,
//! and kept pointing at the URL the controller actually bound on every later start.

use std::path::{Path, PathBuf};

use comfyfleet_config::{AdminConfig, Role};
use comfyfleet_daemon::files;

use crate::use_cases::ControllerState;
use crate::use_cases::credentials::auth::mint_credential;

#[derive(Debug, thiserror::Error)]
pub enum AdminFileError {
    #[error(
        "{path} is not a valid admin config ({source}); move it away and restart to mint a new admin credential"
    )]
    Invalid { path: PathBuf, source: comfyfleet_config::admin_config::AdminConfigError },
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot mint the admin credential: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Makes sure `admin.toml` exists and names `urls` (this controller's first, then the
/// fleet's other live controllers) and this CA. Returns its path.
pub async fn ensure(
    data_dir: &Path,
    urls: &[String],
    state: &ControllerState,
) -> Result<PathBuf, AdminFileError> {
    let server_url = urls.first().map(String::as_str).unwrap_or_default();
    let others = urls.get(1..).unwrap_or_default().to_vec();
    let path = data_dir.join("admin.toml");
    let io = |source| AdminFileError::Io { path: path.clone(), source };
    let config = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut config = AdminConfig::parse(&text)
                .map_err(|source| AdminFileError::Invalid { path: path.clone(), source })?;
            if config.server == server_url
                && config.other_servers == others
                && config.ca_certificate == state.ca.certificate_pem()
            {
                return Ok(path);
            }
            config.server = server_url.to_owned();
            config.other_servers = others;
            config.ca_certificate = state.ca.certificate_pem().to_owned();
            config
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let existing = state.store.list_credentials().await?;
            let name = if existing.is_empty() {
                "admin".to_owned()
            } else {
                format!("admin-{}", existing.len() + 1)
            };
            if !existing.is_empty() {
                tracing::warn!(path = %path.display(), %name, "admin.toml was missing; minted a new admin credential");
            }
            let (credential, _) =
                mint_credential(state, &name, Role::Admin, "controller", " (admin.toml)").await?;
            AdminConfig {
                server: server_url.to_owned(),
                credential: credential.to_string(),
                ca_certificate: state.ca.certificate_pem().to_owned(),
                other_servers: others,
            }
        }
        Err(error) => return Err(io(error)),
    };
    files::write_private(&path, config.to_toml().as_bytes()).map_err(io)?;
    Ok(path)
}
