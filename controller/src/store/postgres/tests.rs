//! The store suite against a real PostgreSQL (Debian's `postgresql`, started by the
//! test in a temp dir on a free port): every case in a database of its own.

use super::*;
use crate::store::Store;

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
    let known: Vec<i64> = super::MIGRATIONS.iter().map(|(version, _)| *version).collect();
    assert_eq!(versions, known, "each migration once");
    assert!(redact_url("postgres://fleet:s3cret@db:5432/fleet").ends_with("fleet:***@db:5432/fleet"));
    assert!(!redact_url("postgres://fleet:s3cret@db/fleet").contains("s3cret"));
}

/// The rollout engine's writes go through only while the lease is still the one this
/// controller was given: not before it leads, not once another took over, not under
/// an old epoch; one that lapsed with nobody taking it is kept — and a notice of the
/// change goes out with the write.
#[tokio::test]
async fn engine_writes_are_fenced_by_the_lease() {
    use crate::store::rollout_model::*;
    let server = comfyfleet_testsupport::postgres::Server::start();
    let url = server.create_database("fenced");
    let store = PostgresStore::connect(&url).await.unwrap();
    crate::store::suite::seed_machines(&store, &["m1"]).await;
    let now = Timestamp::now();
    let rollout = crate::store::suite::machineless_rollout(now, vec![NewEvent::rollout(now, "started", "")]);
    // Not in a cluster (a tool, or tests): no fence.
    let first = store.create_rollout(&rollout).await.unwrap();

    store.cluster_link().join("c-one");
    let not_leader = |result: StoreResult<RolloutRecord>| matches!(result, Err(StoreError::NotLeader));
    assert!(not_leader(store.create_rollout(&rollout).await), "no lease given yet");
    let lease = |holder: &str, epoch: i64, seconds: i64| {
        let pool = store.pool.clone();
        let holder = holder.to_owned();
        async move {
            sqlx::query(
                "UPDATE controller_lease SET holder = $1, epoch = $2, expires_at = now() + make_interval(secs => $3)",
            )
            .bind(holder)
            .bind(epoch)
            .bind(seconds as f64)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    lease("c-one", 1, 5).await;
    store.cluster_link().set_lease(Some(("c-one".into(), 1)));
    let mut listener = sqlx::postgres::PgListener::connect_with(&store.pool).await.unwrap();
    listener.listen(NOTICE_CHANNEL).await.unwrap();
    store.create_rollout(&rollout).await.unwrap();
    let mut change = RolloutChange::of(&first);
    change.reason = "held".into();
    store
        .apply_rollout_step(first.id, &RolloutStep { change: Some(change.clone()), ..Default::default() })
        .await
        .unwrap();

    // Its lease lapsed (the database was away) but nobody took it: kept, and extended.
    lease("c-one", 1, -1).await;
    let step = RolloutStep { change: Some(change.clone()), ..Default::default() };
    store.apply_rollout_step(first.id, &step).await.unwrap();
    let live: bool = sqlx::query_scalar("SELECT expires_at > now() FROM controller_lease")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert!(live, "the write extended the lease");
    // Another controller took over (epoch 2): the old leader's step is refused.
    lease("c-two", 2, 5).await;
    assert!(matches!(store.apply_rollout_step(first.id, &step).await, Err(StoreError::NotLeader)));
    // Taken back later by the first one (epoch 3): its old epoch's writes stay refused.
    lease("c-one", 3, 5).await;
    assert!(matches!(store.apply_rollout_step(first.id, &step).await, Err(StoreError::NotLeader)));

    // A revocation is announced to the others when it commits.
    assert!(store.revoke_machine(&"m1".parse().unwrap(), now).await.unwrap());
    let notice =
        tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv()).await.unwrap().unwrap();
    assert_eq!(notice.payload(), "c-one revoked m1");
}
