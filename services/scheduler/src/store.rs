//! Embedded durable state (redb): pools and claims survive restarts.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Result, SchedError};

const POOLS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("pools");
const CLAIMS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("claims");
const CHECKPOINT_SOURCES: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new("checkpoint_sources");
const TEMPLATE_BUILDS: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new("template_builds");

pub struct Store {
    db: Database,
}

/// A redb operation `what` failed.
fn err<E: Into<redb::Error>>(what: &'static str) -> impl FnOnce(E) -> SchedError {
    move |e| SchedError::store(what)(e.into())
}

#[derive(Clone, Copy)]
pub enum Table {
    Pools,
    Claims,
    /// per checkpoint, the metadata of the claim it was taken of
    CheckpointSources,
    /// E2B template builds (the gateway's records), by build id
    TemplateBuilds,
}

impl Table {
    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Table::Pools => POOLS,
            Table::Claims => CLAIMS,
            Table::CheckpointSources => CHECKPOINT_SOURCES,
            Table::TemplateBuilds => TEMPLATE_BUILDS,
        }
    }
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| SchedError::StoreDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        // the store holds every sandbox's runtime token: owner-only, made so
        // before redb writes to it (redb fills an empty file) and kept so
        // for a file an older version left world-readable
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let mode = |source| SchedError::StoreFile {
                path: path.to_path_buf(),
                source,
            };
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(mode)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(mode)?;
        }
        let db = Database::create(path).map_err(err("opening the database"))?;
        let txn = db.begin_write().map_err(err("beginning a write"))?;
        {
            txn.open_table(POOLS)
                .map_err(err("creating the pools table"))?;
            txn.open_table(CLAIMS)
                .map_err(err("creating the claims table"))?;
            txn.open_table(CHECKPOINT_SOURCES)
                .map_err(err("creating the checkpoint sources table"))?;
            txn.open_table(TEMPLATE_BUILDS)
                .map_err(err("creating the template builds table"))?;
        }
        txn.commit().map_err(err("committing the tables"))?;
        Ok(Store { db })
    }

    /// Write (durably: fsync before returning).
    pub fn put<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|source| SchedError::Encode {
            key: key.to_string(),
            source,
        })?;
        self.write(table, |t| {
            t.insert(key, bytes.as_slice())
                .map_err(err("inserting a record"))?;
            Ok(())
        })
    }

    pub fn delete(&self, table: Table, key: &str) -> Result<()> {
        self.write(table, |t| {
            t.remove(key).map_err(err("removing a record"))?;
            Ok(())
        })
    }

    /// Change `table` through `change` in one durable write transaction
    /// (fsync before returning).
    fn write(
        &self,
        table: Table,
        change: impl FnOnce(&mut redb::Table<'_, &'static str, &'static [u8]>) -> Result<()>,
    ) -> Result<()> {
        let mut txn = self.db.begin_write().map_err(err("beginning a write"))?;
        txn.set_durability(Durability::Immediate)
            .map_err(err("setting durability"))?;
        {
            let mut t = txn
                .open_table(table.def())
                .map_err(err("opening a table"))?;
            change(&mut t)?;
        }
        txn.commit().map_err(err("committing a write"))
    }

    pub fn all<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<T>> {
        let txn = self.db.begin_read().map_err(err("beginning a read"))?;
        let t = txn
            .open_table(table.def())
            .map_err(err("opening a table"))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err("iterating a table"))? {
            let (k, v) = row.map_err(err("reading a record"))?;
            match serde_json::from_slice(v.value()) {
                Ok(x) => out.push(x),
                Err(e) => tracing::warn!(key = k.value(), error = %e, "skipping unreadable record"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_file_is_owner_only_new_or_old() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let p = d.path().join("state/s.redb");
        drop(Store::open(&p).unwrap());
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(p.parent().unwrap()), 0o700);
        // an older version's world-readable store keeps its data and loses the bits
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = Store::open(&p).unwrap();
        s.put(Table::Pools, "k", &1u32).unwrap();
        drop(s);
        assert_eq!(mode(&p), 0o600);
        assert_eq!(
            Store::open(&p).unwrap().all::<u32>(Table::Pools).unwrap(),
            vec![1]
        );
    }

    #[test]
    fn survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.redb");
        {
            let s = Store::open(&p).unwrap();
            s.put(Table::Claims, "a", &serde_json::json!({"x": 1}))
                .unwrap();
            s.put(Table::Claims, "b", &serde_json::json!({"x": 2}))
                .unwrap();
            s.delete(Table::Claims, "a").unwrap();
            s.put(Table::Pools, "p", &serde_json::json!({"y": 3}))
                .unwrap();
        }
        let s = Store::open(&p).unwrap();
        let claims: Vec<serde_json::Value> = s.all(Table::Claims).unwrap();
        assert_eq!(claims, vec![serde_json::json!({"x": 2})]);
        assert_eq!(s.all::<serde_json::Value>(Table::Pools).unwrap().len(), 1);
    }

    #[test]
    fn a_store_failure_keeps_redb_error_as_its_source() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.redb");
        let _held = Store::open(&p).unwrap();
        // redb refuses a second open of the same file
        let Err(e) = Store::open(&p) else {
            panic!("a database open twice")
        };
        assert!(
            matches!(
                e,
                SchedError::Store {
                    what: "opening the database",
                    ..
                }
            ),
            "{e:?}"
        );
        let source = std::error::Error::source(&e).expect("the redb error");
        assert!(source.downcast_ref::<redb::Error>().is_some(), "{source:?}");
        assert_eq!(e.kind(), "store");
    }
}
