//! Typed response messages of envd's `process.Process` and
//! `filesystem.Filesystem` services in proto3 JSON (lowerCamelCase names,
//! enums by name, absent optional fields left out).
//!
//! Fields are declared in the order of their JSON names: the answers stay
//! byte-identical to the `serde_json::Value` objects (sorted keys) they
//! replace, which the SDK tests were written against.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// A stream message `{"event": ...}`.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Event<E> {
    pub event: E,
}

/// `process.ProcessEvent`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) enum ProcessEvent {
    Start { pid: u32 },
    Data(DataOut),
    End(EndEvent),
    Keepalive {},
}

/// `process.ProcessEvent.DataEvent`: base64 output bytes.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) enum DataOut {
    Stdout(String),
    Stderr(String),
    Pty(String),
}

/// `process.ProcessEvent.EndEvent`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EndEvent {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub exit_code: i32,
    pub exited: bool,
    pub status: String,
}

impl Event<ProcessEvent> {
    /// Whether this is the process's last event.
    pub fn is_end(&self) -> bool {
        matches!(self.event, ProcessEvent::End(_))
    }

    /// Whether this is the end of a process killed at its deadline.
    pub fn timed_out(&self) -> bool {
        matches!(&self.event, ProcessEvent::End(e) if e.error.as_deref() == Some("timed out"))
    }
}

/// `process.ProcessConfig` as `List` reports it (envs in key order).
#[derive(Debug, Serialize)]
pub(super) struct ProcessConfigOut<'a> {
    pub args: &'a [String],
    pub cmd: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<&'a str>,
    pub envs: BTreeMap<&'a str, &'a str>,
}

impl<'a> ProcessConfigOut<'a> {
    pub fn new(
        cmd: &'a str,
        args: &'a [String],
        envs: &'a HashMap<String, String>,
        cwd: Option<&'a str>,
    ) -> Self {
        ProcessConfigOut {
            args,
            cmd,
            cwd,
            envs: envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        }
    }
}

/// `process.ProcessInfo`.
#[derive(Debug, Serialize)]
pub(super) struct ProcessInfo<'a> {
    pub config: ProcessConfigOut<'a>,
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<&'a str>,
}

/// `process.ListResponse`.
#[derive(Debug, Serialize)]
pub(super) struct ListResponse<'a> {
    pub processes: Vec<ProcessInfo<'a>>,
}

/// An empty response message (`{}`).
#[derive(Debug, Serialize)]
pub(super) struct Empty {}

/// `filesystem.EntryInfo`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EntryInfo {
    pub group: String,
    /// Set when the entry itself is a symlink (`type` is then its target's).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub is_symlink: bool,
    /// `user.e2b.*` xattrs, prefix stripped.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    pub mode: u32,
    pub modified_time: String,
    pub name: String,
    pub owner: String,
    pub path: String,
    pub permissions: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// `StatResponse`, `MakeDirResponse`, `MoveResponse`.
#[derive(Debug, Serialize)]
pub(super) struct EntryResponse {
    pub entry: EntryInfo,
}

/// `filesystem.ListDirResponse`.
#[derive(Debug, Serialize)]
pub(super) struct ListDirResponse {
    pub entries: Vec<EntryInfo>,
}

/// `filesystem.FilesystemEvent`.
#[derive(Debug, Clone, Serialize)]
pub(super) struct FilesystemEvent {
    /// Present when the watch asked for entries (`include_entry`) and the
    /// event leaves something to stat (create, write, chmod).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// `filesystem.WatchDirResponse`: the message is the oneof, so a stream
/// message is `{"start":{}}` or `{"filesystem":{...}}` (no `event` wrapper,
/// unlike `process.StartResponse`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) enum WatchEvent {
    Start {},
    Filesystem(Box<FilesystemEvent>),
    Keepalive {},
}

/// `filesystem.CreateWatcherResponse`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CreateWatcherResponse {
    pub watcher_id: String,
}

/// `filesystem.GetWatcherEventsResponse`.
#[derive(Debug, Serialize)]
pub(super) struct WatcherEventsResponse {
    pub events: Vec<FilesystemEvent>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Byte-identical to the `json!` objects these types replaced.
    fn same<T: Serialize>(typed: &T, value: serde_json::Value) {
        assert_eq!(
            serde_json::to_string(typed).unwrap(),
            serde_json::to_string(&value).unwrap()
        );
    }

    #[test]
    fn responses_serialize_as_the_objects_they_replace() {
        same(
            &Event {
                event: ProcessEvent::Start { pid: 7 },
            },
            json!({"event": {"start": {"pid": 7}}}),
        );
        same(
            &Event {
                event: ProcessEvent::Data(DataOut::Stderr("aGk=".into())),
            },
            json!({"event": {"data": {"stderr": "aGk="}}}),
        );
        same(
            &Event {
                event: ProcessEvent::End(EndEvent {
                    error: Some("timed out".into()),
                    exit_code: 137,
                    exited: false,
                    status: "signal: killed".into(),
                }),
            },
            json!({"event": {"end": {"exitCode": 137, "exited": false,
                "status": "signal: killed", "error": "timed out"}}}),
        );
        same(
            &Event {
                event: ProcessEvent::Keepalive {},
            },
            json!({"event": {"keepalive": {}}}),
        );
        let envs: HashMap<String, String> =
            [("B".into(), "2".into()), ("A".into(), "1".into())].into();
        let args = vec!["-l".to_string()];
        same(
            &ListResponse {
                processes: vec![ProcessInfo {
                    config: ProcessConfigOut::new("ls", &args, &envs, Some("/tmp")),
                    pid: 3,
                    tag: Some("t"),
                }],
            },
            json!({"processes": [{"config": {"cmd": "ls", "args": ["-l"], "envs": envs,
                "cwd": "/tmp"}, "pid": 3, "tag": "t"}]}),
        );
        same(
            &EntryResponse {
                entry: EntryInfo {
                    group: "g".into(),
                    is_symlink: false,
                    metadata: BTreeMap::new(),
                    mode: 0o644,
                    modified_time: "2026-01-01T00:00:00Z".into(),
                    name: "f".into(),
                    owner: "o".into(),
                    path: "/f".into(),
                    permissions: "-rw-r--r--".into(),
                    size: 2,
                    symlink_target: Some("/g".into()),
                    kind: "FILE_TYPE_SYMLINK",
                },
            },
            json!({"entry": {"name": "f", "type": "FILE_TYPE_SYMLINK", "path": "/f", "size": 2,
                "mode": 0o644, "permissions": "-rw-r--r--", "owner": "o", "group": "g",
                "modifiedTime": "2026-01-01T00:00:00Z", "symlinkTarget": "/g"}}),
        );
        let fs_ev = FilesystemEvent {
            entry: None,
            name: "a/b".into(),
            kind: "EVENT_TYPE_CREATE",
        };
        same(
            &WatchEvent::Filesystem(Box::new(fs_ev.clone())),
            json!({"filesystem": {"name": "a/b", "type": "EVENT_TYPE_CREATE"}}),
        );
        same(&WatchEvent::Start {}, json!({"start": {}}));
        same(&WatchEvent::Keepalive {}, json!({"keepalive": {}}));
        same(
            &WatcherEventsResponse {
                events: vec![fs_ev],
            },
            json!({"events": [{"name": "a/b", "type": "EVENT_TYPE_CREATE"}]}),
        );
        same(
            &CreateWatcherResponse {
                watcher_id: "w".into(),
            },
            json!({"watcherId": "w"}),
        );
        same(&Empty {}, json!({}));
    }
}
