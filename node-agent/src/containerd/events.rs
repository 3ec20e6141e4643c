//! The task exit stream, resubscribed when containerd goes away.

use std::time::Duration;

use containerd_client::services::v1 as api;
use futures_util::StreamExt;

use crate::retry::Retry;

use super::{Ctr, TaskEvent};

impl Ctr {
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
            // several filters: an event matching any of them
            let filters = vec![
                format!("namespace=={},topic==\"/tasks/exit\"", me.ns),
                format!("namespace=={},topic==\"/tasks/oom\"", me.ns),
            ];
            let mut retry = Retry::up_to(Duration::from_secs(2));
            loop {
                let req = me.req(api::SubscribeRequest {
                    filters: filters.clone(),
                });
                let mut stream = match me.client.events().subscribe(req).await {
                    Ok(s) => s.into_inner(),
                    Err(e) => {
                        tracing::debug!(error = %e, "subscribing to containerd task exits failed; retrying");
                        tokio::time::sleep(retry.pause()).await;
                        if tx.is_closed() {
                            return;
                        }
                        continue;
                    }
                };
                retry.reset();
                while let Some(Ok(env)) = stream.next().await {
                    let Some(ev) = decode(&env.topic, env.event) else {
                        continue;
                    };
                    if tx.send(ev).await.is_err() {
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
}

/// The task event an envelope of `topic` carries (exits and OOM kills).
fn decode(topic: &str, any: Option<prost_types::Any>) -> Option<TaskEvent> {
    use containerd_client::events::{TaskExit, TaskOom};
    let bytes = any?.value;
    match topic {
        "/tasks/exit" => {
            let exit = <TaskExit as prost::Message>::decode(bytes.as_slice()).ok()?;
            Some(TaskEvent::Exit {
                id: exit.container_id,
                pid: exit.pid,
                status: exit.exit_status,
            })
        }
        "/tasks/oom" => {
            let oom = <TaskOom as prost::Message>::decode(bytes.as_slice()).ok()?;
            Some(TaskEvent::Oom {
                id: oom.container_id,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any<M: prost::Message>(m: &M) -> Option<prost_types::Any> {
        Some(prost_types::Any {
            type_url: String::new(),
            value: m.encode_to_vec(),
        })
    }

    #[test]
    fn exits_and_oom_kills_are_told_apart_by_topic() {
        use containerd_client::events::{TaskExit, TaskOom};
        let oom = TaskOom {
            container_id: "sb-1".into(),
        };
        // an OOM event read as an exit would be an exit of pid 0, status 0
        assert!(matches!(
            decode("/tasks/oom", any(&oom)),
            Some(TaskEvent::Oom { id }) if id == "sb-1"
        ));
        let exit = TaskExit {
            container_id: "sb-2".into(),
            pid: 7,
            exit_status: 137,
            ..Default::default()
        };
        assert!(matches!(
            decode("/tasks/exit", any(&exit)),
            Some(TaskEvent::Exit { id, pid: 7, status: 137 }) if id == "sb-2"
        ));
        assert!(decode("/tasks/create", any(&exit)).is_none());
    }
}
