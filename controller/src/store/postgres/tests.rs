//! The store suite against a real PostgreSQL (Debian's `postgresql`, started by the
//! test in a temp dir on a free port): every case in a database of its own.

use super::*;

#[tokio::test]
async fn the_store_suite() {
    let server = comfyfleet_testsupport::postgres::Server::start();
    for (name, case) in crate::store::suite::CASES {
        let url = server.create_database(name);
        let store = PostgresStore::connect(&url).await.unwrap();
        eprintln!("postgres: {name}");
        case(std::sync::Arc::new(store)).await;
    }
}

#[tokio::test]
async fn controllers_starting_together_migrate_once() {
    let server = comfyfleet_testsupport::postgres::Server::start();
    let url = server.create_database("together");
    let mut starting = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = url.clone();
        starting.spawn(async move { PostgresStore::connect(&url).await.map(drop) });
    }
    while let Some(started) = starting.join_next().await {
        started.unwrap().unwrap();
    }
    let store = PostgresStore::connect(&url).await.unwrap();
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
        .fetch_all(&store.pool)
        .await
        .unwrap();
    assert_eq!(versions, [1, 2], "each migration once");
    assert!(redact_url("postgres://fleet:s3cret@db:5432/fleet").ends_with("fleet:***@db:5432/fleet"));
    assert!(!redact_url("postgres://fleet:s3cret@db/fleet").contains("s3cret"));
}
