//! Snapshots of the store and putting one back: `comfyfleet-controller backup --to`,
//! `--backup-interval` (rotating snapshots in `<data-dir>/backups/`), and
//! `comfyfleet-controller restore --from`, which runs only while no controller holds
//! the data dir.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;

use crate::store::{SnapshotFacts, SqliteStore, Store, StoreError};
use crate::use_cases::credentials::fleet_identity::{BACKUP_DIR, FLEET_ID_FILE};

pub const DATABASE_FILE: &str = "controller.db";
const LOCK_FILE: &str = "controller.lock";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path} exists; give a new file name (a snapshot never overwrites one)")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the snapshot {path} holds no fleet (no fleet id, no credential): it is not a fleet's backup")]
    NotAFleet { path: PathBuf },
    #[error(
        "the snapshot {path} holds fleet {snapshot}, but this data dir serves fleet {served}; restore one of \
         fleet {served}'s snapshots, or restore into a new data dir"
    )]
    OtherFleet { path: PathBuf, snapshot: String, served: String },
    #[error(
        "a controller is running on {data_dir} (it holds {lock}); stop it first (systemctl stop \
         comfyfleet-controller), then restore"
    )]
    Running { data_dir: PathBuf, lock: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_owned(), source }
}

/// Held while a controller (or a restore) uses the data dir: two controllers on one
/// SQLite file, or a restore under a running one, are refused.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes the data dir's lock, or says who holds it.
pub fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, BackupError> {
    let path = data_dir.join(LOCK_FILE);
    let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(DataDirLock { _file: file }),
        Err(rustix::io::Errno::WOULDBLOCK) => {
            Err(BackupError::Running { data_dir: data_dir.to_owned(), lock: path })
        }
        Err(error) => Err(BackupError::Io { path, source: error.into() }),
    }
}

/// The temporary file a snapshot to `to` is written into before it takes the name:
/// beside it (a rename, never a copy), named after the whole file name and unique to
/// this call, so that snapshots to `x.db` and `x.sqlite`, or two to one name, running
/// at once never write into, or remove, each other's file.
fn partial_path(to: &Path) -> PathBuf {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let name = to.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    to.with_file_name(format!("{name}.{}-{call}.partial", std::process::id()))
}

/// Writes `to` through a `.partial` file that is checked before it takes the name:
/// a snapshot that exists is whole and readable.
async fn write_checked<F, Fut>(to: &Path, write: F) -> Result<SnapshotFacts, BackupError>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    if to.exists() {
        return Err(BackupError::Exists { path: to.to_owned() });
    }
    let partial = partial_path(to);
    let written = async {
        write(partial.clone()).await?;
        let facts = SqliteStore::inspect(&partial).await?;
        if facts.fleet_id.is_none() && facts.credentials == 0 {
            return Err(BackupError::NotAFleet { path: to.to_owned() });
        }
        File::open(&partial).and_then(|file| file.sync_all()).map_err(io(&partial))?;
        take_name(&partial, to)?;
        sync_parent(to)?;
        Ok(facts)
    }
    .await;
    // Gone after a success too, when the name was taken by a link.
    let _ = std::fs::remove_file(&partial);
    written
}

/// Gives the finished `partial` the name `to`, unless a file took that name meanwhile
/// (another snapshot to the same name): a hard link fails where a rename would
/// overwrite. Where the filesystem has no hard links, a rename.
fn take_name(partial: &Path, to: &Path) -> Result<(), BackupError> {
    match std::fs::hard_link(partial, to) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(BackupError::Exists { path: to.to_owned() })
        }
        Err(_) => std::fs::rename(partial, to).map_err(io(to)),
    }
}

fn sync_parent(path: &Path) -> Result<(), BackupError> {
    let parent = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(parent).and_then(|dir| dir.sync_all()).map_err(io(parent))
}

/// A snapshot of the running controller's store.
pub async fn snapshot(store: &dyn Store, to: &Path) -> Result<SnapshotFacts, BackupError> {
    write_checked(to, |partial| async move { store.backup(&partial).await }).await
}

/// `comfyfleet-controller backup --to FILE`: a snapshot of the data dir's database,
/// taken from outside while a controller may be serving from it.
pub async fn snapshot_data_dir(data_dir: &Path, to: &Path) -> Result<SnapshotFacts, BackupError> {
    let database = data_dir.join(DATABASE_FILE);
    write_checked(to, |partial| async move { SqliteStore::snapshot_file(&database, &partial).await }).await
}

