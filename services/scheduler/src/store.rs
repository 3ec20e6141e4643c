//! Embedded durable state (redb): pools and claims survive restarts.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Result, SchedError};

const POOLS: TableDefinition<&str, &[u8]> = TableDefinition::new("pools");
const CLAIMS: TableDefinition<&str, &[u8]> = TableDefinition::new("claims");

pub struct Store {
    db: Database,
}

fn err(e: impl std::fmt::Display) -> SchedError {
    SchedError::Store(e.to_string())
}

#[derive(Clone, Copy)]
pub enum Table {
    Pools,
    Claims,
}

impl Table {
    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Table::Pools => POOLS,
            Table::Claims => CLAIMS,
        }
    }
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let db = Database::create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        {
            txn.open_table(POOLS).map_err(err)?;
            txn.open_table(CLAIMS).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(Store { db })
    }

    /// Write (durably: fsync before returning).
    pub fn put<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(err)?;
        let mut txn = self.db.begin_write().map_err(err)?;
        txn.set_durability(Durability::Immediate).map_err(err)?;
        {
            let mut t = txn.open_table(table.def()).map_err(err)?;
            t.insert(key, bytes.as_slice()).map_err(err)?;
        }
        txn.commit().map_err(err)
    }

    pub fn delete(&self, table: Table, key: &str) -> Result<()> {
        let mut txn = self.db.begin_write().map_err(err)?;
        txn.set_durability(Durability::Immediate).map_err(err)?;
        {
            let mut t = txn.open_table(table.def()).map_err(err)?;
            t.remove(key).map_err(err)?;
        }
        txn.commit().map_err(err)
    }

    pub fn all<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<T>> {
        let txn = self.db.begin_read().map_err(err)?;
        let t = txn.open_table(table.def()).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
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
}
