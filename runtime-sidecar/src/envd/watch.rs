//! Directory watching with inotify: the `WatchDir` stream and the polled
//! `CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher` trio.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{Json, body::Body, extract::State, http::HeaderMap};
use bytes::Bytes;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{
    EnvdState,
    connect::{
        CResult, ConnectError, Streamed, deadline, deadline_exceeded, envelope, keepalive,
        stream_response, until,
    },
    filesystem::{entry_info, path_of},
    messages::{PathRequest, WatcherRequest},
    required,
    responses::{CreateWatcherResponse, Empty, FilesystemEvent, WatchEvent, WatcherEventsResponse},
    streamed, unary,
};
use crate::{error::RuntimeError, files};

/// A polled watcher (`CreateWatcher`): events buffered until fetched.
pub(super) struct Watcher {
    events: Arc<Mutex<std::collections::VecDeque<FilesystemEvent>>>,
    watch: Arc<Mutex<Watch>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

pub(super) const MAX_BUFFERED_EVENTS: usize = 10_000;

/// A place among the open `WatchDir` streams, given back on drop.
struct StreamSlot(Arc<std::sync::atomic::AtomicUsize>);

impl StreamSlot {
    fn take(open: &Arc<std::sync::atomic::AtomicUsize>, max: usize) -> CResult<Self> {
        use std::sync::atomic::Ordering::SeqCst;
        open.fetch_update(SeqCst, SeqCst, |n| (n < max).then_some(n + 1))
            .map_err(|n| {
                ConnectError::new(
                    "resource_exhausted",
                    format!("too many WatchDir streams: {n} of {max} open; close one first"),
                )
            })?;
        Ok(StreamSlot(open.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn too_many_watchers(n: usize, max: usize) -> ConnectError {
    ConnectError::new(
        "resource_exhausted",
        format!("too many watchers: {n} of {max} in use; remove one (RemoveWatcher) first"),
    )
}

type Dirs = HashMap<WatchDescriptor, PathBuf>;

/// Where a watch's events go; it returns false once nobody listens.
type Sink = Box<dyn FnMut(FilesystemEvent) -> bool + Send>;

/// The inotify events a watch asks for.
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
}

/// Most renames from upload staging files remembered while their `MOVED_TO`
/// is awaited.
const MAX_STAGED_MOVES: usize = 1024;

/// What one [`Watch::drain`] found.
#[derive(Debug, PartialEq, Eq)]
enum Drained {
    /// Events were read; more may be queued.
    Some,
    /// Nothing was queued.
    Empty,
    /// The sink is gone or the inotify fd failed: the watch is over.
    Done,
}

/// One inotify watch of a directory (and, when `recursive`, every directory
/// below it, new ones included): read by its thread and, for polled
/// watchers, on demand, so a `GetWatcherEvents` right after a change sees it.
pub(super) struct Watch {
    ino: Inotify,
    dirs: Dirs,
    base: PathBuf,
    recursive: bool,
    /// Whether create/write/chmod events carry the entry's `EntryInfo`.
    include_entry: bool,
    /// Cookies of renames whose source was an upload's staging file.
    staged_moves: HashSet<u32>,
    sink: Sink,
}

impl Watch {
    fn new(args: &WatchArgs, sink: Sink) -> crate::Result<Self> {
        let root = args.path.as_str();
        let recursive = args.recursive;
        let md = std::fs::metadata(root).map_err(|e| RuntimeError::io(root, e))?;
        if !md.is_dir() {
            return Err(RuntimeError::NotADirectory(root.to_string()));
        }
        if !args.allow_network_mounts
            && let Some(fs) = network_fs(Path::new(root))
        {
            return Err(RuntimeError::InvalidRequest(format!(
                "{root} is on a network file system ({fs}), where watch events may be \
                 unreliable or missing: set allow_network_mounts to watch it anyway"
            )));
        }
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| RuntimeError::failed("inotify", e))?;
        let mut w = Watch {
            ino,
            dirs: HashMap::new(),
            base: PathBuf::from(root),
            recursive,
            include_entry: args.include_entry,
            staged_moves: HashSet::new(),
            sink,
        };
        w.add(&w.base.clone());
        if recursive {
            for e in walkdir::WalkDir::new(&w.base)
                .min_depth(1)
                .into_iter()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_dir())
            {
                w.add(e.path());
            }
        }
        Ok(w)
    }

    fn add(&mut self, dir: &Path) {
        if let Ok(wd) = self.ino.add_watch(dir, mask()) {
            let rel = dir.strip_prefix(&self.base).unwrap_or(Path::new(""));
            self.dirs.insert(wd, rel.to_path_buf());
        }
    }

    /// Hand every event queued now to the sink.
    fn drain(&mut self) -> Drained {
        match self.ino.read_events() {
            Ok(events) => {
                for ev in events {
                    if !self.handle(ev) {
                        return Drained::Done;
                    }
                }
                Drained::Some
            }
            Err(nix::errno::Errno::EAGAIN) => Drained::Empty,
            Err(_) => Drained::Done,
        }
    }

    /// One inotify event as E2B events (false once the sink is gone). An
    /// upload's staging file is never reported: its rename onto the target
    /// is, as the create and write of the target that E2B's in-place write makes.
    fn handle(&mut self, ev: InotifyEvent) -> bool {
        use AddWatchFlags as F;
        let Some(name) = ev.name.as_ref().map(|n| n.to_string_lossy().into_owned()) else {
            return true;
        };
        let rel = self
            .dirs
            .get(&ev.wd)
            .cloned()
            .unwrap_or_default()
            .join(&name);
        if self.recursive && ev.mask.contains(F::IN_CREATE) && ev.mask.contains(F::IN_ISDIR) {
            return self.adopt_new_dir(&rel);
        }
        if crate::upload::is_staging_name(&name) {
            if ev.mask.contains(F::IN_MOVED_FROM) {
                if self.staged_moves.len() >= MAX_STAGED_MOVES {
                    self.staged_moves.clear();
                }
                self.staged_moves.insert(ev.cookie);
            }
            return true;
        }
        let name = rel.to_string_lossy().into_owned();
        if ev.mask.contains(F::IN_MOVED_TO) && self.staged_moves.remove(&ev.cookie) {
            // E2B's envd creates the file, chowns it to the user, then writes
            return ["EVENT_TYPE_CREATE", "EVENT_TYPE_CHMOD", "EVENT_TYPE_WRITE"]
                .into_iter()
                .all(|kind| {
                    let ev = self.event(&rel, name.clone(), kind);
                    (self.sink)(ev)
                });
        }
        let kind = if ev.mask.intersects(F::IN_CREATE | F::IN_MOVED_TO) {
            "EVENT_TYPE_CREATE"
        } else if ev.mask.intersects(F::IN_MODIFY | F::IN_CLOSE_WRITE) {
            "EVENT_TYPE_WRITE"
        } else if ev.mask.contains(F::IN_DELETE) {
            "EVENT_TYPE_REMOVE"
        } else if ev.mask.contains(F::IN_MOVED_FROM) {
            "EVENT_TYPE_RENAME"
        } else if ev.mask.contains(F::IN_ATTRIB) {
            "EVENT_TYPE_CHMOD"
        } else {
            return true;
        };
        let ev = self.event(&rel, name, kind);
        (self.sink)(ev)
    }

    /// A directory created below a recursive watch: reported, then watched,
    /// and what already appeared in it before its watch was added (its
    /// creator may have gone on before this thread read the event) is
    /// reported as created, and files with content as written, so no change
    /// in it is missed. False once the sink is gone.
    fn adopt_new_dir(&mut self, rel: &Path) -> bool {
        let ev = self.event(rel, rel.to_string_lossy().into_owned(), "EVENT_TYPE_CREATE");
        if !(self.sink)(ev) {
            return false;
        }
        let dir = self.base.join(rel);
        self.add(&dir);
        for e in walkdir::WalkDir::new(&dir)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .filter_map(|e| e.ok())
        {
            let Ok(inner) = e.path().strip_prefix(&self.base).map(Path::to_path_buf) else {
                continue;
            };
            if crate::upload::is_staging_name(&e.file_name().to_string_lossy()) {
                continue;
            }
            let name = inner.to_string_lossy().into_owned();
            let written = e.file_type().is_file() && e.metadata().is_ok_and(|m| m.len() > 0);
            if e.file_type().is_dir() {
                self.add(e.path());
            }
            let kinds: &[&'static str] = if written {
                &["EVENT_TYPE_CREATE", "EVENT_TYPE_WRITE"]
            } else {
                &["EVENT_TYPE_CREATE"]
            };
            for kind in kinds {
                let ev = self.event(&inner, name.clone(), kind);
                if !(self.sink)(ev) {
                    return false;
                }
            }
        }
        true
    }

    /// The event `kind` on `rel` (below the watched directory), with the
    /// entry's `EntryInfo` when asked for and there is something to stat:
    /// a remove or rename-away leaves nothing (or a replacement) at the path.
    fn event(&self, rel: &Path, name: String, kind: &'static str) -> FilesystemEvent {
        let stat_able = matches!(
            kind,
            "EVENT_TYPE_CREATE" | "EVENT_TYPE_WRITE" | "EVENT_TYPE_CHMOD"
        );
        let entry = (self.include_entry && stat_able)
            .then(|| files::stat(&self.base.join(rel).to_string_lossy()).ok())
            .flatten()
            .map(|i| entry_info(&i));
        FilesystemEvent { entry, name, kind }
    }
}

/// What a `WatchDir`/`CreateWatcher` request asks to watch.
pub(super) struct WatchArgs {
    pub path: String,
    pub recursive: bool,
    pub include_entry: bool,
    pub allow_network_mounts: bool,
}

/// The network file system (NFS, CIFS, SMB, FUSE) `dir` is on, if it is on
/// one (by `statfs`'s magic number). envd 0.6.4 refuses to watch those
/// unless asked to: inotify misses changes made by other clients there.
pub(super) fn network_fs(dir: &Path) -> Option<&'static str> {
    let magic = nix::sys::statfs::statfs(dir).ok()?.filesystem_type().0 as u64;
    network_fs_name(magic)
}

fn network_fs_name(magic: u64) -> Option<&'static str> {
    match magic {
        0x6969 => Some("nfs"),
        0xFF53_4D42 => Some("cifs"),
        0xFE53_4D42 => Some("smb2"),
        0x517B => Some("smb"),
        0x6573_5546 => Some("fuse"),
        _ => None,
    }
}

