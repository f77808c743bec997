//! The web page's sign-ins, in memory: a random id (the cookie) to the credential it
//! was made with. Bounded twice, so that no one signing in can sign anyone else out:
//! one credential holds at most [`PER_CREDENTIAL`] sessions (its next sign-in ends its
//! own oldest), and all of them at most [`MAX_SESSIONS`] (past it, the credential that
//! holds the most gives up its oldest — only reachable with hundreds of credentials
//! signed in many times each).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Sessions one credential may hold: a person's browsers and devices, with room.
pub const PER_CREDENTIAL: usize = 16;
/// Sessions held at once, all credentials together.
pub const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct WebSession {
    pub credential_id: String,
    pub name: String,
    created: Instant,
    expires: Instant,
}

#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, WebSession>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, WebSession>> {
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps session `id` for `credential_id` for `ttl`, making room as the module
    /// says.
    pub fn insert(&self, id: String, credential_id: &str, name: &str, ttl: Duration) {
        self.insert_at(id, credential_id, name, ttl, Instant::now());
    }

    fn insert_at(&self, id: String, credential_id: &str, name: &str, ttl: Duration, now: Instant) {
        let mut sessions = self.lock();
        sessions.retain(|_, session| session.expires > now);
        let mine = sessions.values().filter(|session| session.credential_id == credential_id).count();
        if mine >= PER_CREDENTIAL {
            remove_oldest_of(&mut sessions, credential_id);
        } else if sessions.len() >= MAX_SESSIONS
            && let Some(largest) = largest_holder(&sessions)
        {
            remove_oldest_of(&mut sessions, &largest);
        }
        let session = WebSession {
            credential_id: credential_id.to_owned(),
            name: name.to_owned(),
            created: now,
            expires: now + ttl,
        };
        sessions.insert(id, session);
    }

    /// The session `id`, unless it expired.
    pub fn get(&self, id: &str) -> Option<WebSession> {
        let now = Instant::now();
        self.lock().get(id).filter(|session| session.expires > now).cloned()
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}

fn remove_oldest_of(sessions: &mut HashMap<String, WebSession>, credential_id: &str) {
    let oldest = sessions
        .iter()
        .filter(|(_, session)| session.credential_id == credential_id)
        .min_by_key(|(_, session)| session.created)
        .map(|(id, _)| id.clone());
    if let Some(oldest) = oldest {
        sessions.remove(&oldest);
    }
}

/// The credential holding the most sessions.
fn largest_holder(sessions: &HashMap<String, WebSession>) -> Option<String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for session in sessions.values() {
        *counts.entry(session.credential_id.as_str()).or_default() += 1;
    }
    counts.into_iter().max_by_key(|(_, count)| *count).map(|(credential, _)| credential.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3600);

    #[test]
    fn a_credential_signing_in_again_and_again_ends_only_its_own_oldest_sessions() {
        let sessions = Sessions::default();
        let start = Instant::now();
        sessions.insert_at("alice-1".into(), "alice", "alice", TTL, start);
        for n in 0..10_050u32 {
            let at = start + Duration::from_millis(u64::from(n) + 1);
            sessions.insert_at(format!("mallory-{n}"), "mallory", "mallory", TTL, at);
        }
        assert!(sessions.get("alice-1").is_some(), "another credential's session stays");
        assert!(sessions.get("mallory-10049").is_some(), "the newest sign-in holds");
        assert!(sessions.get(&format!("mallory-{}", 10_049 - PER_CREDENTIAL)).is_none(), "its oldest went");
        assert_eq!(sessions.lock().len(), PER_CREDENTIAL + 1);
    }

    #[test]
    fn at_the_global_cap_the_largest_holder_gives_up_a_session() {
        let sessions = Sessions::default();
        let now = Instant::now();
        // Full: 625 credentials with 15 sessions each but one with 16, and single ones.
        {
            let mut full = sessions.lock();
            let session = |credential: String| WebSession {
                credential_id: credential,
                name: "x".into(),
                created: now,
                expires: now + TTL,
            };
            for credential in 0..MAX_SESSIONS / PER_CREDENTIAL {
                let count = if credential == 7 { PER_CREDENTIAL } else { PER_CREDENTIAL - 1 };
                for n in 0..count {
                    full.insert(format!("{credential}-{n}"), session(credential.to_string()));
                }
            }
            for n in 0..MAX_SESSIONS - full.len() {
                full.insert(format!("f-{n}"), session(format!("f{n}")));
            }
        }
        assert_eq!(sessions.lock().len(), MAX_SESSIONS);
        sessions.insert_at("new".into(), "newcomer", "x", TTL, now);
        assert_eq!(sessions.lock().len(), MAX_SESSIONS);
        let held_by_7 = sessions.lock().values().filter(|session| session.credential_id == "7").count();
        assert_eq!(held_by_7, PER_CREDENTIAL - 1, "the largest holder gave one up");
    }

    #[test]
    fn expired_sessions_are_not_served_and_go_at_the_next_sign_in() {
        let sessions = Sessions::default();
        let past = Instant::now() - Duration::from_secs(10);
        sessions.insert_at("old".into(), "alice", "alice", Duration::from_secs(1), past);
        assert!(sessions.get("old").is_none());
        sessions.insert("new".into(), "bob", "bob", TTL);
        assert_eq!(sessions.lock().len(), 1);
    }
}
