//! ComfyUI's database across environments. ComfyUI keeps it, by default, inside its
//! checkout (`ComfyUI/user/comfyui.db`), which would give every revision an empty
//! one; the agent keeps it under `shared/database/` and passes `--database-url`.
//! Each ComfyUI migrates the database forward to the schema it knows (alembic), and
//! an older ComfyUI cannot open a newer schema. So whenever another revision is about
//! to start, the database as the last one left it is kept as a snapshot, and a
//! revision that cannot read the live schema (its migrations do not include every
//! migration the database has been through) starts on the newest snapshot it can
//! read, preferring the one taken when it was itself left: a rollback is never
//! broken by a newer schema.
//!
//! ```text
//! shared/database/comfyui.db            the live database (with -wal/-shm while open)
//! shared/database/owner.json            the revision that last ran on it, and its migrations
//! shared/database/snapshots/<rev>.db    the database as that revision left it
//! shared/database/snapshots/<rev>.json  when, and its migrations
//! ```
//!
//! Called only while no ComfyUI runs, so file copies are consistent.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use comfyfleet_config::spec::SpecDigest;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::complete_record::CompleteRecord;
use crate::layout::Layout;

/// SQLite's companions of a database file, copied and removed with it.
const SIDE_FILES: [&str; 2] = ["-wal", "-shm"];

/// Which revision a database (live or snapshot) was last used by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Owner {
    revision_id: SpecDigest,
    /// `render-prod@3`.
    describe: String,
    migrations: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    taken_at: Option<Timestamp>,
}

impl Owner {
    fn of(record: &CompleteRecord) -> Self {
        Self {
            revision_id: record.revision_id.clone(),
            describe: format!("{}@{}", record.environment, record.revision_number),
            migrations: record.comfyui.migrations.clone(),
            taken_at: None,
        }
    }

    /// Whether a ComfyUI with `migrations` can open a database this owner left.
    fn readable_by(&self, migrations: &[String]) -> bool {
        let known: BTreeSet<&String> = migrations.iter().collect();
        self.migrations.iter().all(|migration| known.contains(migration))
    }
}

/// The live database's path under `layout`.
pub fn live(layout: &Layout) -> PathBuf {
    layout.shared().join("database/comfyui.db")
}

/// `--database-url` for ComfyUI.
pub fn url(layout: &Layout) -> String {
    format!("sqlite:///{}", live(layout).display())
}

fn owner_file(layout: &Layout) -> PathBuf {
    layout.shared().join("database/owner.json")
}

fn snapshots(layout: &Layout) -> PathBuf {
    layout.shared().join("database/snapshots")
}

fn snapshot_name(revision: &SpecDigest) -> String {
    revision.as_str().get(..16).unwrap_or(revision.as_str()).to_owned()
}

/// Makes the live database one that `target`'s ComfyUI can open, before it starts.
/// `running` is the environment that ran until now (where an older agent left the
/// database, inside its checkout). Returns what was done, for the report, if
/// anything worth saying.
pub fn prepare_for(
    layout: &Layout,
    target: &CompleteRecord,
    running: Option<&CompleteRecord>,
) -> Result<Option<String>, String> {
    if !target.comfyui.database_url {
        return Ok(None);
    }
    let live = live(layout);
    let dir = snapshots(layout);
    std::fs::create_dir_all(&dir).map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    let owner = read_json::<Owner>(&owner_file(layout));
    if owner.as_ref().is_some_and(|owner| owner.revision_id == target.revision_id) {
        return Ok(None);
    }
    let mut note = None;
    if !live.exists() {
        // A database an older agent let ComfyUI keep in the running checkout.
        if let Some(running) = running {
            let inside = layout.env(&running.revision_id).comfyui().join("user/comfyui.db");
            if inside.is_file() {
                copy_database(&inside, &live)?;
                note = Some(format!(
                    "ComfyUI's database moved out of {}@{}'s checkout",
                    running.environment, running.revision_number
                ));
            }
        }
    }
    if live.exists()
        && let Some(owner) = &owner
    {
        let kept = dir.join(format!("{}.db", snapshot_name(&owner.revision_id)));
        copy_database(&live, &kept)?;
        let stamped = Owner { taken_at: Some(Timestamp::now()), ..owner.clone() };
        write_json(&kept.with_extension("json"), &stamped)?;
        if !owner.readable_by(&target.comfyui.migrations) {
            note = Some(go_back(layout, target, owner, &kept)?);
        }
    }
    write_json(&owner_file(layout), &Owner::of(target))?;
    prune(layout);
    Ok(note)
}

