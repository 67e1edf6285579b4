//! The schema's migrations, embedded in the binary (one `include_str!` per file) and
//! handed to sqlx's migrator as a [`MigrationSource`]. sqlx's `migrate!` macro embeds them
//! too, but it needs sqlx's `macros` feature, which compiles sqlx, both drivers and
//! SQLite's C a second time, for the build host: a cold release build spent ~2 CPU-minutes
//! on that copy. Each migration is read exactly as sqlx reads a directory (version,
//! description, checksum, `-- no-transaction`), so databases migrated by either agree; a
//! test compares the two, and that every file of the directory is listed here.

use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrateError, Migration, MigrationSource, MigrationType, Migrator};
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

/// A directory of migrations, as (file name, SQL) pairs in version order.
#[derive(Debug, Clone, Copy)]
pub(super) struct Embedded(&'static [(&'static str, &'static str)]);

macro_rules! embedded {
    ($dir:literal: $($file:literal),+ $(,)?) => {
        Embedded(&[$(($file, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/", $dir, "/", $file)))),+])
    };
}

pub(super) const SQLITE: Embedded = embedded!("sqlite":
    "20261125000001_init.sql",
    "20261125000003_audit_and_usage.sql",
    "20261126000004_verified_digest.sql",
    "20261126000005_key_terms.sql",
    "20261126000006_key_lifecycle.sql",
    "20261127000008_admin_tokens.sql",
    "20261207000010_imported_lookups.sql",
    "20261207000011_usage_counts.sql",
    "20261207000032_change_feed.sql",
    "20261208000033_keys_by_owner_in_id_order.sql",
);

pub(super) const POSTGRES: Embedded = embedded!("postgres":
    "20261125000001_init.sql",
    "20261125000002_notify_changes.sql",
    "20261125000003_audit_and_usage.sql",
    "20261126000004_verified_digest.sql",
    "20261126000005_key_terms.sql",
    "20261126000006_key_lifecycle.sql",
    "20261126000007_notify_versions_only.sql",
    "20261127000008_admin_tokens.sql",
    "20261207000010_imported_lookups.sql",
    "20261207000011_usage_counts.sql",
    "20261207000032_change_feed.sql",
    "20261208000033_keys_by_owner_in_id_order.sql",
);

impl Embedded {
    pub(super) async fn migrator(self) -> Result<Migrator, MigrateError> {
        Migrator::new(self).await
    }

    /// Each file as sqlx's directory source reads it: `<version>_<description>.sql`, the
    /// description's `_` read as spaces.
    fn migrations(self) -> Result<Vec<Migration>, BoxDynError> {
        let mut migrations = Vec::with_capacity(self.0.len());
        for (file, sql) in self.0 {
            let (version, rest) = file.split_once('_').ok_or_else(|| format!("migration {file}: no version"))?;
            let version: i64 = version.parse().map_err(|_| format!("migration {file}: the version is not a number"))?;
            let migration_type = MigrationType::from_filename(rest);
            let description = rest.trim_end_matches(migration_type.suffix()).replace('_', " ");
            let no_tx = sql.starts_with("-- no-transaction");
            migrations.push(Migration::new(
                version,
                Cow::Owned(description),
                migration_type,
                Cow::Borrowed(*sql),
                no_tx,
            ));
        }
        migrations.sort_by_key(|m| m.version);
        Ok(migrations)
    }
}

type Resolved<'s> = Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 's>>;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> Resolved<'s> {
        Box::pin(std::future::ready(self.migrations()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// What sqlx's own directory source makes of the same files: same versions,
    /// descriptions, checksums and transaction modes, and no file left out.
    #[tokio::test]
    async fn the_embedded_migrations_are_the_directorys() {
        for (dir, embedded) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations").join(dir);
            let from_dir = Migrator::new(path.as_path()).await.unwrap();
            let ours = embedded.migrator().await.unwrap();
            let shape = |m: &Migrator| {
                m.iter()
                    .map(|m| (m.version, m.description.to_string(), m.checksum.to_vec(), m.no_tx))
                    .collect::<Vec<_>>()
            };
            assert!(!shape(&ours).is_empty());
            assert_eq!(shape(&ours), shape(&from_dir), "migrations/{dir}: list every file in migrations.rs");
        }
    }
}
