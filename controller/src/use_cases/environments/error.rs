//! What can go wrong finding an environment's revisions.

use comfyfleet_config::spec::names::printable;

use crate::store::StoreError;
use crate::use_cases::source_secrets::SourceSecretsError;

use super::MIN_ID_PREFIX;

#[derive(Debug, thiserror::Error)]
pub enum RevisionError {
    #[error("give an environment name (1 to 64 bytes); `comfyfleet env list` shows them")]
    NoEnvironmentName,
    #[error("no environment {}; `comfyfleet env list` shows them", printable(.name))]
    UnknownEnvironment { name: String },
    #[error(
        "`{}` is not a revision: give its number (3), at least {MIN_ID_PREFIX} hex digits of its id, or \
         nothing for the latest",
        printable(.text)
    )]
    NotARevision { text: String },
    #[error(
        "environment {shown} has no revision {number}; its revisions are 1 to {newest} \
         (`comfyfleet env history {shown}` lists them)",
        shown = printable(.environment)
    )]
    NoRevisionNumbered { environment: String, number: u32, newest: u32 },
    #[error(
        "no revision of environment {shown} has an id starting with `{prefix}` \
         (`comfyfleet env history {shown}` lists them)",
        shown = printable(.environment)
    )]
    NoRevisionWithPrefix { environment: String, prefix: String },
    #[error(
        "`{prefix}` matches several revisions of environment {}: {candidates}; give more digits of the id, or the \
         revision number",
        printable(.environment)
    )]
    SeveralRevisionsMatch { environment: String, prefix: String, candidates: String },
    /// A stored revision's spec no longer parses (a controller fault).
    #[error("stored revision {name} no longer parses: {errors}")]
    StoredRevisionUnparsable { name: String, errors: String },
    /// The spec names source credentials the controller does not have, or for
    /// origins they are not bound to.
    #[error(transparent)]
    SourceCredentialsRefused(SourceSecretsError),
    #[error(transparent)]
    SourceSecrets(SourceSecretsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
