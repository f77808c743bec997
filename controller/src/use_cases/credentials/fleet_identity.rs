//! One fleet id, kept both in the store and in the data dir's `fleet-id` file: a
//! controller whose database was emptied, lost or swapped for another fleet's refuses
//! to start (and says how to restore) instead of serving a new, empty fleet on the old
//! CA, where every agent would be an unknown machine.

use std::path::{Path, PathBuf};

use comfyfleet_daemon::files;
use jiff::Timestamp;

use crate::store::{Store, StoreError};

pub const FLEET_ID_FILE: &str = "fleet-id";
/// Where `--backup-interval` keeps its snapshots, inside the data dir.
pub const BACKUP_DIR: &str = "backups";

#[derive(Debug, thiserror::Error)]
pub enum FleetIdentityError {
    #[error(
        "the database {database} holds no fleet, but this data dir ({data_dir}) has served fleet {fleet}: \
         the database was emptied, lost or replaced, so this controller did not start (it would have served \
         a new, empty fleet that every enrolled agent is unknown to).\n{advice}"
    )]
    Empty { database: String, data_dir: String, fleet: String, advice: String },
    #[error(
        "the database {database} holds fleet {stored}, but this data dir ({data_dir}) has served fleet {served}: \
         it is another fleet's database, so this controller did not start.\n{advice}"
    )]
    OtherFleet { database: String, data_dir: String, stored: String, served: String, advice: String },
    #[error("the database {database} is damaged ({detail}), so this controller did not start.\n{advice}")]
    Damaged { database: String, detail: String, advice: String },
    #[error(
        "{path} holds `{text}`, not a fleet id (32 hex digits); restore it or remove it to adopt the database's"
    )]
    BadFile { path: PathBuf, text: String },
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to run to bring the fleet back: the newest snapshot by name if there is one.
pub fn restore_advice(data_dir: &Path, initialize_hint: bool) -> String {
    let newest = newest_snapshot(&data_dir.join(BACKUP_DIR));
    let from = newest.as_ref().map_or_else(|| "SNAPSHOT.db".to_owned(), |path| path.display().to_string());
    let mut advice = format!(
        "To bring the fleet back, restore a snapshot (from `comfyfleet-controller backup` or --backup-interval) \
         and start again:\n  comfyfleet-controller --data-dir {} restore --from {from}",
        data_dir.display()
    );
    if newest.is_none() {
        advice.push_str(&format!(
            "\n(no snapshot in {}; use your own copy)",
            data_dir.join(BACKUP_DIR).display()
        ));
    }
    if initialize_hint {
        advice.push_str(
            "\nTo start a new, empty fleet on purpose instead, start with --initialize: every enrolled agent \
             must then enroll again.",
        );
    }
    advice
}

/// The snapshot in `dir` with the greatest name (names carry their UTC time).
pub fn newest_snapshot(dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "db"))
        .max()
}

/// Whether this data dir has served a fleet: it names one, or (from before fleet ids)
/// holds a CA.
pub fn has_served(data_dir: &Path) -> bool {
    data_dir.join(FLEET_ID_FILE).exists() || data_dir.join("pki").join("ca.crt").exists()
}

/// The refusal of a database that holds nothing, in a data dir that has served a fleet.
pub fn empty_refusal(data_dir: &Path, database: &str) -> FleetIdentityError {
    FleetIdentityError::Empty {
        database: database.to_owned(),
        data_dir: data_dir.display().to_string(),
        fleet: read_fleet_file(&data_dir.join(FLEET_ID_FILE))
            .ok()
            .flatten()
            .unwrap_or_else(|| "(from before fleet ids)".to_owned()),
        advice: restore_advice(data_dir, true),
    }
}

fn new_fleet_id() -> String {
    crate::use_cases::credentials::secrets::random_hex(32)
}

fn read_fleet_file(path: &Path) -> Result<Option<String>, FleetIdentityError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let id = text.trim();
            if id.len() == 32 && id.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                Ok(Some(id.to_ascii_lowercase()))
            } else {
                Err(FleetIdentityError::BadFile {
                    path: path.to_owned(),
                    text: id.chars().take(40).collect(),
                })
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FleetIdentityError::Io { path: path.to_owned(), source }),
    }
}

fn write_fleet_file(path: &Path, id: &str) -> Result<(), FleetIdentityError> {
    files::write_private(path, format!("{id}\n").as_bytes())
        .map_err(|source| FleetIdentityError::Io { path: path.to_owned(), source })
}

/// What [`establish`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    pub id: String,
    /// A new fleet was created (a fresh data dir, or `--initialize` on an empty store).
    pub created: bool,
}

/// Checks that the store and the data dir hold the same fleet, gives a fresh pair a new
/// one, and refuses the rest. `initialize`: start a new fleet on an empty store, or
/// adopt the store's fleet into a data dir that served another.
pub async fn establish(
    data_dir: &Path,
    database: &str,
    store: &dyn Store,
    initialize: bool,
) -> Result<Fleet, FleetIdentityError> {
    let file = data_dir.join(FLEET_ID_FILE);
    let served = read_fleet_file(&file)?;
    // A data dir from before fleet ids served a fleet if it holds a CA.
    let has_served = served.is_some() || has_served(data_dir);
    match (store.fleet_id().await?, served) {
        (Some(stored), Some(served)) if stored == served => Ok(Fleet { id: stored, created: false }),
        (Some(stored), Some(served)) => {
            if !initialize {
                return Err(FleetIdentityError::OtherFleet {
                    database: database.to_owned(),
                    data_dir: data_dir.display().to_string(),
                    stored,
                    served,
                    advice: format!(
                        "{}\nIf this data dir should serve the database's fleet, start once with --initialize.",
                        restore_advice(data_dir, false)
                    ),
                });
            }
            tracing::warn!(%stored, %served, "--initialize: this data dir now serves the database's fleet");
            write_fleet_file(&file, &stored)?;
            Ok(Fleet { id: stored, created: false })
        }
        // A new data dir for a fleet the database holds (another controller's host).
        (Some(stored), None) => {
            write_fleet_file(&file, &stored)?;
            Ok(Fleet { id: stored, created: false })
        }
        (None, served) => {
            if store.holds_fleet().await? {
                // A database from before fleet ids: it gets one now.
                let id = store.adopt_fleet_id(&served.unwrap_or_else(new_fleet_id), Timestamp::now()).await?;
                write_fleet_file(&file, &id)?;
                tracing::info!(fleet_id = %id, "the fleet now has an id");
                return Ok(Fleet { id, created: false });
            }
            if has_served && !initialize {
                return Err(empty_refusal(data_dir, database));
            }
            if has_served {
                // Its admin.toml names a credential the new fleet does not have.
                let admin = data_dir.join("admin.toml");
                if admin.exists() {
                    let aside = data_dir
                        .join(format!("admin.toml.before-initialize-{}", Timestamp::now().as_second()));
                    std::fs::rename(&admin, &aside)
                        .map_err(|source| FleetIdentityError::Io { path: admin.clone(), source })?;
                }
                tracing::warn!(
                    "--initialize: starting a new, empty fleet; enrolled agents must enroll again"
                );
            }
            let id = store.adopt_fleet_id(&new_fleet_id(), Timestamp::now()).await?;
            write_fleet_file(&file, &id)?;
            tracing::info!(fleet_id = %id, "created a new fleet");
            Ok(Fleet { id, created: true })
        }
    }
}

#[cfg(test)]
mod tests;