/// Watch `root` with inotify on a thread (polling every 25 ms); `sink` gets
/// E2B `FilesystemEvent`s until `stop` is set or it returns false. The watch
/// is also the caller's, to drain on demand.
pub(super) fn spawn_watch(
    args: &WatchArgs,
    stop: Arc<std::sync::atomic::AtomicBool>,
    sink: impl FnMut(FilesystemEvent) -> bool + Send + 'static,
) -> crate::Result<Arc<Mutex<Watch>>> {
    let watch = Arc::new(Mutex::new(Watch::new(args, Box::new(sink))?));
    let w = watch.clone();
    std::thread::spawn(move || {
        use std::sync::atomic::Ordering;
        while !stop.load(Ordering::Relaxed) {
            let drained = w.lock().drain();
            match drained {
                Drained::Some => {}
                Drained::Empty => std::thread::sleep(Duration::from_millis(25)),
                Drained::Done => return,
            }
        }
    });
    Ok(watch)
}

pub(super) fn watch_args(st: &EnvdState, req: &PathRequest) -> CResult<WatchArgs> {
    Ok(WatchArgs {
        path: path_of(st, req)?,
        recursive: req.recursive,
        include_entry: req.include_entry,
        allow_network_mounts: req.allow_network_mounts,
    })
}

