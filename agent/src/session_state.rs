//! What the session with the controller hands to the rest of the agent: which
//! controller it is on now, and the source credentials the controller sent. The link
//! writes them and the executor reads them, so neither has to import the other.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use comfyfleet_config::source_credentials::SourceSecret;
use tokio::sync::Notify;

/// The URL of the controller the agent's session is on now (the first it will try
/// while none is up): builds fetch the package cache from it.
#[derive(Debug, Clone)]
pub struct CurrentController(Arc<Mutex<String>>);

impl CurrentController {
    pub fn new(url: &str) -> Self {
        Self(Arc::new(Mutex::new(url.to_owned())))
    }

    pub fn url(&self) -> String {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The link, when a session opens on `url`.
    pub(crate) fn set(&self, url: &str) {
        url.clone_into(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// Source credentials by name, as the session last delivered them: in memory only,
/// so an agent that restarts holds none until its session delivers them again.
#[derive(Debug, Clone, Default)]
pub struct HeldSecrets(Arc<HeldState>);

#[derive(Debug, Default)]
struct HeldState {
    /// `None` until the first desired state of this process's sessions.
    delivered: RwLock<Option<BTreeMap<String, SourceSecret>>>,
    changed: Notify,
}

impl HeldSecrets {
    /// What a desired state brought: replaces what was held.
    pub fn deliver(&self, secrets: BTreeMap<String, SourceSecret>) {
        *self.0.delivered.write().unwrap_or_else(PoisonError::into_inner) = Some(secrets);
        self.0.changed.notify_waiters();
    }

    /// The credentials held once a session has delivered them: at once if one has,
    /// else when it does (a build resumed from the journal right after a restart
    /// waits for the controller rather than failing against a private source).
    pub async fn delivered(&self) -> BTreeMap<String, SourceSecret> {
        loop {
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(secrets) = self.0.delivered.read().unwrap_or_else(PoisonError::into_inner).clone() {
                return secrets;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_build_waits_for_the_first_delivery_and_not_after_it() {
        let held = HeldSecrets::default();
        let waiting = tokio::spawn({
            let held = held.clone();
            async move { held.delivered().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "nothing delivered yet");
        let secret = SourceSecret {
            username: "u".to_owned(),
            password: "p".to_owned(),
            origins: vec!["https://h".to_owned()],
            bearer: false,
        };
        held.deliver(BTreeMap::from([("farm".to_owned(), secret.clone())]));
        let got = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert_eq!(got.get("farm"), Some(&secret));
        held.deliver(BTreeMap::new());
        let now = tokio::time::timeout(Duration::from_secs(1), held.delivered()).await.unwrap();
        assert!(now.is_empty(), "a later delivery replaces, and is taken at once");
    }
}
