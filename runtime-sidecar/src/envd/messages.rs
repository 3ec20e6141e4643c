//! Typed request messages of envd's `process.Process` and
//! `filesystem.Filesystem` services, read with the proto3 JSON mapping:
//! lowerCamelCase names with the original proto field names accepted too,
//! missing (or `null`) fields take their defaults, 32- and 64-bit integers
//! come as numbers or decimal strings, enums by name (or number), unknown
//! fields are ignored. Presence matters for a few fields (a `oneof` member,
//! `optional` fields), so those are `Option`s.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A proto3 JSON integer: a number or a decimal string.
#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    Uint(u64),
    Str(String),
}

/// `uint32`: a non-negative number or a decimal string that fits.
fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    use serde::de::Error;
    let n = match Option::<IntOrString>::deserialize(d)? {
        None => return Ok(None),
        Some(IntOrString::Int(n)) => i128::from(n),
        Some(IntOrString::Uint(n)) => i128::from(n),
        Some(IntOrString::Str(s)) => s
            .trim()
            .parse::<i128>()
            .map_err(|_| D::Error::custom(format!("{s:?} is not an integer")))?,
    };
    u32::try_from(n)
        .map(Some)
        .map_err(|_| D::Error::custom(format!("{n} is out of range for uint32")))
}

/// `null` reads as the type's default, as proto3 JSON parsers do.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `process.ProcessConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct ProcessConfig {
    #[serde(deserialize_with = "null_default")]
    pub cmd: String,
    #[serde(deserialize_with = "null_default")]
    pub args: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub envs: HashMap<String, String>,
    pub cwd: Option<String>,
}

/// `process.PTY.Size`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct PtySizeIn {
    #[serde(deserialize_with = "opt_u32")]
    pub cols: Option<u32>,
    #[serde(deserialize_with = "opt_u32")]
    pub rows: Option<u32>,
}

/// `process.PTY`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct PtyIn {
    pub size: Option<PtySizeIn>,
}

impl PtyIn {
    /// The requested size; missing numbers are 0, as in proto3.
    pub fn size(&self) -> crate::pty::PtySize {
        let s = self.size.as_ref();
        crate::pty::PtySize::new(
            s.and_then(|s| s.cols).unwrap_or(0),
            s.and_then(|s| s.rows).unwrap_or(0),
        )
    }
}

/// `process.StartRequest`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct StartRequest {
    pub process: Option<ProcessConfig>,
    /// Present asks for a PTY.
    pub pty: Option<PtyIn>,
    pub tag: Option<String>,
    pub stdin: Option<bool>,
}

/// `process.ProcessSelector` (`oneof selector { pid, tag }`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct ProcessSelector {
    #[serde(deserialize_with = "opt_u32")]
    pub pid: Option<u32>,
    pub tag: Option<String>,
}

/// Any request that selects a process: `ConnectRequest`,
/// `CloseStdinRequest`, `StreamInputRequest.StartEvent`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct SelectRequest {
    pub process: Option<ProcessSelector>,
}

/// `process.ProcessInput` (`oneof input { stdin, pty }`, base64 bytes).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct ProcessInput {
    pub stdin: Option<String>,
    pub pty: Option<String>,
}

/// `process.UpdateRequest`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct UpdateRequest {
    pub process: Option<ProcessSelector>,
    pub pty: Option<PtyIn>,
}

/// `process.SendInputRequest`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct SendInputRequest {
    pub process: Option<ProcessSelector>,
    pub input: Option<ProcessInput>,
}

/// `process.Signal`, by name or by number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum SignalValue {
    Name(String),
    Number(serde_json::Number),
}

/// `process.SendSignalRequest`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct SendSignalRequest {
    pub process: Option<ProcessSelector>,
    pub signal: Option<SignalValue>,
}

/// `process.StreamInputRequest.DataEvent`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct DataEvent {
    pub input: Option<ProcessInput>,
}

/// `process.StreamInputRequest` (`oneof event { start, data, keepalive }`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct StreamInputRequest {
    pub start: Option<SelectRequest>,
    pub data: Option<DataEvent>,
}

