//! Waiting on the apiserver by watch rounds: read the state, and if it is
//! not there yet watch from the read's resourceVersion until something
//! changes, then read again, until a deadline. Serves a claim's wait for
//! its pod ([`super::KubeScheduler::wait_ready`]) and a checkpoint's wait
//! for its snapshot's commit.

use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, WatchEvent, WatchParams};
use tokio::time::Instant;
use tonic::Status;

/// Pause before watching again after a watch failed or ended with no change.
pub(super) const WATCH_RETRY: Duration = Duration::from_millis(200);

/// What one read of a wait found.
pub(super) enum Round<T, W> {
    /// What the wait waited for.
    Done(T),
    /// Not yet: watch with this (e.g. a selector and a resourceVersion).
    Watch(W),
}

/// Read with `read` until it is [`Round::Done`] or `timeout` passes
/// (`Ok(None)`). Between reads, `watch` (given the last read's
/// [`Round::Watch`]) waits for a change for at most `poll`, a safety net
/// for a watch that stays open but quiet; a watch that fails or ends with
/// no change is retried after [`WATCH_RETRY`] (at most `poll`), never in a
/// spin. A read's error ends the wait.
pub(super) async fn rounds<T, W, R, V>(
    timeout: Duration,
    poll: Duration,
    mut read: impl FnMut() -> R,
    mut watch: impl FnMut(W) -> V,
) -> Result<Option<T>, Status>
where
    R: Future<Output = Result<Round<T, W>, Status>>,
    V: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let w = match read().await? {
            Round::Done(t) => return Ok(Some(t)),
            Round::Watch(w) => w,
        };
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let round_end = deadline.min(now + poll);
        let changed = tokio::time::timeout_at(round_end, watch(w))
            .await
            .unwrap_or(true);
        if !changed {
            tokio::time::sleep_until(round_end.min(now + poll.min(WATCH_RETRY))).await;
        }
    }
}

/// Watch the objects `params` pick through `api` from `rv` until one
/// changes (true), or the watch fails or ends first (false).
pub(super) async fn changed<K>(api: &Api<K>, params: &WatchParams, rv: &str) -> bool
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Ok(events) = api.watch(params, rv).await else {
        return false;
    };
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Deleted(_)) => {
                return true;
            }
            Ok(WatchEvent::Bookmark(_)) => {}
            // e.g. 410 Gone: read again
            Ok(WatchEvent::Error(_)) | Err(_) => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rounds_read_again_after_each_watch_and_end_at_the_deadline() {
        let reads = std::sync::atomic::AtomicU32::new(0);
        let got = rounds(
            Duration::from_secs(60),
            Duration::from_secs(1),
            || async {
                let n = reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                Ok(if n == 3 {
                    Round::Done(n)
                } else {
                    Round::Watch(n)
                })
            },
            |_| async { true },
        )
        .await
        .expect("no error");
        assert_eq!(got, Some(3));
        let watched = std::sync::Mutex::new(Vec::new());
        let none: Option<()> = rounds(
            Duration::from_secs(2),
            Duration::from_secs(1),
            || async { Ok(Round::Watch("rv")) },
            |rv| {
                watched.lock().expect("lock").push(rv);
                async { false }
            },
        )
        .await
        .expect("no error");
        assert!(none.is_none());
        // failed watches are retried after WATCH_RETRY, not in a spin
        let watched = watched.lock().expect("lock").len();
        assert!(watched > 0 && watched <= 11, "{watched}");
        let e = rounds(
            Duration::from_secs(2),
            Duration::from_secs(1),
            || async { Err::<Round<(), ()>, _>(Status::not_found("gone")) },
            |_| async { true },
        )
        .await
        .expect_err("a read's error");
        assert_eq!(e.code(), tonic::Code::NotFound);
    }
}
