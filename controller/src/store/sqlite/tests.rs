//! The SQLite store's fleet tables: enrollment, machines, migrations.

use super::*;
use crate::store::Store;

#[tokio::test]
async fn the_store_suite() {
    for (name, case) in crate::store::suite::CASES {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("controller.db")).await.unwrap();
        eprintln!("sqlite: {name}");
        case(std::sync::Arc::new(store)).await;
    }
}

#[tokio::test]
async fn reopening_keeps_everything_and_does_not_migrate_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.db");
    {
        let store = SqliteStore::open(&path).await.unwrap();
        store.append_audit(Timestamp::now(), "admin", "token.create", "0123456789ab", "").await.unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.list_audit(10).await.unwrap()[0].action, "token.create");
}