/// The live database has a schema `target` does not know: restore the newest
/// snapshot it can read (its own first), or start it on a new database.
fn go_back(layout: &Layout, target: &CompleteRecord, owner: &Owner, kept: &Path) -> Result<String, String> {
    let live = live(layout);
    let mut candidates: Vec<(PathBuf, Owner)> = std::fs::read_dir(snapshots(layout))
        .map_err(|error| format!("cannot read {}: {error}", snapshots(layout).display()))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "json"))
        .filter_map(|path| read_json::<Owner>(&path).map(|snapshot| (path.with_extension("db"), snapshot)))
        .filter(|(path, snapshot)| path.is_file() && snapshot.readable_by(&target.comfyui.migrations))
        .collect();
    candidates.sort_by_key(|(_, snapshot)| (snapshot.revision_id == target.revision_id, snapshot.taken_at));
    remove_database(&live)?;
    let Some((path, snapshot)) = candidates.pop() else {
        return Ok(format!(
            "ComfyUI's database has {}'s newer schema and no snapshot {} can open: it starts with a new one \
             (the newer one is kept at {})",
            owner.describe,
            target.describe(),
            kept.display()
        ));
    };
    copy_database(&path, &live)?;
    let when = snapshot.taken_at.map(|at| format!(" at {at}")).unwrap_or_default();
    Ok(format!(
        "ComfyUI's database restored from the snapshot taken when {} was left{when} ({} had moved it to a newer \
         schema; that one is kept at {})",
        snapshot.describe,
        owner.describe,
        kept.display()
    ))
}

/// Keeps snapshots only of revisions the machine still keeps.
fn prune(layout: &Layout) {
    let Ok(entries) = std::fs::read_dir(snapshots(layout)) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(stem) = path.file_stem().and_then(|stem| stem.to_str()) else { continue };
        if !layout.envs().join(stem).exists() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Copies a database and its WAL files, each through a temporary file and a rename.
pub fn copy_database(from: &Path, to: &Path) -> Result<(), String> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
    }
    for suffix in SIDE_FILES {
        let _ = std::fs::remove_file(side(to, suffix));
    }
    for (source, destination) in std::iter::once((from.to_owned(), to.to_owned()))
        .chain(SIDE_FILES.iter().map(|suffix| (side(from, suffix), side(to, suffix))))
    {
        if !source.exists() {
            continue;
        }
        let temporary = side(&destination, ".copying");
        std::fs::copy(&source, &temporary).and_then(|_| std::fs::rename(&temporary, &destination)).map_err(
            |error| format!("cannot copy {} to {}: {error}", source.display(), destination.display()),
        )?;
    }
    Ok(())
}

pub fn remove_database(path: &Path) -> Result<(), String> {
    for file in std::iter::once(path.to_owned()).chain(SIDE_FILES.iter().map(|suffix| side(path, suffix))) {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(format!("cannot remove {}: {error}", file.display())),
        }
    }
    Ok(())
}

fn side(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let json = serde_json::to_vec_pretty(value).unwrap_or_default();
    comfyfleet_daemon::files::write_atomic(path, &json, 0o644)
        .map_err(|error| format!("cannot write {}: {error}", path.display()))
}

#[cfg(test)]
mod tests;
