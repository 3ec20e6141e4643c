//! The task exit stream, resubscribed when containerd goes away.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use containerd_client::services::v1 as api;
use futures_util::StreamExt;

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
            let filter = format!("namespace=={},topic==\"/tasks/exit\"", me.ns);
            const MAX_DELAY: Duration = Duration::from_secs(2);
            let retries = ExponentialBuilder::default()
                .with_jitter()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(MAX_DELAY)
                .without_max_times();
            let mut backoff = retries.build();
            loop {
                let req = me.req(api::SubscribeRequest {
                    filters: vec![filter.clone()],
                });
                let mut stream = match me.client.events().subscribe(req).await {
                    Ok(s) => s.into_inner(),
                    Err(e) => {
                        tracing::debug!(error = %e, "subscribing to containerd task exits failed; retrying");
                        tokio::time::sleep(backoff.next().unwrap_or(MAX_DELAY)).await;
                        if tx.is_closed() {
                            return;
                        }
                        continue;
                    }
                };
                backoff = retries.build();
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
}
