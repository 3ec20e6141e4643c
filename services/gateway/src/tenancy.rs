//! API keys and who owns what. The platform key(s) given at start are admin
//! keys (they see everything); keys created with `sandpool key create` live
//! hashed in a keys file that the gateway re-reads when it changes. Every
//! claim records its creator's key id under [`OWNER_KEY`] in its metadata:
//! set by the gateway, never taken from a caller, never shown to one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The reserved claim metadata key holding the owning key's id.
pub const OWNER_KEY: &str = "sandpool.io/owner";

/// The owner recorded for sandboxes made with a platform (admin) key.
pub const PLATFORM_OWNER: &str = "platform";

/// The key a request came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// the key's id (what claims record as their owner)
    pub id: String,
    /// sees and acts on every key's sandboxes
    pub admin: bool,
}

tokio::task_local! {
    /// The caller of the request being served (set by the key middleware).
    static PRINCIPAL: Principal;
}

/// Run `f` as `p`'s request.
pub async fn scoped<F: Future>(p: Principal, f: F) -> F::Output {
    PRINCIPAL.scope(p, f).await
}

/// The caller of the current request; `None` outside the key middleware
/// (no keys configured, or routes authorised otherwise) — nothing is filtered then.
pub fn current() -> Option<Principal> {
    PRINCIPAL.try_with(Clone::clone).ok()
}

/// The caller when it is a non-admin key, whose view is restricted.
pub fn restricted() -> Option<Principal> {
    current().filter(|p| !p.admin)
}

/// Sandboxes being created per key: counted against the quota until the
/// create returns, so parallel creates cannot overshoot it.
#[derive(Debug, Default)]
pub struct Creating(Mutex<std::collections::HashMap<String, u32>>);

/// `n` places of key `id` held while its create runs.
pub struct Reservation {
    creating: Arc<Creating>,
    id: String,
    n: u32,
}

impl Creating {
    /// Hold `n` places for `id` unless `live` plus those already held plus
    /// `n` exceed `max`.
    pub fn reserve(self: &Arc<Self>, id: &str, n: u32, live: u32, max: u32) -> Option<Reservation> {
        let mut m = self.0.lock();
        let held = m.get(id).copied().unwrap_or(0);
        if live.saturating_add(held).saturating_add(n) > max {
            return None;
        }
        m.insert(id.to_string(), held + n);
        Some(Reservation {
            creating: self.clone(),
            id: id.to_string(),
            n,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut m = self.creating.0.lock();
        if let Some(held) = m.get_mut(&self.id) {
            *held = held.saturating_sub(self.n);
            if *held == 0 {
                m.remove(&self.id);
            }
        }
    }
}

/// One stored key: its hash, never the key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyEntry {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// hex sha256 of the key
    pub sha256: String,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub created_unix_ms: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeysFile {
    keys: Vec<KeyEntry>,
}

/// The id of a key: a short prefix of its hash (safe to record and show).
pub fn key_id(key: &str) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> ApiError {
    move |e| ApiError::Internal(format!("{what}: {e}"))
}

fn read_file(path: &Path) -> Result<Vec<KeyEntry>, ApiError> {
    match std::fs::read(path) {
        Ok(b) => Ok(serde_json::from_slice::<KeysFile>(&b)
            .map_err(|e| ApiError::Internal(format!("parsing {}: {e}", path.display())))?
            .keys),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
    }
}

/// Replace the keys file (directory 0700, file 0600, atomic rename).
/// Create (or truncate) `path` for writing, mode 0600 when it is new: a
/// file for secrets.
pub fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn write_file(path: &Path, keys: Vec<KeyEntry>) -> Result<(), ApiError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("chmod {}", dir.display())))?;
    let body = serde_json::to_vec_pretty(&KeysFile { keys })
        .map_err(|e| ApiError::Internal(format!("encoding keys: {e}")))?;
    let tmp = dir.join(format!(".keys.{}.tmp", std::process::id()));
    let mut f = create_private_file(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_err(format!("replacing {}", path.display())))
}

/// Store a new key (given in clear, kept hashed); its entry.
pub fn add_key(path: &Path, key: &str, name: &str, admin: bool) -> Result<KeyEntry, ApiError> {
    let mut keys = read_file(path)?;
    let e = KeyEntry {
        id: key_id(key),
        name: name.to_string(),
        sha256: hex::encode(hash(key)),
        admin,
        created_unix_ms: chrono::Utc::now().timestamp_millis(),
    };
    if keys.iter().any(|k| k.id == e.id) {
        return Err(ApiError::Conflict(format!("key {} exists", e.id)));
    }
    keys.push(e.clone());
    write_file(path, keys)?;
    Ok(e)
}

