//! One run of a piece of work per key at a time: whoever asks for a key
//! while its work is under way waits for that work's result instead of
//! starting its own.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use futures_util::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use parking_lot::Mutex;

type Work<T> = Shared<BoxFuture<'static, Option<T>>>;
/// Work under way by key, with the id of the run that started it.
type Inflight<T> = Arc<Mutex<HashMap<String, (u64, Work<T>)>>>;

/// In-flight work by key. The work runs as its own task, so a caller that
/// gives up does not abort it for the others; the task forgets its key
/// when it ends, so a later run starts afresh.
pub struct Coalescer<T: Clone + Send + Sync + 'static> {
    inflight: Inflight<T>,
    next: AtomicU64,
}

impl<T: Clone + Send + Sync + 'static> Default for Coalescer<T> {
    fn default() -> Self {
        Coalescer {
            inflight: Arc::new(Mutex::new(HashMap::new())),
            next: AtomicU64::new(0),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Coalescer<T> {
    /// The result of the work for `key`: started with `make` unless work
    /// for `key` is under way. `None` only if the work panicked. The flag
    /// says whether this call joined work already under way.
    pub async fn run<F, Fut>(&self, key: &str, make: F) -> (T, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (fut, joined) = {
            let mut m = self.inflight.lock();
            match m.get(key) {
                Some((_, f)) => (f.clone(), true),
                None => {
                    let id = self.next.fetch_add(1, Ordering::Relaxed);
                    let (work, map, k) = (make(), self.inflight.clone(), key.to_string());
                    let task = tokio::spawn(async move {
                        let v = work.await;
                        let mut m = map.lock();
                        if m.get(&k).is_some_and(|(i, _)| *i == id) {
                            m.remove(&k);
                        }
                        v
                    });
                    let f = async move { task.await.ok() }.boxed().shared();
                    m.insert(key.to_string(), (id, f.clone()));
                    (f, false)
                }
            }
        };
        match fut.await {
            Some(v) => (v, joined),
            None => panic!("coalesced work for {key} panicked"),
        }
    }

    /// Keys with work under way.
    pub fn inflight(&self) -> usize {
        self.inflight.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use super::*;

    #[tokio::test]
    async fn concurrent_runs_of_one_key_share_one_fetch() {
        let c = Arc::new(Coalescer::<String>::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let (go_tx, go_rx) = tokio::sync::watch::channel(false);
        let mut calls = Vec::new();
        for _ in 0..5 {
            let (c, fetches, mut go) = (c.clone(), fetches.clone(), go_rx.clone());
            calls.push(tokio::spawn(async move {
                c.run("reg/app:1", move || async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let _ = go.wait_for(|g| *g).await;
                    "pulled".to_string()
                })
                .await
            }));
        }
        // every caller is waiting on the one fetch before it may finish
        while c.inflight() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        go_tx.send(true).unwrap();
        let mut joined = 0;
        for call in calls {
            let (v, j) = call.await.unwrap();
            assert_eq!(v, "pulled");
            joined += usize::from(j);
        }
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            1,
            "one fetch for five pulls"
        );
        assert_eq!(joined, 4);
        assert_eq!(c.inflight(), 0, "finished work is forgotten");
    }

    #[tokio::test]
    async fn runs_joined_in_one_task_share_one_fetch() {
        let c = Coalescer::<usize>::default();
        let n = Arc::new(AtomicUsize::new(0));
        let work = |n: Arc<AtomicUsize>| {
            move || async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                n.fetch_add(1, Ordering::SeqCst)
            }
        };
        let (a, b, d) = tokio::join!(
            c.run("k", work(n.clone())),
            c.run("k", work(n.clone())),
            c.run("k", work(n.clone()))
        );
        assert_eq!((a.0, b.0, d.0), (0, 0, 0));
        assert_eq!((a.1, b.1, d.1), (false, true, true));
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn other_keys_and_later_runs_fetch_again() {
        let c = Coalescer::<usize>::default();
        let n = Arc::new(AtomicUsize::new(0));
        let work = |n: Arc<AtomicUsize>| move || async move { n.fetch_add(1, Ordering::SeqCst) };
        let (a, b) = tokio::join!(c.run("a", work(n.clone())), c.run("b", work(n.clone())));
        assert!(!a.1 && !b.1, "different keys do not join");
        let (later, joined) = c.run("a", work(n.clone())).await;
        assert!(!joined);
        assert_eq!(
            later, 2,
            "a finished run is not reused: a later pull fetches again"
        );
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_does_not_abort_the_work() {
        let c = Arc::new(Coalescer::<u8>::default());
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let first = tokio::time::timeout(
            Duration::from_millis(20),
            c.run("k", move || async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                d.fetch_add(1, Ordering::SeqCst);
                7
            }),
        )
        .await;
        assert!(first.is_err(), "the first caller timed out");
        let (v, _) = c.run("k", || async { 9 }).await;
        assert_eq!(
            v, 7,
            "the second caller got the still-running work's result"
        );
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }
}
