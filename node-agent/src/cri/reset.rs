//! The reset behind a Pool's `recycleStrategy: Restart` in Kubernetes mode
//! (`Release` with `RELEASE_POLICY_RECYCLE` of `<namespace>/<pod>`): what
//! the node agent does so that the kubelet's restart of the pod's app
//! containers hands the next tenant nothing of the previous one.
//!
//! In order, with every app container's task frozen first (so no process
//! of the tenant runs, forks or writes while the pod is reset):
//! 1. the pids of every process of each running app container (its cgroup,
//!    through containerd) are recorded with their start times;
//! 2. a new runtime access token is written to `access-token` in the pod's
//!    runtime volume (the emptyDir mounted read-only at `/opt/sandpool`);
//!    the runtime prefers it to the token of the pod spec when it starts;
//! 3. every emptyDir volume an app container mounts writable is emptied
//!    (on the host: `/var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`,
//!    read through the host's root, `/proc/1/root` for the DaemonSet);
//! 4. every process of each task is killed (SIGKILL), the tasks thawed and
//!    waited for;
//! 5. none of the recorded processes may be left (same pid and start time).
//!
//! The kubelet then restarts the containers (restartPolicy `Always`): a
//! restarted container is a new CRI container, with a new id and a new
//! rootfs snapshot from the image, in new pid and mount namespaces. The
//! controller waits for that (new container ids, restart counts risen, pod
//! Ready) before the pod rejoins its pool, and deletes it otherwise.
//! Anything the agent cannot do or check is an error, and the controller
//! deletes the pod: a gVisor pod (its processes live in the sandbox
//! kernel, out of the host's sight), a paused pod, a pod without a running
//! app container or without the runtime volume, a runtime volume mounted
//! writable, a process that survived.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::Container;
use serde::Deserialize;

use super::{CriNode, CriPod, is_gvisor};
use crate::containerd::TaskState;
use crate::error::{AgentError, Result};

/// Where the pod's runtime volume is mounted in its main container.
pub const RUNTIME_MOUNT: &str = "/opt/sandpool";
/// The rotated token's file in the runtime volume.
pub const TOKEN_FILE: &str = "access-token";
/// How the kubelet lays out a pod's emptyDir volumes on the host.
const EMPTY_DIR: &str = "/volumes/kubernetes.io~empty-dir/";
/// Longest wait for the killed tasks to stop.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// What a reset did (the controller's evidence).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResetReport {
    /// The runtime's new access token.
    pub token: String,
    /// Names of the app containers whose processes were killed.
    pub killed: Vec<String>,
    /// How many processes were killed (all checked gone).
    pub processes: usize,
    /// Names of the emptyDir volumes emptied.
    pub wiped: Vec<String>,
}

/// An emptyDir volume of a container's runtime spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmptyDir {
    /// The volume's name.
    pub name: String,
    /// Its directory on the host.
    pub source: PathBuf,
    /// Where the container sees it.
    pub destination: String,
    pub writable: bool,
}

#[derive(Deserialize)]
struct SpecMounts {
    #[serde(default)]
    mounts: Vec<SpecMount>,
}

#[derive(Deserialize)]
struct SpecMount {
    #[serde(default)]
    destination: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    options: Vec<String>,
}

/// The emptyDir volumes among the mounts of a runtime spec (JSON).
pub fn empty_dirs(spec: &[u8]) -> Result<Vec<EmptyDir>> {
    let s: SpecMounts = serde_json::from_slice(spec)
        .map_err(|e| AgentError::FailedPrecondition(format!("reading a runtime spec: {e}")))?;
    Ok(s.mounts
        .into_iter()
        .filter_map(|m| {
            let (_, name) = m.source.split_once(EMPTY_DIR)?;
            (!name.is_empty() && !name.contains('/')).then(|| EmptyDir {
                name: name.to_string(),
                source: PathBuf::from(&m.source),
                destination: m.destination.clone(),
                writable: !m.options.iter().any(|o| o == "ro"),
            })
        })
        .collect())
}

/// The start time (clock ticks after boot) of process `pid`, if it exists.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the command (which may hold spaces) in parentheses;
    // starttime is field 22 of stat, the 20th after the command
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Empty `dir` (the directory itself stays: it is bind-mounted into the
/// pod's containers); links are removed, never followed.
fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    match std::fs::read_dir(dir)?.next() {
        None => Ok(()),
        Some(_) => Err(std::io::Error::other("something was left")),
    }
}

