//! Start-up migrations over a database migrated before the outbox's migrations were
//! shared (`sql/outbox`): each database then recorded its own copy's checksum of
//! `0001_outbox.sql`.

use service_config::ServerSettings;
use service_postgres::{DatabaseSettings, DatabaseTarget, DEFAULT_ACQUIRE_TIMEOUT, OUTBOX};
use sqlx::Connection;
use testkit::TestDb;
use user_service::config::Settings;
use user_service::Application;

use crate::helpers::logs;

fn settings(db: &TestDb) -> Settings {
    Settings {
        server: ServerSettings::local_ephemeral(),
        database: DatabaseSettings::new(
            DatabaseTarget::Url(db.url.clone().into()),
            DEFAULT_ACQUIRE_TIMEOUT,
        ),
        capture: outbox::Capture::Table,
    }
}

async fn record_checksum_of_version_1(db: &TestDb, checksum: &[u8]) {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("update _sqlx_migrations set checksum = $1 where version = 1")
        .bind(checksum)
        .execute(&mut conn)
        .await
        .unwrap();
}

async fn checksum_of_version_1(db: &TestDb) -> Vec<u8> {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query_scalar("select checksum from _sqlx_migrations where version = 1")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

fn hex(bytes: &str) -> Vec<u8> {
    (0..bytes.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&bytes[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn a_database_migrated_with_either_per_database_copy_of_the_outbox_starts() {
    logs();
    let shared = OUTBOX.iter().find(|m| m.version == 1).unwrap();
    for legacy in service_postgres::LEGACY_OUTBOX_0001 {
        let db = TestDb::create("users", "users_db").await.unwrap();
        record_checksum_of_version_1(&db, &hex(legacy)).await;

        let application = Application::build(&settings(&db)).await.unwrap();
        drop(application);

        assert_eq!(checksum_of_version_1(&db).await, shared.checksum.as_ref());
    }
}

#[tokio::test]
async fn a_changed_outbox_migration_that_is_no_known_copy_is_still_refused() {
    logs();
    let db = TestDb::create("users", "users_db").await.unwrap();
    record_checksum_of_version_1(&db, &[7; 48]).await;

    let error = Application::build(&settings(&db))
        .await
        .err()
        .expect("refused");

    let message = format!("{error:?}");
    assert!(message.contains("VersionMismatch(1)"), "{message}");
}