/// The stored keys (hashes only).
pub fn list_keys(path: &Path) -> Result<Vec<KeyEntry>, ApiError> {
    read_file(path)
}

/// Remove key `id` (or name); whether it was there.
pub fn revoke_key(path: &Path, id: &str) -> Result<bool, ApiError> {
    let mut keys = read_file(path)?;
    let before = keys.len();
    keys.retain(|k| k.id != id && k.name != id);
    if keys.len() == before {
        return Ok(false);
    }
    write_file(path, keys)?;
    Ok(true)
}

/// What identifies one version of the keys file (a rename makes a new inode).
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

struct Loaded {
    stamp: Stamp,
    keys: Arc<Vec<([u8; 32], Principal)>>,
}

/// The accepted keys: the platform's (admin) plus the keys file's, re-read
/// whenever the file changes (one `stat` per check).
pub struct KeyStore {
    platform: Vec<[u8; 32]>,
    file: Option<PathBuf>,
    loaded: Mutex<Loaded>,
}

impl KeyStore {
    pub fn new(platform_keys: &[String], file: Option<PathBuf>) -> Self {
        KeyStore {
            platform: platform_keys
                .iter()
                .filter(|k| !k.is_empty())
                .map(|k| hash(k))
                .collect(),
            file,
            loaded: Mutex::new(Loaded {
                stamp: None,
                keys: Arc::default(),
            }),
        }
    }

    /// Whether requests need a key at all.
    pub fn enabled(&self) -> bool {
        !self.platform.is_empty() || self.file.is_some()
    }

    fn file_keys(&self) -> Arc<Vec<([u8; 32], Principal)>> {
        let Some(path) = &self.file else {
            return Arc::default();
        };
        let now = stamp(path);
        let mut l = self.loaded.lock();
        if l.stamp != now || now.is_none() {
            match read_file(path) {
                Ok(keys) => {
                    let keys = keys
                        .into_iter()
                        .filter_map(|k| {
                            let h: [u8; 32] = hex::decode(&k.sha256).ok()?.try_into().ok()?;
                            Some((
                                h,
                                Principal {
                                    id: k.id,
                                    admin: k.admin,
                                },
                            ))
                        })
                        .collect();
                    *l = Loaded {
                        stamp: now,
                        keys: Arc::new(keys),
                    };
                }
                // keep no stale keys when the file cannot be read
                Err(e) => {
                    tracing::warn!("keys file: {e}");
                    *l = Loaded {
                        stamp: None,
                        keys: Arc::default(),
                    };
                }
            }
        }
        l.keys.clone()
    }

    /// Who `key` is, if it is accepted (constant time per stored key).
    pub fn check(&self, key: &str) -> Option<Principal> {
        let h = hash(key);
        let platform = self
            .platform
            .iter()
            .fold(false, |acc, k| acc | bool::from(k.ct_eq(&h)));
        if platform {
            return Some(Principal {
                id: PLATFORM_OWNER.to_string(),
                admin: true,
            });
        }
        let keys = self.file_keys();
        let mut found = None;
        for (k, p) in keys.iter() {
            if bool::from(k.ct_eq(&h)) {
                found = Some(p.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_file_is_private_and_holds_hashes_only() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("gw").join("keys.json");
        let e = add_key(&path, "sk-secret-1", "alice", false).expect("add");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("sk-secret-1"), "{text}");
        assert!(text.contains(&e.sha256));
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("dir")), 0o700);

        let store = KeyStore::new(&["admin-k".to_string()], Some(path.clone()));
        assert_eq!(
            store.check("sk-secret-1"),
            Some(Principal {
                id: e.id.clone(),
                admin: false
            })
        );
        assert!(store.check("admin-k").is_some_and(|p| p.admin));
        assert_eq!(store.check("nope"), None);
        // a key added later is picked up without a restart, a revoked one refused
        add_key(&path, "sk-secret-2", "bob", true).expect("add");
        assert!(store.check("sk-secret-2").is_some_and(|p| p.admin));
        assert!(revoke_key(&path, &e.id).expect("revoke"));
        assert_eq!(store.check("sk-secret-1"), None);
        assert!(!revoke_key(&path, &e.id).expect("revoke again"));
        assert_eq!(list_keys(&path).expect("list").len(), 1);
    }
}