/// Write `token` to `dir/access-token` (a new file renamed into place,
/// readable by the runtime whatever its user).
fn write_token(dir: &Path, token: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = dir.join(format!(".{TOKEN_FILE}.new"));
    std::fs::write(&tmp, token)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444))?;
    std::fs::rename(&tmp, dir.join(TOKEN_FILE))
}

fn refuse(id: &str, why: impl std::fmt::Display) -> AgentError {
    AgentError::FailedPrecondition(format!("pod {id} cannot be reset in place: {why}"))
}

/// The pod's running app containers (id, name, spec), refusing a paused or
/// gVisor pod and one with nothing running.
async fn running(node: &CriNode, pod: &CriPod) -> Result<Vec<(String, String, Container)>> {
    let id = pod.id();
    let all = node.ctr.list_containers().await?;
    let mut out = Vec::new();
    for (cid, name) in &pod.containers {
        let Some(c) = all.iter().find(|c| c.id == *cid) else {
            continue;
        };
        if is_gvisor(c) {
            return Err(refuse(
                &id,
                "it runs on gVisor (runsc), whose processes the node cannot check",
            ));
        }
        match node.ctr.task_state(cid).await? {
            Some((TaskState::Running, _)) => out.push((cid.clone(), name.clone(), c.clone())),
            Some((TaskState::Paused, _)) => return Err(refuse(&id, "it is paused")),
            _ => {} // an exited container the kubelet keeps for its logs
        }
    }
    if out.is_empty() {
        return Err(refuse(&id, "it has no running app container"));
    }
    Ok(out)
}

/// The emptyDirs of `containers`, each once, writable when any container
/// mounts it writable.
fn volumes_of(id: &str, containers: &[(String, String, Container)]) -> Result<Vec<EmptyDir>> {
    let mut out: Vec<EmptyDir> = Vec::new();
    for (_, name, c) in containers {
        let spec = c.spec.as_ref().map(|s| s.value.as_slice()).unwrap_or(b"{}");
        for v in empty_dirs(spec).map_err(|e| refuse(id, format!("container {name}: {e}")))? {
            match out.iter_mut().find(|o| o.source == v.source) {
                Some(o) => o.writable |= v.writable,
                None => out.push(v),
            }
        }
    }
    Ok(out)
}

impl CriNode {
    /// Where the host's files are seen from this process (`/proc/1/root`
    /// for the DaemonSet, with `hostPID`; `/` when the agent runs on the host).
    pub fn with_host_root(mut self, root: PathBuf) -> Self {
        self.host_root = root;
        self
    }

    fn on_host(&self, p: &Path) -> PathBuf {
        self.host_root.join(p.strip_prefix("/").unwrap_or(p))
    }

    /// Reset pod `id` for its next tenant (see the module doc).
    pub async fn reset(&self, id: &str) -> Result<ResetReport> {
        let pod = self.pod(id).await?;
        let targets = running(self, &pod).await?;
        let volumes = volumes_of(id, &targets)?;
        let runtime = volumes
            .iter()
            .find(|v| v.destination == RUNTIME_MOUNT)
            .ok_or_else(|| {
                refuse(
                    id,
                    format!("no runtime volume at {RUNTIME_MOUNT} to rotate its access token in"),
                )
            })?;
        if runtime.writable {
            return Err(refuse(
                id,
                format!("its runtime volume ({RUNTIME_MOUNT}) is mounted writable"),
            ));
        }
        let mut frozen = Vec::new();
        let done = self
            .reset_frozen(id, &targets, &volumes, runtime, &mut frozen)
            .await;
        for c in &frozen {
            // thawed either way: a killed task's SIGKILL is delivered, a
            // failed reset leaves the pod running for the controller to delete
            let _ = self.ctr.resume(c).await;
        }
        let (report, pids) = done?;
        for (cid, _, _) in &targets {
            if !self.ctr.wait_stopped(cid, STOP_WAIT).await? {
                return Err(refuse(id, format!("container {cid} did not stop")));
            }
        }
        let left: Vec<u32> = pids
            .iter()
            .filter(|(pid, start)| start_time(*pid) == Some(*start))
            .map(|(pid, _)| *pid)
            .collect();
        if !left.is_empty() {
            return Err(refuse(id, format!("processes {left:?} survived the kill")));
        }
        tracing::info!(pod = %id, containers = ?report.killed, processes = report.processes, wiped = ?report.wiped, "pod reset");
        Ok(report)
    }

