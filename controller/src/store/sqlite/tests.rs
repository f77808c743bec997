//! The SQLite store's fleet tables: enrollment, machines, migrations.

use super::*;

async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("controller.db")).await.unwrap();
    (dir, store)
}

fn token(uses_allowed: Option<u32>) -> JoinTokenRecord {
    let now = Timestamp::now();
    JoinTokenRecord {
        id: "0123456789ab".into(),
        secret_sha256: [1; 32],
        created_at: now,
        expires_at: now + jiff::SignedDuration::from_hours(1),
        uses_allowed,
        uses: 0,
        labels: Labels::parse_pairs(["pool=a"]).unwrap(),
        description: "test".into(),
        created_by: "admin".into(),
    }
}

fn new_machine(id: &str) -> NewMachine {
    NewMachine {
        id: id.parse().unwrap(),
        hostname: "host".into(),
        cert_sha256: "ab".into(),
        agent_labels: Labels::parse_pairs(["gpu=yes"]).unwrap(),
        enrolled_at: Timestamp::now(),
    }
}

#[tokio::test]
async fn enrollment_counts_uses_and_refuses_past_them_storing_nothing() {
    let (_dir, store) = store().await;
    store.create_join_token(&token(Some(1))).await.unwrap();
    let first = store.enroll_machine("0123456789ab", &[1; 32], &new_machine("m1")).await.unwrap().unwrap();
    assert_eq!(first.effective_labels().to_string(), "gpu=yes,pool=a");
    let second = store.enroll_machine("0123456789ab", &[1; 32], &new_machine("m2")).await.unwrap();
    assert!(matches!(second, Err(EnrollRefusal::UsedUp { .. })));
    let wrong = store.enroll_machine("ffffffffffff", &[1; 32], &new_machine("m3")).await.unwrap();
    assert!(matches!(wrong, Err(EnrollRefusal::UnknownToken { .. })));
    let machines = store.list_machines(None, 100, true).await.unwrap();
    assert_eq!(machines.len(), 1);
    assert_eq!(store.list_join_tokens().await.unwrap()[0].uses, 1);
}

#[tokio::test]
async fn machines_page_by_id_and_match_prefixes() {
    let (_dir, store) = store().await;
    store.create_join_token(&token(None)).await.unwrap();
    for id in ["aa1", "aa2", "ab1"] {
        store.enroll_machine("0123456789ab", &[1; 32], &new_machine(id)).await.unwrap().unwrap();
    }
    let page = store.list_machines(None, 2, false).await.unwrap();
    assert_eq!(page.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["aa1", "aa2"]);
    let rest = store.list_machines(Some(&page[1].id), 2, false).await.unwrap();
    assert_eq!(rest.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["ab1"]);
    assert_eq!(store.find_machines("aa", 10).await.unwrap().len(), 2);
    assert!(store.revoke_machine(&"aa1".parse().unwrap(), Timestamp::now()).await.unwrap());
    assert!(!store.revoke_machine(&"aa1".parse().unwrap(), Timestamp::now()).await.unwrap());
    assert_eq!(store.list_machines(None, 10, false).await.unwrap().len(), 2);
}

#[tokio::test]
async fn reopening_keeps_everything_and_does_not_migrate_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.db");
    {
        let store = SqliteStore::open(&path).await.unwrap();
        store.create_join_token(&token(None)).await.unwrap();
        store.append_audit(Timestamp::now(), "admin", "token.create", "0123456789ab", "").await.unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.list_join_tokens().await.unwrap().len(), 1);
    assert_eq!(store.list_audit(10).await.unwrap()[0].action, "token.create");
}