/// `filesystem.Filesystem/WatchDir`: a stream of events while the client
/// listens, until its deadline (`deadline_exceeded`, as E2B's envd).
pub(super) async fn watch_dir(
    State(st): State<EnvdState>,
    headers: HeaderMap,
    body: Body,
) -> Streamed {
    let args = watch_args(&st, &streamed(&st, body).await?)?;
    let slot = StreamSlot::take(&st.envd.watch_streams, st.app.cfg.max_watchers)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (etx, mut erx) = mpsc::channel::<FilesystemEvent>(256);
    spawn_watch(&args, stop.clone(), move |ev| etx.blocking_send(ev).is_ok())?;
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let every = keepalive(&headers);
    let deadline = deadline(&headers);
    tokio::spawn(async move {
        let _stop_on_exit = StopOnDrop(stop);
        let _slot = slot;
        // `WatchDirResponse` is itself the oneof: `{"start":{}}`, not `{"event":...}`
        if tx.send(envelope(0, &WatchEvent::Start {})).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            let msg = tokio::select! {
                biased;
                _ = until(deadline) => {
                    let _ = tx.send(deadline_exceeded()).await;
                    return;
                }
                ev = erx.recv() => match ev {
                    Some(ev) => WatchEvent::Filesystem(Box::new(ev)),
                    None => return,
                },
                _ = tick.tick() => WatchEvent::Keepalive {},
            };
            if tx.send(envelope(0, &msg)).await.is_err() {
                return;
            }
        }
    });
    Ok(stream_response(rx))
}

