//! Finding an environment's revisions by what operators write ("" for the latest, a
//! number, or a prefix of the id), and what a stored revision holds.

use comfyfleet_config::source_credentials::SourceCredentials;
use comfyfleet_config::spec::{Spec, SpecFormat};

use super::{MIN_ID_PREFIX, RevisionError};
use crate::store::StoredRevision;
use crate::use_cases::ControllerState;

pub const MAX_ENVIRONMENT_NAME: usize = 64;
/// Candidates named when an id prefix matches several revisions.
const CANDIDATES_SHOWN: usize = 10;

/// The revision `revision` names in environment `name`: "" for the latest, a number,
/// or a unique prefix of its id. Every call that names a revision resolves it here.
pub async fn find_revision(
    state: &ControllerState,
    name: &str,
    revision: &str,
) -> Result<StoredRevision, RevisionError> {
    check_environment_name(name)?;
    let selector = RevisionSelector::parse(revision)?;
    let latest = state
        .store
        .latest_environment_revision(name)
        .await?
        .ok_or_else(|| RevisionError::UnknownEnvironment { name: name.to_owned() })?;
    let revision = match selector {
        RevisionSelector::Latest => latest,
        RevisionSelector::Number(number) if number == latest.number => latest,
        RevisionSelector::Number(number) => {
            match state.store.environment_revision(name, number).await? {
                Some(revision) => revision,
                // An id prefix can be all decimal digits (`11295557`): a number that
                // names no revision may still be the start of exactly one id.
                None => match digits_as_id_prefix(state, name, revision).await? {
                    Some(revision) => revision,
                    None => {
                        return Err(RevisionError::NoRevisionNumbered {
                            environment: name.to_owned(),
                            number,
                            newest: latest.number,
                        });
                    }
                },
            }
        }
        RevisionSelector::IdPrefix(prefix) => {
            let limit = u32::try_from(CANDIDATES_SHOWN + 1).unwrap_or(u32::MAX);
            let mut matches = state.store.find_environment_revisions(name, &prefix, limit).await?;
            match matches.len() {
                0 => {
                    return Err(RevisionError::NoRevisionWithPrefix { environment: name.to_owned(), prefix });
                }
                1 => matches.remove(0),
                _ => return Err(ambiguous_prefix(name, &prefix, &matches)),
            }
        }
    };
    Ok(revision)
}

/// The one revision whose id starts with `digits`, if they are long enough to be a prefix.
async fn digits_as_id_prefix(
    state: &ControllerState,
    name: &str,
    digits: &str,
) -> Result<Option<StoredRevision>, RevisionError> {
    if digits.len() < MIN_ID_PREFIX || digits.len() > 64 {
        return Ok(None);
    }
    let mut matches = state.store.find_environment_revisions(name, digits, 2).await?;
    Ok(if matches.len() == 1 { matches.pop() } else { None })
}

/// Which revision a call asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevisionSelector {
    Latest,
    Number(u32),
    /// Lowercase hex, [`MIN_ID_PREFIX`] to 64 digits.
    IdPrefix(String),
}

impl RevisionSelector {
    pub fn parse(text: &str) -> Result<Self, RevisionError> {
        if text.is_empty() {
            return Ok(Self::Latest);
        }
        if text.bytes().all(|b| b.is_ascii_digit())
            && let Ok(number) = text.parse()
        {
            // Also tried as an id prefix when no revision has that number.
            return Ok(Self::Number(number));
        }
        let is_prefix =
            (MIN_ID_PREFIX..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit());
        if is_prefix {
            return Ok(Self::IdPrefix(text.to_ascii_lowercase()));
        }
        Err(RevisionError::NotARevision { text: text.to_owned() })
    }
}

fn ambiguous_prefix(name: &str, prefix: &str, matches: &[StoredRevision]) -> RevisionError {
    let mut candidates: Vec<String> = matches
        .iter()
        .take(CANDIDATES_SHOWN)
        .map(|revision| format!("{} ({})", revision.number, revision.id.short()))
        .collect();
    if matches.len() > CANDIDATES_SHOWN {
        candidates.push("…".to_owned());
    }
    RevisionError::SeveralRevisionsMatch {
        environment: name.to_owned(),
        prefix: prefix.to_owned(),
        candidates: candidates.join(", "),
    }
}

pub fn check_environment_name(name: &str) -> Result<(), RevisionError> {
    if name.is_empty() || name.len() > MAX_ENVIRONMENT_NAME {
        return Err(RevisionError::NoEnvironmentName);
    }
    Ok(())
}

/// The spec a stored revision holds (canonical JSON, itself a valid spec).
pub fn revision_spec(revision: &StoredRevision) -> Result<Spec, RevisionError> {
    let name = format!("{}@{}", revision.environment, revision.number);
    Spec::parse(&name, &revision.spec_json, SpecFormat::Json)
        .map_err(|errors| RevisionError::StoredRevisionUnparsable { name, errors: errors.to_string() })
}

/// The stored credentials `spec` names, bound to its sources; a name the
/// controller does not have, or one named for an origin its secret is not bound to,
/// is refused with what to do.
pub async fn source_credentials(
    state: &ControllerState,
    spec: &Spec,
) -> Result<SourceCredentials, RevisionError> {
    state.source_secrets.for_spec(spec).await.map_err(|error| match error {
        crate::use_cases::source_secrets::SourceSecretsError::Refused(_) => {
            RevisionError::SourceCredentialsRefused(error)
        }
        other => RevisionError::SourceSecrets(other),
    })
}
