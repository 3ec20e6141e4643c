//! The execd streaming event format.
//!
//! Every frame is one JSON object followed by `"\n\n"` (execd writes bare JSON
//! objects, not `data:` lines; the SDK accepts both). `timestamp` (ms since the
//! epoch) is required by the SDK on every event.

use bytes::Bytes;
use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Init,
    Stdout,
    Stderr,
    Result,
    Error,
    ExecutionComplete,
    ExecutionCount,
    Status,
    Ping,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorInfo {
    pub ename: String,
    pub evalue: String,
    pub traceback: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StreamEvent {
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_time: Option<u64>,
    pub timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl StreamEvent {
    pub fn new(kind: EventType) -> Self {
        StreamEvent {
            kind,
            text: None,
            execution_count: None,
            execution_time: None,
            timestamp: now_ms(),
            error: None,
        }
    }
    pub fn with_text(kind: EventType, text: impl Into<String>) -> Self {
        StreamEvent {
            text: Some(text.into()),
            ..Self::new(kind)
        }
    }
    pub fn init(id: &str) -> Self {
        Self::with_text(EventType::Init, id)
    }
    pub fn ping() -> Self {
        Self::with_text(EventType::Ping, "pong")
    }
    pub fn complete(elapsed_ms: u64) -> Self {
        StreamEvent {
            execution_time: Some(elapsed_ms),
            ..Self::new(EventType::ExecutionComplete)
        }
    }
    /// A non-zero exit: execd reports it as an `error` event whose `evalue` is
    /// the exit code; no `execution_complete` follows.
    pub fn exit_error(exit_code: i32, detail: &str) -> Self {
        StreamEvent {
            error: Some(ErrorInfo {
                ename: "CommandExecError".into(),
                evalue: exit_code.to_string(),
                traceback: if detail.is_empty() {
                    vec![]
                } else {
                    vec![detail.to_string()]
                },
            }),
            ..Self::new(EventType::Error)
        }
    }
    /// A failure to run at all (spawn error, bad cwd, ...).
    pub fn runtime_error(ename: &str, message: &str) -> Self {
        StreamEvent {
            error: Some(ErrorInfo {
                ename: ename.into(),
                evalue: message.into(),
                traceback: vec![],
            }),
            ..Self::new(EventType::Error)
        }
    }

    /// The wire frame: compact JSON + blank line.
    pub fn frame(&self) -> Bytes {
        // Serializing this struct cannot fail: every field is a plain value.
        let mut v = serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec());
        v.extend_from_slice(b"\n\n");
        Bytes::from(v)
    }
}

/// Splits a byte stream into text events: whole lines as soon as they are
/// complete, and a pending partial line when [`LineSplitter::flush_partial`] is
/// called (e.g. after a short quiet period) or when it grows past `max_pending`.
/// Never splits a UTF-8 sequence; invalid bytes become U+FFFD.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max_pending: usize,
}

impl LineSplitter {
    pub fn new(max_pending: usize) -> Self {
        LineSplitter {
            pending: Vec::new(),
            max_pending: max_pending.max(4),
        }
    }