pub(super) struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

pub(super) async fn create_watcher(
    State(st): State<EnvdState>,
    body: Body,
) -> CResult<Json<CreateWatcherResponse>> {
    let args = watch_args(&st, &unary(&st, body).await?)?;
    let max = st.app.cfg.max_watchers;
    let n = st.envd.watchers.lock().len();
    if n >= max {
        return Err(too_many_watchers(n, max));
    }
    let events = Arc::new(Mutex::new(std::collections::VecDeque::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sink_events = events.clone();
    let watch = spawn_watch(&args, stop.clone(), move |ev| {
        let mut q = sink_events.lock();
        if q.len() >= MAX_BUFFERED_EVENTS {
            q.pop_front();
        }
        q.push_back(ev);
        true
    })?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let watcher = Watcher {
        events,
        watch,
        stop,
    };
    let mut g = st.envd.watchers.lock();
    if g.len() >= max {
        // a concurrent create took the last place; dropping stops this one
        return Err(too_many_watchers(g.len(), max));
    }
    g.insert(id.clone(), watcher);
    drop(g);
    Ok(Json(CreateWatcherResponse { watcher_id: id }))
}

pub(super) fn watcher_id(req: WatcherRequest) -> CResult<String> {
    required(req.watcher_id, "watcherId")
}

pub(super) async fn get_watcher_events(
    State(st): State<EnvdState>,
    body: Body,
) -> CResult<Json<WatcherEventsResponse>> {
    let id = watcher_id(unary(&st, body).await?)?;
    let g = st.envd.watchers.lock();
    let w = g
        .get(&id)
        .ok_or_else(|| ConnectError::new("not_found", format!("watcher {id} not found")))?;
    // what the kernel queued up to now (the thread polls only every 25 ms)
    let mut watch = w.watch.lock();
    for _ in 0..64 {
        if watch.drain() != Drained::Some {
            break;
        }
    }
    drop(watch);
    let events = w.events.lock().drain(..).collect();
    Ok(Json(WatcherEventsResponse { events }))
}

pub(super) async fn remove_watcher(
    State(st): State<EnvdState>,
    body: Body,
) -> CResult<Json<Empty>> {
    let id = watcher_id(unary(&st, body).await?)?;
    st.envd
        .watchers
        .lock()
        .remove(&id)
        .ok_or_else(|| ConnectError::new("not_found", format!("watcher {id} not found")))?;
    Ok(Json(Empty {}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_file_systems_are_named_by_their_magic() {
        assert_eq!(network_fs_name(0x6969), Some("nfs"));
        assert_eq!(network_fs_name(0xFF53_4D42), Some("cifs"));
        assert_eq!(network_fs_name(0x6573_5546), Some("fuse"));
        // ext4, tmpfs, overlayfs are local
        for local in [0xEF53, 0x0102_1994, 0x794C_7630] {
            assert_eq!(network_fs_name(local), None);
        }
    }

    #[test]
    fn a_local_directory_is_not_a_network_mount() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(network_fs(dir.path()), None);
    }
}
