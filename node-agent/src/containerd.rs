//! containerd over its gRPC API (containerd-client): image import through the
//! content/images/diff/snapshots services, containers and tasks. Nothing here
//! shells out to `ctr`.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use containerd_client::{
    Client,
    services::v1::{
        self as api, Container,
        container::Runtime,
        snapshots::{
            CommitSnapshotRequest, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
            RemoveSnapshotRequest, StatSnapshotRequest,
        },
    },
    types::{Descriptor, Mount, v1::Status as TaskStatus},
};
use futures_util::StreamExt;
use prost_types::Any;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tonic::{Code, Request};

use crate::{
    error::{AgentError, Result},
    image::{ImageBlobs, MEDIA_LAYER, MEDIA_MANIFEST},
};

pub const SNAPSHOTTER: &str = "overlayfs";
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

/// The directory a prepare could not rename its new snapshot onto because
/// it already exists: only an overlayfs snapshot directory named by a
/// number (containerd's "rename <new> <dir>: file exists").
fn stale_snapshot_dir(message: &str) -> Option<PathBuf> {
    let rest = message.split("rename ").nth(1)?;
    let (paths, _) = rest.split_once(": file exists")?;
    let (new, dir) = paths.split_once(' ')?;
    let dir = Path::new(dir);
    let id = dir.file_name()?.to_str()?;
    let parent = dir.parent()?;
    let ok = id.bytes().all(|b| b.is_ascii_digit())
        && !id.is_empty()
        && parent.ends_with("io.containerd.snapshotter.v1.overlayfs/snapshots")
        && Path::new(new).parent() == Some(parent)
        && dir.is_absolute();
    ok.then(|| dir.to_path_buf())
}