    /// Feed a chunk; returns the complete lines (with their `\n`).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        if let Some(last_nl) = self.pending.iter().rposition(|&b| b == b'\n') {
            let rest = self.pending.split_off(last_nl + 1);
            let full = std::mem::replace(&mut self.pending, rest);
            for line in full.split_inclusive(|&b| b == b'\n') {
                out.push(String::from_utf8_lossy(line).into_owned());
            }
        }
        while self.pending.len() >= self.max_pending {
            let cut = match utf8_boundary(&self.pending, self.max_pending) {
                0 => self.max_pending,
                c => c,
            };
            let rest = self.pending.split_off(cut);
            let head = std::mem::replace(&mut self.pending, rest);
            out.push(String::from_utf8_lossy(&head).into_owned());
        }
        out
    }

    /// Take the incomplete tail, up to the last complete UTF-8 sequence.
    pub fn flush_partial(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let cut = utf8_boundary(&self.pending, self.pending.len());
        if cut == 0 {
            return None;
        }
        let rest = self.pending.split_off(cut);
        let head = std::mem::replace(&mut self.pending, rest);
        Some(String::from_utf8_lossy(&head).into_owned())
    }

    /// Everything left at end of stream.
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let all = std::mem::take(&mut self.pending);
        Some(String::from_utf8_lossy(&all).into_owned())
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Largest index `<= limit` that does not cut a UTF-8 sequence in `buf`
/// (falls back to `limit` when the bytes are not UTF-8 anyway).
fn utf8_boundary(buf: &[u8], limit: usize) -> usize {
    let limit = limit.min(buf.len());
    match std::str::from_utf8(&buf[..limit]) {
        Ok(_) => limit,
        // an incomplete sequence at the end: stop before it
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_bare_json_and_blank_line() {
        let f = StreamEvent::init("abc").frame();
        let s = std::str::from_utf8(&f).unwrap();
        assert!(s.ends_with("}\n\n"));
        let v: serde_json::Value = serde_json::from_str(s.trim_end()).unwrap();
        assert_eq!(v["type"], "init");
        assert_eq!(v["text"], "abc");
        assert!(v["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
        assert!(v.get("error").is_none(), "absent fields are omitted");
    }

    #[test]
    fn exit_error_carries_exit_code_in_evalue() {
        let v: serde_json::Value =
            serde_json::from_slice(StreamEvent::exit_error(3, "").frame().trim_ascii_end())
                .unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["ename"], "CommandExecError");
        assert_eq!(v["error"]["evalue"], "3");
        assert_eq!(v["error"]["traceback"], serde_json::json!([]));
    }

    #[test]
    fn complete_and_ping_shapes() {
        let v: serde_json::Value =
            serde_json::from_slice(StreamEvent::complete(12).frame().trim_ascii_end()).unwrap();
        assert_eq!(v["type"], "execution_complete");
        assert_eq!(v["execution_time"], 12);
        let v: serde_json::Value =
            serde_json::from_slice(StreamEvent::ping().frame().trim_ascii_end()).unwrap();
        assert_eq!(v["type"], "ping");
    }

    #[test]
    fn splitter_emits_whole_lines_and_keeps_partial() {
        let mut s = LineSplitter::new(1024);
        assert_eq!(s.push(b"a\nb"), vec!["a\n"]);
        assert!(s.has_pending());
        assert_eq!(s.push(b"c\nd\n"), vec!["bc\n", "d\n"]);
        assert!(!s.has_pending());
        assert_eq!(s.push(b"tail"), Vec::<String>::new());
        assert_eq!(s.flush_partial().as_deref(), Some("tail"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn splitter_never_cuts_utf8() {
        let mut s = LineSplitter::new(1024);
        let euro = "€".as_bytes(); // 3 bytes
        assert!(s.push(&euro[..2]).is_empty());
        assert_eq!(
            s.flush_partial(),
            None,
            "an incomplete sequence is held back"
        );
        assert_eq!(s.push(&euro[2..]), Vec::<String>::new());
        assert_eq!(s.flush_partial().as_deref(), Some("€"));
    }

    #[test]
    fn splitter_bounds_pending_memory() {
        let mut s = LineSplitter::new(8);
        let out = s.push(&[b'x'; 20]);
        assert_eq!(out, vec!["xxxxxxxx", "xxxxxxxx"]);
        assert_eq!(s.finish().as_deref(), Some("xxxx"));
    }

    proptest::proptest! {
        #[test]
        fn splitter_preserves_bytes_of_utf8(input in "\\PC{0,200}", cuts in proptest::collection::vec(0usize..200, 0..6)) {
            let bytes = input.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.push(bytes.len());
            cuts.sort();
            let mut s = LineSplitter::new(16);
            let mut out = String::new();
            let mut prev = 0;
            for c in cuts {
                for l in s.push(&bytes[prev..c]) { out.push_str(&l); }
                if let Some(p) = s.flush_partial() { out.push_str(&p); }
                prev = c;
            }
            if let Some(r) = s.finish() { out.push_str(&r); }
            proptest::prop_assert_eq!(out, input);
        }
    }
}
