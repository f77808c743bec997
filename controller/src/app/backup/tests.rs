use super::*;
use crate::app::retention::{Retention, prune_once};
use crate::store::{CredentialRecord, Prunable};
use crate::use_cases::credentials::fleet_identity::establish;
use comfyfleet_config::Role;

fn credential(id: &str) -> CredentialRecord {
    CredentialRecord {
        id: id.into(),
        name: id.into(),
        role: Role::Admin,
        secret_sha256: [3; 32],
        created_at: Timestamp::now(),
        revoked_at: None,
        created_by: "controller".into(),
    }
}

async fn fleet_dir() -> (tempfile::TempDir, SqliteStore, String) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join(DATABASE_FILE)).await.unwrap();
    let fleet = establish(dir.path(), "db", &store, false).await.unwrap();
    store.create_credential(&credential("first")).await.unwrap();
    (dir, store, fleet.id)
}

#[tokio::test]
async fn a_snapshot_is_checked_named_and_never_overwritten() {
    let (dir, store, fleet) = fleet_dir().await;
    let to = dir.path().join("snap.db");
    let facts = snapshot(&store, &to).await.unwrap();
    assert_eq!(facts.fleet_id.as_deref(), Some(fleet.as_str()));
    assert_eq!(facts.credentials, 1);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(matches!(snapshot(&store, &to).await, Err(BackupError::Exists { .. })));
    // From outside, while the store is open and writing.
    store.create_credential(&credential("second")).await.unwrap();
    let outside = dir.path().join("outside.db");
    let facts = snapshot_data_dir(dir.path(), &outside).await.unwrap();
    assert_eq!(facts.credentials, 2);
}

#[tokio::test]
async fn restore_puts_a_snapshot_back_and_keeps_what_it_replaced() {
    let (dir, store, fleet) = fleet_dir().await;
    let snap = dir.path().join("snap.db");
    snapshot(&store, &snap).await.unwrap();
    store.create_credential(&credential("after")).await.unwrap();
    {
        // The controller holds the data dir: restore waits for it to stop.
        let _running = lock_data_dir(dir.path()).unwrap();
        let error = restore(dir.path(), &snap).await.unwrap_err().to_string();
        assert!(error.contains("stop it first"), "{error}");
    }
    store.close().await;
    let restored = restore(dir.path(), &snap).await.unwrap();
    assert_eq!(restored.facts.credentials, 1);
    let kept = restored.replaced.unwrap();
    assert!(kept.exists());
    assert!(!dir.path().join("controller.db-wal").exists());
    let store = SqliteStore::open(&dir.path().join(DATABASE_FILE)).await.unwrap();
    assert_eq!(store.list_credentials().await.unwrap().len(), 1);
    assert_eq!(establish(dir.path(), "db", &store, false).await.unwrap().id, fleet);
    // The replaced database still holds what came after the snapshot.
    assert_eq!(SqliteStore::inspect(&kept).await.unwrap().credentials, 2);
}

#[tokio::test]
async fn restore_refuses_another_fleets_snapshot_and_damaged_files() {
    let (ours, _store, _) = fleet_dir().await;
    let (theirs, their_store, _) = fleet_dir().await;
    let snap = theirs.path().join("theirs.db");
    snapshot(&their_store, &snap).await.unwrap();
    let error = restore(ours.path(), &snap).await.unwrap_err().to_string();
    assert!(error.contains("restore one of fleet"), "{error}");

    let bytes = std::fs::read(&snap).unwrap();
    let truncated = ours.path().join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let error = restore(ours.path(), &truncated).await.unwrap_err();
    assert!(matches!(error, BackupError::Store(StoreError::Damaged { .. })), "{error}");
    let garbage = ours.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    assert!(restore(ours.path(), &garbage).await.is_err());
    assert!(ours.path().join(DATABASE_FILE).exists(), "a refused restore leaves the database alone");
}

#[test]
fn rotation_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    for day in 1..=5 {
        std::fs::write(dir.path().join(format!("controller-2026120{day}T000000Z.db")), "").unwrap();
    }
    std::fs::write(dir.path().join("mine.db"), "").unwrap();
    prune_snapshots(dir.path(), 2);
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["controller-20261204T000000Z.db", "controller-20261205T000000Z.db", "mine.db"]);
    assert_eq!(
        snapshot_name(Timestamp::from_second(1_796_601_600).unwrap()),
        "controller-20261207T000000Z.db"
    );
}

#[tokio::test]
async fn retention_prunes_old_rows_in_batches() {
    let (_dir, store, _) = fleet_dir().await;
    let now = Timestamp::now();
    let old = now - jiff::SignedDuration::from_hours(24 * 400);
    for index in 0..2_500 {
        store.append_audit(old, "admin", "token.create", &format!("t{index}"), "").await.unwrap();
    }
    store.append_audit(now, "admin", "token.create", "new", "").await.unwrap();
    assert_eq!(
        store.prune(Prunable::Audit, now - jiff::SignedDuration::from_hours(1), 1_000).await.unwrap(),
        1_000
    );
    let pruned = prune_once(&store, Retention::default(), now).await.unwrap();
    assert!(pruned.contains(&(Prunable::Audit, 1_500)), "{pruned:?}");
    let left = store.list_audit(10).await.unwrap();
    assert_eq!(left.iter().map(|entry| entry.target.as_str()).collect::<Vec<_>>(), ["new"]);
}
