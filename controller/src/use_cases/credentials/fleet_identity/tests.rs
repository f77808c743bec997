use super::*;
use crate::store::{CredentialRecord, SqliteStore};
use comfyfleet_config::Role;

async fn store_in(dir: &Path) -> SqliteStore {
    SqliteStore::open(&dir.join("controller.db")).await.unwrap()
}

fn credential() -> CredentialRecord {
    CredentialRecord {
        id: "c1".into(),
        name: "admin".into(),
        role: Role::Admin,
        secret_sha256: [3; 32],
        created_at: Timestamp::now(),
        revoked_at: None,
        created_by: "controller".into(),
    }
}

#[tokio::test]
async fn a_fresh_pair_gets_one_id_that_both_keep() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path()).await;
    let first = establish(dir.path(), "db", &store, false).await.unwrap();
    assert!(first.created);
    assert_eq!(first.id.len(), 32);
    assert_eq!(std::fs::read_to_string(dir.path().join(FLEET_ID_FILE)).unwrap().trim(), first.id);
    let again = establish(dir.path(), "db", &store, false).await.unwrap();
    assert_eq!(again, Fleet { id: first.id, created: false });
}

#[tokio::test]
async fn an_emptied_database_is_refused_naming_the_newest_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = store_in(dir.path()).await;
        establish(dir.path(), "db", &store, false).await.unwrap().id
    };
    std::fs::remove_file(dir.path().join("controller.db")).unwrap();
    let _ = std::fs::remove_file(dir.path().join("controller.db-wal"));
    let _ = std::fs::remove_file(dir.path().join("controller.db-shm"));
    std::fs::create_dir(dir.path().join(BACKUP_DIR)).unwrap();
    for name in ["controller-20261201T000000Z.db", "controller-20261203T000000Z.db"] {
        std::fs::write(dir.path().join(BACKUP_DIR).join(name), "").unwrap();
    }
    let store = store_in(dir.path()).await;
    let error = establish(dir.path(), "db", &store, false).await.unwrap_err().to_string();
    assert!(error.contains("holds no fleet"), "{error}");
    assert!(error.contains(&id), "{error}");
    assert!(error.contains("restore --from") && error.contains("controller-20261203T000000Z.db"), "{error}");
    assert!(error.contains("--initialize"), "{error}");
    // Nothing was written: the next start says the same.
    assert_eq!(store.fleet_id().await.unwrap(), None);

    std::fs::write(dir.path().join("admin.toml"), "old").unwrap();
    let fresh = establish(dir.path(), "db", &store, true).await.unwrap();
    assert!(fresh.created);
    assert_ne!(fresh.id, id);
    assert!(!dir.path().join("admin.toml").exists(), "the old fleet's admin.toml is moved aside");
}

#[tokio::test]
async fn a_data_dir_with_a_ca_but_no_fleet_id_counts_as_having_served() {
    let dir = tempfile::tempdir().unwrap();
    crate::use_cases::credentials::pki::CertificateAuthority::load_or_create(dir.path()).unwrap();
    let store = store_in(dir.path()).await;
    let error = establish(dir.path(), "db", &store, false).await.unwrap_err().to_string();
    assert!(error.contains("holds no fleet"), "{error}");
}

#[tokio::test]
async fn a_database_from_before_fleet_ids_is_given_one() {
    let dir = tempfile::tempdir().unwrap();
    crate::use_cases::credentials::pki::CertificateAuthority::load_or_create(dir.path()).unwrap();
    let store = store_in(dir.path()).await;
    store.create_credential(&credential()).await.unwrap();
    let fleet = establish(dir.path(), "db", &store, false).await.unwrap();
    assert!(!fleet.created);
    assert_eq!(store.fleet_id().await.unwrap(), Some(fleet.id));
}

#[tokio::test]
async fn another_fleets_database_is_refused_unless_initialize_adopts_it() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let our_store = store_in(ours.path()).await;
    let our_id = establish(ours.path(), "db", &our_store, false).await.unwrap().id;
    let their_store = store_in(theirs.path()).await;
    let their_id = establish(theirs.path(), "db", &their_store, false).await.unwrap().id;
    let error = establish(ours.path(), "db", &their_store, false).await.unwrap_err().to_string();
    assert!(
        error.contains("another fleet's database") && error.contains(&our_id) && error.contains(&their_id)
    );
    let adopted = establish(ours.path(), "db", &their_store, true).await.unwrap();
    assert_eq!(adopted.id, their_id);
    // A new data dir serves whatever fleet the database holds (a second controller).
    let new_dir = tempfile::tempdir().unwrap();
    assert_eq!(establish(new_dir.path(), "db", &their_store, false).await.unwrap().id, their_id);
}

#[tokio::test]
async fn a_garbled_fleet_id_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FLEET_ID_FILE), "not an id").unwrap();
    let store = store_in(dir.path()).await;
    let error = establish(dir.path(), "db", &store, false).await.unwrap_err().to_string();
    assert!(error.contains("not a fleet id"), "{error}");
}