/// The file name a rotating snapshot taken at `at` gets: names sort by time.
pub fn snapshot_name(at: Timestamp) -> String {
    format!("controller-{}.db", at.strftime("%Y%m%dT%H%M%SZ"))
}

/// `--backup-interval`: a snapshot every `interval` into `<data-dir>/backups/`,
/// keeping the newest `keep`.
pub async fn rotate_forever(store: Arc<dyn Store>, data_dir: PathBuf, interval: Duration, keep: usize) {
    let dir = data_dir.join(BACKUP_DIR);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(error) = comfyfleet_daemon::files::create_private_dir(&dir) {
            tracing::error!(%error, dir = %dir.display(), "cannot create the backup dir");
            continue;
        }
        let path = dir.join(snapshot_name(Timestamp::now()));
        match snapshot(store.as_ref(), &path).await {
            Ok(facts) => {
                tracing::info!(path = %path.display(), machines = facts.machines, "wrote a snapshot");
                prune_snapshots(&dir, keep);
            }
            Err(error) => tracing::error!(%error, path = %path.display(), "cannot write a snapshot"),
        }
    }
}

fn prune_snapshots(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut snapshots: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.extension().is_some_and(|ext| ext == "db")
                && path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("controller-"))
        })
        .collect();
    snapshots.sort();
    let excess = snapshots.len().saturating_sub(keep.max(1));
    for old in &snapshots[..excess] {
        if let Err(error) = std::fs::remove_file(old) {
            tracing::warn!(%error, path = %old.display(), "cannot remove an old snapshot");
        }
    }
}

/// What a restore put back.
#[derive(Debug)]
pub struct Restored {
    pub facts: SnapshotFacts,
    /// Where the database it replaced went (kept, never deleted).
    pub replaced: Option<PathBuf>,
}

/// `comfyfleet-controller restore --from FILE`: puts a checked snapshot in place of the
/// data dir's database while no controller runs. The database it replaces (and its
/// WAL) is moved aside, not deleted.
pub async fn restore(data_dir: &Path, from: &Path) -> Result<Restored, BackupError> {
    let _lock = lock_data_dir(data_dir)?;
    let facts = SqliteStore::inspect(from).await?;
    let Some(snapshot_fleet) = facts.fleet_id.clone().or_else(|| (facts.credentials > 0).then(String::new))
    else {
        return Err(BackupError::NotAFleet { path: from.to_owned() });
    };
    let fleet_file = data_dir.join(FLEET_ID_FILE);
    let served = std::fs::read_to_string(&fleet_file).ok().map(|text| text.trim().to_owned());
    if let Some(served) = &served
        && !snapshot_fleet.is_empty()
        && *served != snapshot_fleet
    {
        return Err(BackupError::OtherFleet {
            path: from.to_owned(),
            snapshot: snapshot_fleet,
            served: served.clone(),
        });
    }

    let database = data_dir.join(DATABASE_FILE);
    let incoming = data_dir.join("controller.db.restoring");
    std::fs::copy(from, &incoming).map_err(io(&incoming))?;
    File::open(&incoming).and_then(|file| file.sync_all()).map_err(io(&incoming))?;
    let mut replaced = None;
    if database.exists() {
        let aside =
            data_dir.join(format!("controller.db.replaced-{}", Timestamp::now().strftime("%Y%m%dT%H%M%SZ")));
        std::fs::rename(&database, &aside).map_err(io(&database))?;
        replaced = Some(aside.clone());
        // A WAL left beside the new file would be replayed into it: keep it with the
        // file it belongs to.
        let wal = data_dir.join("controller.db-wal");
        let wal_aside = PathBuf::from(format!("{}-wal", aside.display()));
        match std::fs::rename(&wal, &wal_aside) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(io(&wal)(error)),
            _ => {}
        }
    }
    let shm = data_dir.join("controller.db-shm");
    match std::fs::remove_file(&shm) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(io(&shm)(error)),
        _ => {}
    }
    std::fs::rename(&incoming, &database).map_err(io(&database))?;
    sync_parent(&database)?;
    if served.is_none() && !snapshot_fleet.is_empty() {
        comfyfleet_daemon::files::write_private(&fleet_file, format!("{snapshot_fleet}\n").as_bytes())
            .map_err(io(&fleet_file))?;
    }
    Ok(Restored { facts, replaced })
}

#[cfg(test)]
mod tests;
