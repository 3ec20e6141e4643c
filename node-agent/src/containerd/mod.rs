//! containerd over its gRPC API (containerd-client): image import through the
//! content/images/diff/snapshots services, containers and tasks. Nothing here
//! shells out to `ctr`.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use containerd_client::{Client, services::v1 as api, types::Mount};
use sha2::{Digest, Sha256};
use tonic::{Code, Request};

use crate::error::{AgentError, BoxError, Result, Step};

pub use archive::{IMPORTED_LABEL, ImageSummary, PULLED_LABEL};
pub use commit::{Committed, MEDIA_LAYER_TAR, committed_blobs};

mod archive;
mod commit;
mod events;
mod images;
mod pull;
mod renew;
mod snapshots;
mod tasks;

pub const SNAPSHOTTER: &str = "overlayfs";
/// containerd namespace of a standalone platform's images and sandboxes.
pub const NAMESPACE: &str = "sandpool";
pub const RUNC_SHIM: &str = "io.containerd.runc.v2";
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";

/// `containerd.runc.v1.Options` (subset), for the runc v2 shim: `binary_name`
/// lets the same shim drive runsc.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RuncOptions {
    #[prost(string, tag = "6")]
    pub binary_name: String,
    #[prost(string, tag = "7")]
    pub root: String,
    /// Restore the task from this checkpoint image directory (containerd
    /// passes it to the shim, which runs `<binary> restore --image-path`).
    #[prost(string, tag = "10")]
    pub criu_image_path: String,
}

/// The `upperdir=` of an overlay mount list.
pub fn upperdir(mounts: &[Mount]) -> Option<PathBuf> {
    mounts
        .iter()
        .flat_map(|m| m.options.iter())
        .find_map(|o| o.strip_prefix("upperdir="))
        .map(PathBuf::from)
}

/// The read-only layer directories of a view's mounts, topmost first: an
/// overlay's `lowerdir=` list, or a single bind mount's source.
pub fn layer_dirs(mounts: &[Mount]) -> Vec<PathBuf> {
    let lower = mounts
        .iter()
        .flat_map(|m| m.options.iter())
        .find_map(|o| o.strip_prefix("lowerdir="));
    match lower {
        Some(l) => l.split(':').map(PathBuf::from).collect(),
        None => mounts
            .iter()
            .filter(|m| m.r#type == "bind")
            .map(|m| PathBuf::from(&m.source))
            .collect(),
    }
}

/// A small text file `rel` (relative to the root) as the overlay of `dirs`
/// shows it: from the topmost layer that has it. Nothing is followed: a
/// symbolic link on the way, a whiteout or anything but a regular file of at
/// most 1 MiB counts as absent (the layers are untrusted image content, and
/// these are host paths).
pub fn read_layered(dirs: &[PathBuf], rel: &str) -> Option<String> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    const MAX: u64 = 1 << 20;
    for dir in dirs {
        let mut at = dir.clone();
        let mut parts = rel.split('/').filter(|p| !p.is_empty()).peekable();
        let mut kind = None;
        while let Some(part) = parts.next() {
            if part == ".." || part == "." {
                return None;
            }
            at.push(part);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if parts.peek().is_some() && m.is_dir() => {}
                Ok(m) => {
                    kind = Some(m);
                    break;
                }
                Err(_) => break,
            }
        }
        match kind {
            Some(m) if m.is_file() && m.len() <= MAX && parts.peek().is_none() => {
                let mut f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                    .open(&at)
                    .ok()?;
                let mut s = String::new();
                f.by_ref().take(MAX).read_to_string(&mut s).ok()?;
                return Some(s);
            }
            // a whiteout, a link, a device, a file where a directory was asked
            Some(_) => return None,
            None => continue,
        }
    }
    None
}

