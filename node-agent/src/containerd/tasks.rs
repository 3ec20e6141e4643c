//! Tasks: start (runc or runsc through the runc v2 shim), state, pause,
//! resume, and destroy.

use std::{path::Path, time::Duration};

use containerd_client::{
    services::v1 as api,
    types::{Mount, v1::Status as TaskStatus},
};
use prost_types::Any;
use tonic::Code;

use crate::error::{AgentError, Result};

use super::{Answer, Ctr, RUNC_OPTIONS_TYPE_URL, RuncOptions, TaskState, is_not_found};

impl Ctr {
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
            .or_fail("create task")?
            .into_inner();
        self.client
            .tasks()
            .start(self.req(api::StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .or_fail("start task")?;
        Ok(created.pid)
    }

    pub async fn task_state(&self, id: &str) -> Result<Option<(TaskState, u32)>> {
        let req = self.req(api::GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        });
        let Some(r) = self.client.tasks().get(req).await.found("get task")? else {
            return Ok(None);
        };
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
            .or_fail("resume task")?;
        Ok(())
    }

    /// SIGKILL every process of `id`'s task; a task that is gone or
    /// already stopped is fine.
    pub async fn kill_all(&self, id: &str) -> Result<()> {
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
            Ok(_) => Ok(()),
            Err(s) if is_not_found(&s) || s.code() == Code::FailedPrecondition => Ok(()),
            Err(s) => Err(AgentError::containerd("kill task", s)),
        }
    }

    /// The pids of every process of the container's task (its cgroup).
    pub async fn list_pids(&self, id: &str) -> Result<Vec<u32>> {
        let r = self
            .client
            .tasks()
            .list_pids(self.req(api::ListPidsRequest {
                container_id: id.to_string(),
            }))
            .await
            .or_fail("list task pids")?;
        Ok(r.into_inner().processes.iter().map(|p| p.pid).collect())
    }

    /// Kill the task (SIGKILL to all its processes), wait for it, delete it,
    /// then delete the container and its snapshot. Missing pieces are fine.
    pub async fn destroy(&self, id: &str) -> Result<()> {
        let req = self.req(api::GetContainerRequest { id: id.to_string() });
        let got = self.client.containers().get(req).await;
        let snapshot_key = got
            .found("get container")?
            .and_then(|r| r.into_inner().container)
            .map(|c| c.snapshot_key);
        self.stop_and_delete_task(id).await?;
        let req = self.req(api::DeleteContainerRequest { id: id.to_string() });
        let deleted = self.client.containers().delete(req).await;
        deleted.found("delete container")?;
        match snapshot_key {
            Some(k) if !k.is_empty() => self.remove_snapshot(&k).await,
            _ => Ok(()),
        }
    }

    /// Stop and delete `id`'s task, keeping the container and its root file
    /// system (see [`Ctr::stop_and_delete_task`]).
    pub async fn stop_task(&self, id: &str) -> Result<()> {
        self.stop_and_delete_task(id).await
    }

    /// Kill `id`'s task (SIGKILL to all its processes), wait for it and
    /// delete it; no task is fine.
    pub(super) async fn stop_and_delete_task(&self, id: &str) -> Result<()> {
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
                self.kill_all(id).await?;
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
            let req = self.req(api::DeleteTaskRequest {
                container_id: id.to_string(),
            });
            self.client.tasks().delete(req).await.found("delete task")?;
        }
        Ok(())
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
}