/// `filesystem.StatRequest`, `MakeDirRequest`, `RemoveRequest`,
/// `ListDirRequest` (with `depth`), `WatchDirRequest` and
/// `CreateWatcherRequest` (with `recursive`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct PathRequest {
    pub path: Option<String>,
    #[serde(deserialize_with = "opt_u32")]
    pub depth: Option<u32>,
    #[serde(deserialize_with = "null_default")]
    pub recursive: bool,
    /// `WatchDirRequest.include_entry`: each event carries its `EntryInfo`.
    #[serde(deserialize_with = "null_default")]
    pub include_entry: bool,
    /// `WatchDirRequest.allow_network_mounts` (envd 0.6.4): watch a
    /// directory on a network file system, refused by default.
    #[serde(deserialize_with = "null_default")]
    pub allow_network_mounts: bool,
}

/// `filesystem.MoveRequest`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct MoveRequest {
    pub source: Option<String>,
    pub destination: Option<String>,
}

/// `filesystem.GetWatcherEventsRequest`, `RemoveWatcherRequest`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct WatcherRequest {
    #[serde(alias = "watcher_id")]
    pub watcher_id: Option<String>,
}

/// `POST /init` (plain HTTP): default env vars; non-string values are skipped.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct InitRequest {
    #[serde(alias = "env_vars", deserialize_with = "null_default")]
    pub env_vars: HashMap<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto3_json_names_integers_and_nulls() {
        let r: StartRequest = serde_json::from_str(
            r#"{"process":{"cmd":"ls","args":null,"envs":{"A":"1"}},"tag":"t","stdin":true,"x":1}"#,
        )
        .unwrap();
        let p = r.process.unwrap();
        assert_eq!(
            (p.cmd.as_str(), p.args.len(), p.envs["A"].as_str()),
            ("ls", 0, "1")
        );
        assert_eq!(
            (r.tag.as_deref(), r.stdin, r.pty.is_some()),
            (Some("t"), Some(true), false)
        );
        let r: StartRequest = serde_json::from_str(r#"{"pty":{"size":{}}}"#).unwrap();
        assert!(r.process.is_none());
        assert_eq!(r.pty.unwrap().size(), crate::pty::PtySize::new(0, 0));
        let r: UpdateRequest =
            serde_json::from_str(r#"{"process":{"pid":3},"pty":{"size":{"cols":"80","rows":24}}}"#)
                .unwrap();
        assert_eq!(r.pty.unwrap().size(), crate::pty::PtySize::new(80, 24));

        for (json, pid) in [
            (r#"{"process":{"pid":7}}"#, Some(7)),
            (r#"{"process":{"pid":"7"}}"#, Some(7)),
            (r#"{"process":{"pid":null,"tag":"x"}}"#, None),
        ] {
            let s: SelectRequest = serde_json::from_str(json).unwrap();
            assert_eq!(s.process.unwrap().pid, pid, "{json}");
        }
        assert!(serde_json::from_str::<SelectRequest>(r#"{"process":{"pid":-1}}"#).is_err());
        assert!(serde_json::from_str::<SelectRequest>(r#"{"process":{"pid":"x"}}"#).is_err());

        let w: WatcherRequest = serde_json::from_str(r#"{"watcher_id":"a"}"#).unwrap();
        assert_eq!(w.watcher_id.as_deref(), Some("a"));
        let w: WatcherRequest = serde_json::from_str(r#"{"watcherId":"b"}"#).unwrap();
        assert_eq!(w.watcher_id.as_deref(), Some("b"));
        let i: InitRequest = serde_json::from_str(r#"{"env_vars":{"K":"v","N":1}}"#).unwrap();
        assert_eq!(i.env_vars.len(), 2);
        let p: PathRequest =
            serde_json::from_str(r#"{"path":"/x","depth":"3","recursive":null}"#).unwrap();
        assert_eq!(
            (p.path.as_deref(), p.depth, p.recursive),
            (Some("/x"), Some(3), false)
        );
    }
}