/// Everything needed to create a container.
pub struct NewContainer<'a> {
    pub id: &'a str,
    pub snapshot_key: &'a str,
    pub image: &'a str,
    /// chainID of the image's unpacked rootfs.
    pub parent_snapshot: &'a str,
    pub labels: HashMap<String, String>,
    pub spec: &'a serde_json::Value,
    /// runc-compatible binary for the runc v2 shim; empty = runc.
    pub runtime_binary: &'a str,
}

/// Task state as the agent cares about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Created,
    Running,
    Paused,
    Stopped,
    Unknown,
}

fn is_not_found(s: &tonic::Status) -> bool {
    s.code() == Code::NotFound
}

/// A containerd answer, its failure told as a failed step `op`.
trait Answer<T> {
    /// The answer, or a containerd error of `op`.
    fn or_fail(self, op: &str) -> Result<T>;
    /// The answer; `None` when containerd has no such thing.
    fn found(self, op: &str) -> Result<Option<T>>;
}

impl<T> Answer<T> for std::result::Result<T, tonic::Status> {
    fn or_fail(self, op: &str) -> Result<T> {
        self.map_err(|s| AgentError::containerd(op, s))
    }

    fn found(self, op: &str) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(s) if is_not_found(&s) => Ok(None),
            Err(s) => Err(AgentError::containerd(op, s)),
        }
    }
}

fn is_exists(s: &tonic::Status) -> bool {
    s.code() == Code::AlreadyExists
}

/// chainID of a layer stack (OCI image spec).
pub fn chain_id(diff_ids: &[String]) -> Option<String> {
    let mut it = diff_ids.iter();
    let mut chain = it.next()?.clone();
    for d in it {
        chain = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{chain} {d}").as_bytes()))
        );
    }
    Some(chain)
}

/// What [`Ctr::task_exits`] reports.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEvent {
    Exit {
        id: String,
        pid: u32,
        status: u32,
    },
    /// The kernel's OOM killer killed a process of this container (for runc
    /// maybe not its init; for runsc, the sandbox's kernel).
    Oom {
        id: String,
    },
    /// The event stream was renewed after a break: exits may have been missed.
    Resubscribed,
}

#[derive(Clone)]
pub struct Ctr {
    client: std::sync::Arc<Client>,
    ns: String,
}

