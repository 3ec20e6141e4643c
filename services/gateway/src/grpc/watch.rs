//! Watch: a sandbox's state as it changes, and its OOM kills. The gateway
//! looks at the claim every 250 ms (the scheduler has no claim stream); OOM
//! kills reach the claim from the node agent's containerd `TaskOOM` events.

use std::time::Duration;

use sandpool_proto::public as api;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument;

use super::{
    call::{Call, deadline_exceeded, to_status},
    lifecycle::sandbox,
};
use crate::{Gateway, error::ApiError};

pub type WatchStream = ReceiverStream<Result<api::SandboxEvent, Status>>;

/// How often Watch looks at the sandbox.
const WATCH_EVERY: Duration = Duration::from_millis(250);

type Kind = api::sandbox_event::Kind;

fn ended(s: i32) -> bool {
    use api::SandboxState as S;
    [S::Deleted, S::Expired, S::Failed]
        .iter()
        .any(|e| *e as i32 == s)
}

/// Whether a sandbox's death was the OOM killer's (the node's reason).
fn oom_death(sb: &api::Sandbox) -> bool {
    sb.state == api::SandboxState::Failed as i32 && sb.message.starts_with("OOMKilled")
}

/// The events between what a watcher saw last and the sandbox `now`: one
/// OOM event per new kill (counting up), then the state if it changed.
fn events(last: Option<&api::Sandbox>, now: &api::Sandbox) -> Vec<(Kind, api::Sandbox)> {
    let Some(last) = last else {
        return vec![(Kind::State, now.clone())];
    };
    let mut out: Vec<(Kind, api::Sandbox)> = (last.oom_kills..now.oom_kills)
        .map(|n| {
            let sb = api::Sandbox {
                oom_kills: n + 1,
                ..last.clone()
            };
            (Kind::Oom, sb)
        })
        .collect();
    // a death the node put down to the OOM killer before its count arrived
    if now.oom_kills == 0 && oom_death(now) && !oom_death(last) {
        let sb = api::Sandbox {
            oom_kills: 1,
            ..last.clone()
        };
        out.push((Kind::Oom, sb));
    }
    let moved = api::Sandbox {
        oom_kills: now.oom_kills,
        ..last.clone()
    };
    if &moved != now {
        out.push((Kind::State, now.clone()));
    }
    out
}

pub async fn watch(gw: &Gateway, call: Call, id: String) -> Result<WatchStream, Status> {
    // NOT_FOUND up front for what is not the caller's
    let first = call.run(gw.get_claim(&id)).await?;
    let (tx, rx) = mpsc::channel(16);
    let gw = gw.clone();
    let relay = async move {
        let mut last: Option<api::Sandbox> = None;
        let mut next = Ok(first);
        loop {
            let sb = match next {
                Ok(c) => sandbox(c),
                // gone from the scheduler's books: deleted
                Err(ApiError::SandboxNotFound(_)) => api::Sandbox {
                    id: id.clone(),
                    state: api::SandboxState::Deleted as i32,
                    ..last.clone().unwrap_or_default()
                },
                Err(e) => {
                    let _ = tx.send(Err(to_status(e))).await;
                    return;
                }
            };
            for (kind, shown) in events(last.as_ref(), &sb) {
                let ev = api::SandboxEvent {
                    sandbox: Some(shown),
                    observed_unix_ms: chrono::Utc::now().timestamp_millis(),
                    kind: kind as i32,
                };
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            if ended(sb.state) {
                return;
            }
            last = Some(sb);
            tokio::select! {
                () = tokio::time::sleep(WATCH_EVERY) => {}
                () = tx.closed() => return,
                () = call.expired() => {
                    let _ = tx.send(Err(deadline_exceeded())).await;
                    return;
                }
            }
            next = call.scoped(gw.get_claim(&id)).await;
        }
    };
    tokio::spawn(relay.in_current_span());
    Ok(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb(state: api::SandboxState, oom_kills: u32, message: &str) -> api::Sandbox {
        api::Sandbox {
            id: "s".into(),
            state: state as i32,
            oom_kills,
            message: message.into(),
            ..Default::default()
        }
    }

    fn kinds(ev: &[(Kind, api::Sandbox)]) -> Vec<(Kind, u32)> {
        ev.iter().map(|(k, s)| (*k, s.oom_kills)).collect()
    }

    #[test]
    fn each_new_oom_kill_is_an_event_before_the_state() {
        use api::SandboxState as S;
        let running = sb(S::Running, 0, "");
        assert_eq!(kinds(&events(None, &running)), [(Kind::State, 0)]);
        assert!(events(Some(&running), &running).is_empty());
        let two = sb(S::Running, 2, "");
        assert_eq!(
            kinds(&events(Some(&running), &two)),
            [(Kind::Oom, 1), (Kind::Oom, 2)],
            "two kills, the sandbox lives on: no state event"
        );
        let failed = sb(S::Failed, 3, "OOMKilled: over its limit");
        let ev = events(Some(&two), &failed);
        assert_eq!(kinds(&ev), [(Kind::Oom, 3), (Kind::State, 3)]);
        assert_eq!(ev[0].1.state, S::Running as i32, "the kill came first");
    }

    #[test]
    fn an_oom_death_without_a_count_yet_is_an_oom_event() {
        use api::SandboxState as S;
        let running = sb(S::Running, 0, "");
        let died = sb(
            S::Failed,
            0,
            "OOMKilled: the sandbox went over its memory limit",
        );
        assert_eq!(
            kinds(&events(Some(&running), &died)),
            [(Kind::Oom, 1), (Kind::State, 0)]
        );
        let crashed = sb(S::Failed, 0, "the sandbox's runtime exited");
        assert_eq!(kinds(&events(Some(&running), &crashed)), [(Kind::State, 0)]);
    }
}