fn is_not_found(s: &tonic::Status) -> bool {
    s.code() == Code::NotFound
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
                let c = Client::from_path(socket).await.map_err(|e| e.to_string())?;
                c.version().version(()).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(c)
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
                    return Err(AgentError::Connect {
                        path: socket.display().to_string(),
                        message: e,
                    });
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
        let v = self
            .client
            .version()
            .version(())
            .await
            .map_err(|s| AgentError::containerd("version", s))?;
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

    pub async fn image(&self, name: &str) -> Result<Option<api::Image>> {
        match self
            .client
            .images()
            .get(self.req(api::GetImageRequest {
                name: name.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().image),
            Err(s) if is_not_found(&s) => Ok(None),
            Err(s) => Err(AgentError::containerd("get image", s)),
        }
    }

    pub async fn list_images(&self) -> Result<Vec<String>> {
        let r = self
            .client
            .images()
            .list(self.req(api::ListImagesRequest { filters: vec![] }))
            .await
            .map_err(|s| AgentError::containerd("list images", s))?;
        Ok(r.into_inner().images.into_iter().map(|i| i.name).collect())
    }

    async fn content_exists(&self, digest: &str) -> Result<bool> {
        match self
            .client
            .content()
            .info(self.req(api::InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if is_not_found(&s) => Ok(false),
            Err(s) => Err(AgentError::containerd("content info", s)),
        }
    }

    pub async fn read_content(&self, digest: &str) -> Result<Vec<u8>> {
        let mut s = self
            .client
            .content()
            .read(self.req(api::ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(|s| AgentError::containerd("read content", s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend(
                chunk
                    .map_err(|s| AgentError::containerd("read content", s))?
                    .data,
            );
        }
        Ok(out)
    }

    /// Write a blob from `reader` into the content store (skipped when present).
    async fn write_content<R: tokio::io::AsyncRead + Unpin>(
        &self,
        lease: &str,
        digest: &str,
        size: u64,
        mut reader: R,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        if self.content_exists(digest).await? {
            return Ok(());
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<api::WriteContentRequest>(4);
        let reference = format!("sandpool-{}", &digest[7..]);
        let total = i64::try_from(size).map_err(|_| AgentError::Image("blob too large".into()))?;
        let mut call = self.client.content();
        let req = self.req_lease(tokio_stream::wrappers::ReceiverStream::new(rx), lease);
        let responses = tokio::spawn(async move { call.write(req).await });
        let mut offset: i64 = 0;
        let mut buf = vec![0u8; 1 << 20];
        let send_err = || AgentError::Image("containerd closed the content write stream".into());
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|e| AgentError::io("reading blob", e))?;
            if n == 0 {
                break;
            }
            tx.send(api::WriteContentRequest {
                action: api::WriteAction::Write as i32,
                r#ref: reference.clone(),
                total,
                expected: String::new(),
                offset,
                data: buf[..n].to_vec(),
                labels: HashMap::new(),
            })
            .await
            .map_err(|_| send_err())?;
            offset += n as i64;
        }
        tx.send(api::WriteContentRequest {
            action: api::WriteAction::Commit as i32,
            r#ref: reference,
            total,
            expected: digest.to_string(),
            offset,
            data: vec![],
            labels,
        })
        .await
        .map_err(|_| send_err())?;
        drop(tx);
        let mut stream = match responses.await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) if is_exists(&s) => return Ok(()),
            Ok(Err(s)) => return Err(AgentError::containerd("content write", s)),
            Err(e) => return Err(AgentError::Image(format!("content writer task: {e}"))),
        };
        while let Some(r) = stream.next().await {
            match r {
                Ok(resp) if resp.action == api::WriteAction::Commit as i32 => return Ok(()),
                Ok(_) => {}
                Err(s) if is_exists(&s) => return Ok(()),
                Err(s) => return Err(AgentError::containerd("content write", s)),
            }
        }
        Err(AgentError::Image(format!(
            "content write of {digest} ended without commit"
        )))
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        let r = self.req(StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.to_string(),
        });
        match self.client.snapshots().stat(r).await {
            Ok(_) => Ok(true),
            Err(s) if is_not_found(&s) => Ok(false),
            Err(s) => Err(AgentError::containerd("stat snapshot", s)),
        }
    }

    /// Import a single-layer image: blobs, unpacked snapshot, image record.
    pub async fn import(&self, img: &ImageBlobs) -> Result<()> {
        let lease = self.lease(60).await?;
        let res = self.import_leased(img, &lease).await;
        self.drop_lease(lease).await;
        res
    }

    async fn import_leased(&self, img: &ImageBlobs, lease: &str) -> Result<()> {
        self.write_image_blobs(img, lease).await?;
        if !self.snapshot_exists(&img.diff_id).await? {
            self.unpack_layer(img, lease).await?;
        }
        self.put_image_record(img).await
    }

    /// The layer, config and manifest blobs into the content store (the
    /// config keeps the unpacked snapshot, the manifest both blobs).
    async fn write_image_blobs(&self, img: &ImageBlobs, lease: &str) -> Result<()> {
        let chain = img.diff_id.clone();
        let layer = tokio::fs::File::open(&img.layer_path)
            .await
            .map_err(|e| AgentError::io(img.layer_path.display().to_string(), e))?;
        self.write_content(
            lease,
            &img.layer_digest,
            img.layer_size,
            layer,
            HashMap::new(),
        )
        .await?;
        let cfg_labels: HashMap<String, String> = [(
            format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
            chain.clone(),
        )]
        .into();
        self.write_content(
            lease,
            &img.config_digest,
            img.config.len() as u64,
            img.config.as_slice(),
            cfg_labels,
        )
        .await?;
        let man_labels: HashMap<String, String> = [
            (
                "containerd.io/gc.ref.content.config".to_string(),
                img.config_digest.clone(),
            ),
            (
                "containerd.io/gc.ref.content.l.0".to_string(),
                img.layer_digest.clone(),
            ),
        ]
        .into();
        self.write_content(
            lease,
            &img.manifest_digest,
            img.manifest.len() as u64,
            img.manifest.as_slice(),
            man_labels,
        )
        .await
    }

    /// Apply the layer onto a fresh snapshot and commit it as the chainID.
    async fn unpack_layer(&self, img: &ImageBlobs, lease: &str) -> Result<()> {
        let chain = img.diff_id.clone();
        let key = format!("extract-{} {chain}", uuid::Uuid::new_v4().simple());
        let mounts = self.prepare_snapshot(&key, "", lease).await?;
        let applied = self
            .client
            .diff()
            .apply(self.req_lease(
                api::ApplyRequest {
                    diff: Some(Descriptor {
                        media_type: MEDIA_LAYER.into(),
                        digest: img.layer_digest.clone(),
                        size: img.layer_size as i64,
                        annotations: HashMap::new(),
                    }),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                lease,
            ))
            .await;
        if let Err(s) = applied {
            let _ = self.remove_snapshot(&key).await;
            return Err(AgentError::containerd("apply layer", s));
        }
        let committed = self
            .client
            .snapshots()
            .commit(self.req_lease(
                CommitSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    name: chain.clone(),
                    key: key.clone(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await;
        match committed {
            Ok(_) => {}
            Err(s) if is_exists(&s) => {
                let _ = self.remove_snapshot(&key).await;
            }
            Err(s) => {
                let _ = self.remove_snapshot(&key).await;
                return Err(AgentError::containerd("commit snapshot", s));
            }
        }
        Ok(())
    }

    /// Create (or update) the image record pointing at the manifest.
    async fn put_image_record(&self, img: &ImageBlobs) -> Result<()> {
        let image = api::Image {
            name: img.name.clone(),
            labels: HashMap::new(),
            target: Some(Descriptor {
                media_type: MEDIA_MANIFEST.into(),
                digest: img.manifest_digest.clone(),
                size: img.manifest.len() as i64,
                annotations: HashMap::new(),
            }),
            created_at: None,
            updated_at: None,
        };
        match self
            .client
            .images()
            .create(self.req(api::CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if is_exists(&s) => {
                self.client
                    .images()
                    .update(self.req(api::UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                        source_date_epoch: None,
                    }))
                    .await
                    .map_err(|s| AgentError::containerd("update image", s))?;
                Ok(())
            }
            Err(s) => Err(AgentError::containerd("create image", s)),
        }
    }

    /// chainID of the image's rootfs and its config env.
    pub async fn image_rootfs(&self, name: &str) -> Result<Option<(String, Vec<String>)>> {
        let Some(img) = self.image(name).await? else {
            return Ok(None);
        };
        let target = img
            .target
            .ok_or_else(|| AgentError::Image(format!("image {name} has no target")))?;
        let manifest: serde_json::Value =
            serde_json::from_slice(&self.read_content(&target.digest).await?)
                .map_err(|e| AgentError::Image(format!("manifest of {name}: {e}")))?;
        let cfg_digest = manifest["config"]["digest"].as_str().ok_or_else(|| {
            AgentError::Image(format!(
                "image {name}: manifest without config (index images are not supported)"
            ))
        })?;
        let config: serde_json::Value =
            serde_json::from_slice(&self.read_content(cfg_digest).await?)
                .map_err(|e| AgentError::Image(format!("config of {name}: {e}")))?;
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let chain = chain_id(&diff_ids)
            .ok_or_else(|| AgentError::Image(format!("image {name} has no layers")))?;
        if !self.snapshot_exists(&chain).await? {
            return Err(AgentError::Image(format!(
                "image {name} is not unpacked for {SNAPSHOTTER}"
            )));
        }
        let env = config["config"]["Env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some((chain, env)))
    }

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
            .map_err(|s| AgentError::containerd("create lease", s))?;
        Ok(id)
    }

    async fn drop_lease(&self, id: String) {
        let _ = self
            .client
            .leases()
            .delete(self.req(api::DeleteRequest { id, sync: false }))
            .await;
    }

    /// Prepare the rootfs snapshot and create the container record, under a
    /// lease: an active snapshot is not a GC root until a container refers to
    /// it, so without the lease a concurrent GC may delete it in between.
    pub async fn create_container(&self, c: NewContainer<'_>) -> Result<Vec<Mount>> {
        let lease = self.lease(10).await?;
        let res = self.create_container_leased(c, &lease).await;
        self.drop_lease(lease).await;
        res
    }

    async fn create_container_leased(
        &self,
        c: NewContainer<'_>,
        lease: &str,
    ) -> Result<Vec<Mount>> {
        let NewContainer {
            id,
            snapshot_key,
            image,
            parent_snapshot,
            labels,
            spec,
            runtime_binary,
        } = c;
        let mounts = self
            .prepare_snapshot(snapshot_key, parent_snapshot, lease)
            .await?;
        let opts = RuncOptions {
            binary_name: runtime_binary.to_string(),
            ..Default::default()
        };
        let container = Container {
            id: id.to_string(),
            labels,
            image: image.to_string(),
            runtime: Some(Runtime {
                name: RUNC_SHIM.into(),
                options: Some(Any {
                    type_url: RUNC_OPTIONS_TYPE_URL.into(),
                    value: prost::Message::encode_to_vec(&opts),
                }),
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE_URL.into(),
                value: serde_json::to_vec(spec).map_err(|e| AgentError::Image(e.to_string()))?,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: snapshot_key.to_string(),
            created_at: None,
            updated_at: None,
            extensions: HashMap::new(),
            sandbox: String::new(),
        };
        if let Err(s) = self
            .client
            .containers()
            .create(self.req_lease(
                api::CreateContainerRequest {
                    container: Some(container),
                },
                lease,
            ))
            .await
        {
            let _ = self.remove_snapshot(snapshot_key).await;
            return Err(AgentError::containerd("create container", s));
        }
        Ok(mounts)
    }

    /// Create and start the container's task; with `restore` = (runtime
    /// binary, checkpoint image directory) the task is restored from that
    /// image instead of started fresh.
    pub async fn start_task(
        &self,
        id: &str,
        rootfs: Vec<Mount>,
        log: &Path,
        restore: Option<(&str, &Path)>,
    ) -> Result<u32> {
        let uri = format!("file://{}", log.display());
        let options = restore.map(|(binary, image)| Any {
            type_url: RUNC_OPTIONS_TYPE_URL.into(),
            value: prost::Message::encode_to_vec(&RuncOptions {
                binary_name: binary.to_string(),
                criu_image_path: image.display().to_string(),
                ..Default::default()
            }),
        });
        let created = self
            .client
            .tasks()
            .create(self.req(api::CreateTaskRequest {
                container_id: id.to_string(),
                rootfs,
                stdin: String::new(),
                stdout: uri.clone(),
                stderr: uri,
                terminal: false,
                checkpoint: None,
                options,
                runtime_path: String::new(),
            }))
            .await
            .map_err(|s| AgentError::containerd("create task", s))?
            .into_inner();
        self.client
            .tasks()
            .start(self.req(api::StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|s| AgentError::containerd("start task", s))?;
        Ok(created.pid)
    }

    pub async fn task_state(&self, id: &str) -> Result<Option<(TaskState, u32)>> {
        match self
            .client
            .tasks()
            .get(self.req(api::GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => {
                let p = r.into_inner().process.unwrap_or_default();
                let st = match TaskStatus::try_from(p.status).unwrap_or(TaskStatus::Unknown) {
                    TaskStatus::Created => TaskState::Created,
                    TaskStatus::Running => TaskState::Running,
                    TaskStatus::Paused | TaskStatus::Pausing => TaskState::Paused,
                    TaskStatus::Stopped => TaskState::Stopped,
                    TaskStatus::Unknown => TaskState::Unknown,
                };
                Ok(Some((st, p.pid)))
            }
            Err(s) if is_not_found(&s) => Ok(None),
            Err(s) => Err(AgentError::containerd("get task", s)),
        }
    }

    /// Freeze the task. On cgroup v1, runc's freezer gives up ("unable to
    /// freeze") when the cgroup keeps forking while it freezes, and thaws the
    /// cgroup again; that is transient, so it is retried a few times with a
    /// growing pause before the error is returned.
    pub async fn pause(&self, id: &str) -> Result<()> {
        const ATTEMPTS: u32 = 6;
        let mut attempt = 1;
        loop {
            match self
                .client
                .tasks()
                .pause(self.req(api::PauseTaskRequest {
                    container_id: id.to_string(),
                }))
                .await
            {
                Ok(_) => return Ok(()),
                Err(s) if attempt < ATTEMPTS && s.message().contains("unable to freeze") => {
                    tracing::debug!(sandbox = %id, attempt, "freezer did not settle, retrying pause");
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(s) => return Err(AgentError::containerd("pause task", s)),
            }
        }
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        self.client
            .tasks()
            .resume(self.req(api::ResumeTaskRequest {
                container_id: id.to_string(),
            }))
            .await
            .map_err(|s| AgentError::containerd("resume task", s))?;
        Ok(())
    }

    /// Kill the task (SIGKILL to all its processes), wait for it, delete it,
    /// then delete the container and its snapshot. Missing pieces are fine.
    pub async fn destroy(&self, id: &str) -> Result<()> {
        let snapshot_key = match self
            .client
            .containers()
            .get(self.req(api::GetContainerRequest { id: id.to_string() }))
            .await
        {
            Ok(r) => r.into_inner().container.map(|c| c.snapshot_key),
            Err(s) if is_not_found(&s) => None,
            Err(s) => return Err(AgentError::containerd("get container", s)),
        };
        if let Some((state, _)) = self.task_state(id).await? {
            if state == TaskState::Paused {
                let _ = self.resume(id).await;
            }
            if state != TaskState::Stopped {
                let mut waiter = self.client.tasks();
                let wreq = self.req(api::WaitRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                });
                let wait = tokio::spawn(async move { waiter.wait(wreq).await });
                let kill = self
                    .client
                    .tasks()
                    .kill(self.req(api::KillRequest {
                        container_id: id.to_string(),
                        exec_id: String::new(),
                        signal: 9,
                        all: true,
                    }))
                    .await;
                match kill {
                    Ok(_) => {}
                    Err(s) if is_not_found(&s) || s.code() == Code::FailedPrecondition => {}
                    Err(s) => return Err(AgentError::containerd("kill task", s)),
                }
                let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
                // A runsc sandbox restored under a new id keeps the old id
                // inside, so `runsc kill` finds nothing to signal: kill the
                // sandbox's host process itself.
                if let Some((TaskState::Running | TaskState::Paused | TaskState::Created, pid)) =
                    self.task_state(id).await?
                    && let Ok(pid) = i32::try_from(pid)
                    && pid > 1
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    self.wait_stopped(id, Duration::from_secs(10)).await?;
                }
            }
            match self
                .client
                .tasks()
                .delete(self.req(api::DeleteTaskRequest {
                    container_id: id.to_string(),
                }))
                .await
            {
                Ok(_) => {}
                Err(s) if is_not_found(&s) => {}
                Err(s) => return Err(AgentError::containerd("delete task", s)),
            }
        }
        match self
            .client
            .containers()
            .delete(self.req(api::DeleteContainerRequest { id: id.to_string() }))
            .await
        {
            Ok(_) => {}
            Err(s) if is_not_found(&s) => {}
            Err(s) => return Err(AgentError::containerd("delete container", s)),
        }
        match snapshot_key {
            Some(k) if !k.is_empty() => self.remove_snapshot(&k).await,
            _ => Ok(()),
        }
    }

    /// Wait up to `within` until `id`'s task no longer runs (stopped or
    /// gone); whether it stopped in time.
    pub async fn wait_stopped(&self, id: &str, within: Duration) -> Result<bool> {
        let deadline = std::time::Instant::now() + within;
        while let Some((TaskState::Running | TaskState::Paused | TaskState::Created, _)) =
            self.task_state(id).await?
        {
            if std::time::Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(true)
    }

    /// The runc root the shim gives runc/runsc for this namespace (no `root`
    /// option is set): where `runsc checkpoint` finds the sandbox.
    pub fn runtime_root(&self) -> String {
        format!("/run/containerd/runc/{}", self.ns)
    }

    /// The overlay upper directory of container `id`'s rootfs snapshot: what
    /// the sandbox wrote to its root file system.
    pub async fn rootfs_upperdir(&self, id: &str) -> Result<PathBuf> {
        let key = match self
            .client
            .containers()
            .get(self.req(api::GetContainerRequest { id: id.to_string() }))
            .await
        {
            Ok(r) => r
                .into_inner()
                .container
                .map(|c| c.snapshot_key)
                .unwrap_or_default(),
            Err(s) => return Err(AgentError::containerd("get container", s)),
        };
        let mounts = self
            .client
            .snapshots()
            .mounts(self.req(MountsRequest {
                snapshotter: SNAPSHOTTER.into(),
                key,
            }))
            .await
            .map_err(|s| AgentError::containerd("snapshot mounts", s))?
            .into_inner()
            .mounts;
        upperdir(&mounts).ok_or_else(|| {
            AgentError::FailedPrecondition(format!(
                "sandbox {id}'s rootfs has no overlay upper directory"
            ))
        })
    }

    /// Prepare an active snapshot. A containerd killed between renaming a
    /// new snapshot's directory into place and committing its metadata
    /// leaves that directory behind under an id its database hands out
    /// again: the prepare fails with "rename <new> <dir>: file exists", and
    /// so would every later one (containerd 1.6's metadata snapshotter does
    /// not implement the Cleanup RPC). The directory holds no committed
    /// snapshot, so it is removed and the prepare tried again.
    async fn prepare_snapshot(&self, key: &str, parent: &str, lease: &str) -> Result<Vec<Mount>> {
        // one stale directory per prepare that was in flight when it died
        const MAX_STALE: usize = 64;
        let mut removed = 0;
        loop {
            let request = self.req_lease(
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.to_string(),
                    parent: parent.to_string(),
                    labels: HashMap::new(),
                },
                lease,
            );
            let status = match self.client.snapshots().prepare(request).await {
                Ok(r) => return Ok(r.into_inner().mounts),
                Err(s) => s,
            };
            let stale = match stale_snapshot_dir(status.message()) {
                Some(dir) if removed < MAX_STALE => dir,
                _ => return Err(AgentError::containerd("prepare snapshot", status)),
            };
            tracing::warn!(dir = %stale.display(), "removing a snapshot directory containerd's metadata does not know");
            match tokio::fs::remove_dir_all(&stale).await {
                // a concurrent prepare may have removed it first
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    let what = format!("remove stale snapshot directory {}", stale.display());
                    return Err(AgentError::io(what, e));
                }
            }
            removed += 1;
        }
    }

    pub async fn remove_snapshot(&self, key: &str) -> Result<()> {
        match self
            .client
            .snapshots()
            .remove(self.req(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if is_not_found(&s) => Ok(()),
            Err(s) => Err(AgentError::containerd("remove snapshot", s)),
        }
    }

    pub async fn list_containers(&self) -> Result<Vec<Container>> {
        let r = self
            .client
            .containers()
            .list(self.req(api::ListContainersRequest { filters: vec![] }))
            .await
            .map_err(|s| AgentError::containerd("list containers", s))?;
        Ok(r.into_inner().containers)
    }

    /// Active (non-committed) snapshot keys: one per sandbox, plus any residue.
    pub async fn list_active_snapshots(&self) -> Result<Vec<String>> {
        let mut s = self
            .client
            .snapshots()
            .list(self.req(ListSnapshotsRequest {
                snapshotter: SNAPSHOTTER.into(),
                filters: vec![],
            }))
            .await
            .map_err(|s| AgentError::containerd("list snapshots", s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = s.next().await {
            for info in r
                .map_err(|s| AgentError::containerd("list snapshots", s))?
                .info
            {
                // kind 2 = active (prepared), 3 = committed
                if info.kind == 2 {
                    out.push(info.name);
                }
            }
        }
        Ok(out)
    }

    /// Task exits in this namespace: (container id, exited pid, exit status).
    /// The subscription is made in the returned task: containerd answers a
    /// Subscribe only when the first event arrives.
    /// Task exits of this namespace, for as long as the receiver lives. The
    /// subscription is renewed when containerd goes away and comes back
    /// (restart); exits in between are missed, so each renewal is announced
    /// with [`TaskEvent::Resubscribed`] for the caller to re-check its tasks.
    pub fn task_exits(&self) -> tokio::sync::mpsc::Receiver<TaskEvent> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let me = self.clone();
        tokio::spawn(async move {
            let filter = format!("namespace=={},topic==\"/tasks/exit\"", me.ns);
            let mut backoff = Duration::from_millis(100);
            loop {
                let req = me.req(api::SubscribeRequest {
                    filters: vec![filter.clone()],
                });
                let mut stream = match me.client.events().subscribe(req).await {
                    Ok(s) => s.into_inner(),
                    Err(e) => {
                        tracing::debug!(error = %e, "subscribing to containerd task exits failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        if tx.is_closed() {
                            return;
                        }
                        continue;
                    }
                };
                backoff = Duration::from_millis(100);
                while let Some(Ok(env)) = stream.next().await {
                    let Some(any) = env.event else { continue };
                    if let Ok(exit) =
                        <containerd_client::events::TaskExit as prost::Message>::decode(
                            any.value.as_slice(),
                        )
                        && tx
                            .send(TaskEvent::Exit {
                                id: exit.container_id,
                                pid: exit.pid,
                                status: exit.exit_status,
                            })
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
                tracing::warn!(
                    "containerd event stream ended (containerd restarting?); resubscribing"
                );
                // announce the gap as soon as containerd answers again (a new
                // subscription only answers at its first event)
                while me.client.version().version(()).await.is_err() {
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tracing::info!("containerd is back");
                if tx.send(TaskEvent::Resubscribed).await.is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// Set (merge) container labels.
    pub async fn set_labels(&self, id: &str, labels: HashMap<String, String>) -> Result<()> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let c = Container {
            id: id.to_string(),
            labels,
            ..Default::default()
        };
        self.client
            .containers()
            .update(self.req(api::UpdateContainerRequest {
                container: Some(c),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(|s| AgentError::containerd("update container labels", s))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn only_a_numbered_overlayfs_snapshot_directory_is_stale() {
        let root = "/d/root/io.containerd.snapshotter.v1.overlayfs/snapshots";
        let msg = format!("failed to rename: rename {root}/new-123 {root}/7: file exists");
        assert_eq!(
            stale_snapshot_dir(&msg),
            Some(PathBuf::from(format!("{root}/7")))
        );
        for bad in [
            format!("rename {root}/new-1 {root}/metadata.db: file exists"),
            format!("rename {root}/new-1 /etc/7: file exists"),
            format!("rename /tmp/new-1 {root}/7: file exists"),
            format!("rename {root}/new-1 {root}/7: permission denied"),
            "rename a b: file exists".to_string(),
            "snapshot k already exists".to_string(),
        ] {
            assert_eq!(stale_snapshot_dir(&bad), None, "{bad}");
        }
    }
}