impl Ctr {
    /// Connect, retrying until `within` passes (containerd may be starting).
    pub async fn connect(socket: &Path, ns: &str, within: Duration) -> Result<Self> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let attempt = async {
                let c = Client::from_path(socket).await.map_err(BoxError::from)?;
                c.version().version(()).await.map_err(BoxError::from)?;
                Ok::<_, BoxError>(c)
            };
            match attempt.await {
                Ok(c) => {
                    let me = Ctr {
                        client: std::sync::Arc::new(c),
                        ns: ns.to_string(),
                    };
                    me.ensure_namespace().await?;
                    return Ok(me);
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    let path = socket.display().to_string();
                    return Err(AgentError::failed(
                        Step::Connect { path },
                        format!("no answer within {within:?}"),
                        e,
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    fn req<T>(&self, m: T) -> Request<T> {
        let mut r = Request::new(m);
        if let Ok(v) = self.ns.parse() {
            r.metadata_mut().insert("containerd-namespace", v);
        }
        r
    }

    fn req_lease<T>(&self, m: T, lease: &str) -> Request<T> {
        let mut r = self.req(m);
        if let Ok(v) = lease.parse() {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    pub async fn version(&self) -> Result<String> {
        let v = self.client.version().version(()).await.or_fail("version")?;
        Ok(v.into_inner().version)
    }

    async fn ensure_namespace(&self) -> Result<()> {
        let r = self.req(api::CreateNamespaceRequest {
            namespace: Some(api::Namespace {
                name: self.ns.clone(),
                labels: HashMap::new(),
            }),
        });
        match self.client.namespaces().create(r).await {
            Ok(_) => Ok(()),
            Err(s) if is_exists(&s) => Ok(()),
            Err(s) => Err(AgentError::containerd("create namespace", s)),
        }
    }

    // ---------------------------------------------------------------- images

    // ------------------------------------------------------------ containers

    /// A lease that keeps what is created under it from containerd's GC
    /// until it is deleted (or expires, if we crash).
    async fn lease(&self, minutes: i64) -> Result<String> {
        let id = format!("sandpool-{}", uuid::Uuid::new_v4().simple());
        let expire = (chrono::Utc::now() + chrono::Duration::minutes(minutes)).to_rfc3339();
        self.client
            .leases()
            .create(self.req(api::CreateRequest {
                id: id.clone(),
                labels: [("containerd.io/gc.expire".to_string(), expire)].into(),
            }))
            .await
            .or_fail("create lease")?;
        Ok(id)
    }

    async fn drop_lease(&self, id: String) {
        let _ = self
            .client
            .leases()
            .delete(self.req(api::DeleteRequest { id, sync: false }))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layered_files_come_from_the_topmost_layer_and_follow_no_link() {
        let d = tempfile::tempdir().unwrap();
        let (top, low) = (d.path().join("top"), d.path().join("low"));
        for l in [&top, &low] {
            std::fs::create_dir_all(l.join("etc")).unwrap();
        }
        std::fs::write(low.join("etc/passwd"), "low").unwrap();
        std::fs::write(low.join("etc/group"), "low group").unwrap();
        std::fs::write(top.join("etc/passwd"), "top").unwrap();
        std::fs::write(d.path().join("host-secret"), "secret").unwrap();
        std::os::unix::fs::symlink(d.path().join("host-secret"), top.join("etc/shadow")).unwrap();
        std::fs::write(low.join("etc/shadow"), "low shadow").unwrap();
        let dirs = [top.clone(), low.clone()];
        assert_eq!(read_layered(&dirs, "etc/passwd").as_deref(), Some("top"));
        assert_eq!(
            read_layered(&dirs, "etc/group").as_deref(),
            Some("low group")
        );
        assert_eq!(
            read_layered(&dirs, "etc/shadow"),
            None,
            "a link hides, never followed"
        );
        assert_eq!(read_layered(&dirs, "etc/none"), None);
        assert_eq!(read_layered(&dirs, "../host-secret"), None);
        // a linked directory on the way is not followed either
        let linked = d.path().join("linked");
        std::fs::create_dir_all(&linked).unwrap();
        std::os::unix::fs::symlink(low.join("etc"), linked.join("etc")).unwrap();
        assert_eq!(read_layered(&[linked], "etc/passwd"), None);
        assert_eq!(
            layer_dirs(&[Mount {
                r#type: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options: vec!["ro".into(), "lowerdir=/a:/b".into()],
            }]),
            [PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(
            layer_dirs(&[Mount {
                r#type: "bind".into(),
                source: "/s/1/fs".into(),
                target: String::new(),
                options: vec!["ro".into(), "rbind".into()],
            }]),
            [PathBuf::from("/s/1/fs")]
        );
    }

    #[test]
    fn chain_ids() {
        assert_eq!(chain_id(&[]), None);
        assert_eq!(chain_id(&["sha256:a".into()]).unwrap(), "sha256:a");
        let two = chain_id(&["sha256:a".into(), "sha256:b".into()]).unwrap();
        assert_eq!(
            two,
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(b"sha256:a sha256:b"))
            )
        );
    }

    #[test]
    fn runc_options_encode_binary_name_as_field_6() {
        let v = prost::Message::encode_to_vec(&RuncOptions {
            binary_name: "runsc".into(),
            ..Default::default()
        });
        assert_eq!(v, [0x32, 5, b'r', b'u', b'n', b's', b'c']);
        // containerd.runc.v1.Options.criu_image_path: a task restored from it
        let v = prost::Message::encode_to_vec(&RuncOptions {
            criu_image_path: "/c".into(),
            ..Default::default()
        });
        assert_eq!(v, [0x52, 2, b'/', b'c']);
    }
}
