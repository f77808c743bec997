//! `admin.toml`: how an operator's CLI finds and trusts the controller and proves who
//! it is — comfyfleet's kubeconfig. The controller writes the first one into its data
//! dir (mode 0600); `comfyfleet credentials create` prints more.

use serde::{Deserialize, Serialize};

use crate::credential::OperatorCredential;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `https://HOST:PORT` of the controller's gRPC endpoint.
    pub server: String,
    /// The operator credential (`cfo1.…`), sent as a bearer token.
    pub credential: String,
    /// PEM of the controller's CA certificate: the only certificate the CLI trusts.
    pub ca_certificate: String,
    /// The fleet's other controllers, tried in order when `server` cannot be reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_servers: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminConfigError {
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("`server` and `other_servers` must be https:// URLs, not `{0}`")]
    Server(String),
    #[error("`credential`: {0}")]
    Credential(#[from] crate::credential::MalformedCredential),
    #[error("`ca_certificate` must hold a PEM certificate (-----BEGIN CERTIFICATE-----)")]
    CaCertificate,
}

impl AdminConfig {
    pub fn parse(text: &str) -> Result<Self, AdminConfigError> {
        let config: AdminConfig = toml::from_str(text)?;
        for server in std::iter::once(&config.server).chain(&config.other_servers) {
            if !server.starts_with("https://") {
                return Err(AdminConfigError::Server(server.clone()));
            }
        }
        config.credential()?;
        if !config.ca_certificate.contains("-----BEGIN CERTIFICATE-----") {
            return Err(AdminConfigError::CaCertificate);
        }
        Ok(config)
    }

    /// Every controller URL, `server` first.
    pub fn servers(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.server.as_str()).chain(self.other_servers.iter().map(String::as_str))
    }

    pub fn credential(&self) -> Result<OperatorCredential, crate::credential::MalformedCredential> {
        self.credential.parse()
    }

    pub fn to_toml(&self) -> String {
        // Serialising a struct of three strings cannot fail.
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# comfyfleet operator config: the controller's address, the CA to trust and a\n\
             # credential. Keep it secret (mode 0600); use it with `comfyfleet --config FILE`\n\
             # or COMFYFLEET_CONFIG=FILE.\n{body}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AdminConfig {
        AdminConfig {
            server: "https://127.0.0.1:7443".into(),
            credential: "cfo1.0123456789ab.00112233445566778899aabbccddeeff".into(),
            ca_certificate: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            other_servers: Vec::new(),
        }
    }

    #[test]
    fn round_trips() {
        let config = sample();
        assert_eq!(AdminConfig::parse(&config.to_toml()).unwrap(), config);
    }

    #[test]
    fn several_servers_round_trip_in_order() {
        let mut config = sample();
        config.other_servers = vec!["https://10.0.0.2:7443".into(), "https://10.0.0.3:7443".into()];
        let parsed = AdminConfig::parse(&config.to_toml()).unwrap();
        assert_eq!(parsed, config);
        assert_eq!(
            parsed.servers().collect::<Vec<_>>(),
            ["https://127.0.0.1:7443", "https://10.0.0.2:7443", "https://10.0.0.3:7443"]
        );
        config.other_servers.push("http://plain:1".into());
        assert!(AdminConfig::parse(&config.to_toml()).unwrap_err().to_string().contains("http://plain:1"));
    }

    #[test]
    fn says_what_is_wrong() {
        let mut config = sample();
        config.server = "http://x:1".into();
        assert!(AdminConfig::parse(&config.to_toml()).unwrap_err().to_string().contains("https://"));
        let mut config = sample();
        config.credential = "nope".into();
        assert!(AdminConfig::parse(&config.to_toml()).unwrap_err().to_string().contains("credential"));
        assert!(AdminConfig::parse("server = 1").is_err());
        assert!(AdminConfig::parse(&format!("{}\nextra = 1\n", sample().to_toml())).is_err());
    }
}
