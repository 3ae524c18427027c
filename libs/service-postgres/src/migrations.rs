//! A service database's schema: the outbox's migrations (`sql/outbox`, the same in
//! every service's database) and the service's own (`sql/<database>`), applied as one
//! sequence ordered by version. Version numbers are unique across the two folders; a
//! number used twice is refused before anything is applied.
//!
//! Until December 2026 each database had its own copy of the outbox's migrations, and
//! the copies of `0001_outbox.sql` differed in their first comment. sqlx refuses to run
//! over an applied migration whose checksum changed, so [`migrate`] first replaces
//! those two old checksums of version 1 (and only those) with the shared file's:
//! databases migrated before the folders were merged start as they did.

use std::future::Future;
use std::pin::Pin;

use sqlx::migrate::{MigrateError, Migration, MigrationSource, Migrator};
use sqlx::PgPool;

/// The outbox's migrations, embedded at build time.
pub static OUTBOX: Migrator = sqlx::migrate!("../../sql/outbox");

/// SHA-384 checksums of the two per-database copies of `0001_outbox.sql` (`users_db`,
/// `transaction_db`) that databases migrated before December 2026 recorded.
pub const LEGACY_OUTBOX_0001: [&str; 2] = [
    "a3bb94d2975f9ce1b79475c1745ee723512c6995b54225df9fbf375a5a98370fac2670a1a6e31ac58db68911362e1263",
    "dfec6a77525acbbf25f584f15e43d8cc190ef7b98e3afaef9311be604a5651e509faaa57d798da0947bdbd6b2f7c80ee",
];

/// A service's own migrations with the outbox's before and among them, by version.
pub async fn with_outbox(own: &Migrator) -> Result<Migrator, MigrateError> {
    Migrator::new(Merged(&OUTBOX, own)).await
}

/// Brings `pool`'s database up to `migrator` (built by [`with_outbox`]), accepting the
/// legacy checksums of the outbox's first migration (see the module's docs).
pub async fn migrate(pool: &PgPool, migrator: &Migrator) -> Result<(), MigrateError> {
    accept_legacy_outbox_checksum(pool).await?;
    migrator.run(pool).await
}

async fn accept_legacy_outbox_checksum(pool: &PgPool) -> Result<(), MigrateError> {
    let Some(first) = OUTBOX.iter().find(|m| m.version == 1) else {
        return Ok(());
    };
    let tracked: Option<String> =
        sqlx::query_scalar("select to_regclass('_sqlx_migrations')::text")
            .fetch_one(pool)
            .await?;
    if tracked.is_none() {
        return Ok(());
    }
    let legacy: Vec<Vec<u8>> = LEGACY_OUTBOX_0001.iter().map(|h| from_hex(h)).collect();
    let updated = sqlx::query(
        "update _sqlx_migrations set checksum = $1 where version = 1 and checksum = any($2)",
    )
    .bind(first.checksum.as_ref())
    .bind(&legacy)
    .execute(pool)
    .await?
    .rows_affected();
    if updated > 0 {
        tracing::info!("outbox migration 1 was applied from a per-database copy; its checksum now is the shared file's");
    }
    Ok(())
}

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("a constant hex digest"))
        .collect()
}

/// Two migration lists as one [`MigrationSource`], ordered by version.
#[derive(Debug)]
struct Merged<'a>(&'a Migrator, &'a Migrator);

type Resolved<'s> = Pin<
    Box<
        dyn Future<Output = Result<Vec<Migration>, Box<dyn std::error::Error + Send + Sync>>>
            + Send
            + 's,
    >,
>;

impl<'s> MigrationSource<'s> for Merged<'_> {
    fn resolve(self) -> Resolved<'s> {
        let merged = merge(self.0.iter().cloned(), self.1.iter().cloned());
        Box::pin(async move { merged.map_err(Into::into) })
    }
}

fn merge(
    a: impl Iterator<Item = Migration>,
    b: impl Iterator<Item = Migration>,
) -> Result<Vec<Migration>, String> {
    let mut all: Vec<Migration> = a.chain(b).collect();
    all.sort_by_key(|m| (m.version, m.migration_type.is_down_migration()));
    for pair in all.windows(2) {
        let same_kind = pair[0].migration_type.is_down_migration()
            == pair[1].migration_type.is_down_migration();
        if pair[0].version == pair[1].version && same_kind {
            return Err(format!(
                "migration version {} is used twice: \"{}\" and \"{}\"",
                pair[0].version, pair[0].description, pair[1].description
            ));
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_folder_has_the_first_migration_and_none_of_a_services_own() {
        let versions: Vec<i64> = OUTBOX.iter().map(|m| m.version).collect();
        assert_eq!(versions[0], 1, "{versions:?}");
        assert!(!versions.contains(&2), "{versions:?}");
    }

    #[test]
    fn legacy_checksums_are_sha384_and_not_the_shared_files() {
        let shared = OUTBOX.iter().find(|m| m.version == 1).unwrap();
        for hex in LEGACY_OUTBOX_0001 {
            let bytes = from_hex(hex);
            assert_eq!(bytes.len(), 48);
            assert_ne!(bytes.as_slice(), shared.checksum.as_ref());
        }
    }

    #[test]
    fn merged_lists_are_ordered_by_version_and_a_reused_version_is_refused() {
        let own = |v: i64, d: &'static str| {
            Migration::new(
                v,
                d.into(),
                sqlx::migrate::MigrationType::Simple,
                "select 1".into(),
                false,
            )
        };
        let merged = merge(OUTBOX.iter().cloned(), [own(2, "users")].into_iter()).unwrap();
        let versions: Vec<i64> = merged.iter().map(|m| m.version).collect();
        let mut sorted = versions.clone();
        sorted.sort();
        assert_eq!(versions, sorted);
        assert!(versions.contains(&2));

        let error = merge(OUTBOX.iter().cloned(), [own(1, "clash")].into_iter()).unwrap_err();
        assert!(error.contains("version 1 is used twice"), "{error}");
        assert!(error.contains("clash"), "{error}");
    }
}