    /// Steps 1–4 of the module doc while the tasks are frozen (`frozen`
    /// collects the ones paused, for the caller to thaw). Returns the report
    /// and the killed processes (pid, start time).
    async fn reset_frozen(
        &self,
        id: &str,
        targets: &[(String, String, Container)],
        volumes: &[EmptyDir],
        runtime: &EmptyDir,
        frozen: &mut Vec<String>,
    ) -> Result<(ResetReport, Vec<(u32, u64)>)> {
        for (cid, _, _) in targets {
            self.ctr.pause(cid).await?;
            frozen.push(cid.clone());
        }
        let mut pids = Vec::new();
        for (cid, _, _) in targets {
            for pid in self.ctr.list_pids(cid).await? {
                if let Some(t) = start_time(pid) {
                    pids.push((pid, t));
                }
            }
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.on_host(&runtime.source);
        write_token(&dir, &token).map_err(|e| {
            refuse(
                id,
                format!("writing its new access token in {}: {e}", dir.display()),
            )
        })?;
        let mut wiped = Vec::new();
        for v in volumes.iter().filter(|v| v.writable) {
            let dir = self.on_host(&v.source);
            empty_dir(&dir).map_err(|e| {
                refuse(
                    id,
                    format!("emptying volume {} ({}): {e}", v.name, dir.display()),
                )
            })?;
            wiped.push(v.name.clone());
        }
        for (cid, _, _) in targets {
            self.ctr.kill_all(cid).await?;
        }
        let report = ResetReport {
            token,
            killed: targets.iter().map(|(_, n, _)| n.clone()).collect(),
            processes: pids.len(),
            wiped,
        };
        Ok((report, pids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_dirs_are_read_from_the_runtime_spec() {
        let spec = serde_json::json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/opt/sandpool", "source": "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/sandpool-runtime", "options": ["rbind", "ro"]},
            {"destination": "/var/lib/sandbox", "source": "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/sandbox-storage", "options": ["rbind", "rw"]},
            {"destination": "/etc/hosts", "source": "/var/lib/kubelet/pods/u1/etc-hosts", "options": ["rbind"]},
            {"destination": "/x", "source": "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/", "options": []}
        ]});
        let v = empty_dirs(&serde_json::to_vec(&spec).expect("json")).expect("spec");
        let seen: Vec<(&str, &str, bool)> = v
            .iter()
            .map(|e| (e.name.as_str(), e.destination.as_str(), e.writable))
            .collect();
        assert_eq!(
            seen,
            [
                ("sandpool-runtime", "/opt/sandpool", false),
                ("sandbox-storage", "/var/lib/sandbox", true)
            ]
        );
        assert!(empty_dirs(b"not json").is_err());
    }

    #[test]
    fn a_directory_is_emptied_without_following_links() {
        let outside = tempfile::tempdir().expect("tmp");
        std::fs::write(outside.path().join("keep"), "x").expect("write");
        let d = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(d.path().join("a/b")).expect("mkdir");
        std::fs::write(d.path().join("a/b/f"), "tenant").expect("write");
        std::fs::write(d.path().join(".hidden"), "tenant").expect("write");
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).expect("link");
        empty_dir(d.path()).expect("emptied");
        assert_eq!(std::fs::read_dir(d.path()).expect("dir").count(), 0);
        assert!(
            outside.path().join("keep").exists(),
            "a link is not followed"
        );
    }

    #[test]
    fn a_live_process_has_a_start_time_and_a_gone_one_none() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert_eq!(start_time(me), start_time(me));
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn the_token_file_replaces_the_old_one() {
        let d = tempfile::tempdir().expect("tmp");
        write_token(d.path(), "one").expect("write");
        write_token(d.path(), "two").expect("write");
        assert_eq!(
            std::fs::read_to_string(d.path().join(TOKEN_FILE)).expect("read"),
            "two"
        );
        assert_eq!(std::fs::read_dir(d.path()).expect("dir").count(), 1);
    }
}
