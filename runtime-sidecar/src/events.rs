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
    /// A code cell's result: its MIME bundle (`text/plain` as `text`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<serde_json::Map<String, serde_json::Value>>,
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
            results: None,
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
    /// the exit code as Go gives it ([`go_exit_code`]: -1 when a signal ended
    /// the command) and whose traceback is Go's wording of the process state
    /// (`exit status N`, or `signal: killed` for a command ended by SIGKILL);
    /// no `execution_complete` follows.
    pub fn exit_error(exit_code: i32, signal: i32) -> Self {
        StreamEvent {
            error: Some(ErrorInfo {
                ename: "CommandExecError".into(),
                evalue: go_exit_code(exit_code, signal).to_string(),
                traceback: vec![process_state(exit_code, signal)],
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

/// How upstream execd (Go's `exec.ExitError`) words a failed command's end:
/// `exit status N`, or `signal: <name>` when a signal ended it.
pub fn process_state(exit_code: i32, signal: i32) -> String {
    if signal == 0 {
        format!("exit status {exit_code}")
    } else {
        format!("signal: {}", go_signal_name(signal))
    }
}

/// The exit code upstream execd reports (Go's `ExitCode()`): the process's
/// own, or -1 when a signal ended it.
pub fn go_exit_code(exit_code: i32, signal: i32) -> i32 {
    if signal == 0 { exit_code } else { -1 }
}

/// A signal's name as Go's `os/exec` prints it in `signal: <name>`.
fn go_signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "hangup",
        2 => "interrupt",
        3 => "quit",
        4 => "illegal instruction",
        5 => "trace/breakpoint trap",
        6 => "aborted",
        7 => "bus error",
        8 => "floating point exception",
        9 => "killed",
        10 => "user defined signal 1",
        11 => "segmentation fault",
        12 => "user defined signal 2",
        13 => "broken pipe",
        14 => "alarm clock",
        15 => "terminated",
        n => return format!("signal {n}"),
    };
    name.to_string()
}

/// Splits a byte stream into execd output events the way upstream execd does:
/// one event per line, without its line ending (`\n`, `\r` and `\r\n` each
/// end a line; a `\r\n` pair counts once, also across chunks). A blank line
/// is the event `"\n"`. An unterminated last line is held until
/// [`LineSplitter::finish`] (upstream sends it only at exit); only a line
/// longer than `max_pending` is cut early, at a UTF-8 boundary, so memory
/// stays bounded. Invalid UTF-8 becomes U+FFFD.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max_pending: usize,
    /// The last byte seen was a `\r` (a following `\n` is its pair).
    after_cr: bool,
}

impl LineSplitter {
    pub fn new(max_pending: usize) -> Self {
        LineSplitter {
            pending: Vec::new(),
            max_pending: max_pending.max(4),
            after_cr: false,
        }
    }

    /// Feed a chunk; returns the lines it completed (without endings).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in chunk {
            if b == b'\n' || b == b'\r' {
                if !self.pending.is_empty() {
                    out.push(String::from_utf8_lossy(&self.pending).into_owned());
                    self.pending.clear();
                } else if !(b == b'\n' && self.after_cr) {
                    out.push("\n".to_string());
                }
                self.after_cr = b == b'\r';
                continue;
            }
            self.after_cr = false;
            self.pending.push(b);
            if self.pending.len() >= self.max_pending {
                let cut = match utf8_boundary(&self.pending, self.max_pending) {
                    0 => self.max_pending,
                    c => c,
                };
                let rest = self.pending.split_off(cut);
                let head = std::mem::replace(&mut self.pending, rest);
                out.push(String::from_utf8_lossy(&head).into_owned());
            }
        }
        out
    }

    /// The unterminated last line, at end of stream.
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let all = std::mem::take(&mut self.pending);
        Some(String::from_utf8_lossy(&all).into_owned())
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
    fn exit_error_carries_exit_code_and_go_process_state() {
        let error = |code, signal| {
            let v: serde_json::Value = serde_json::from_slice(
                StreamEvent::exit_error(code, signal)
                    .frame()
                    .trim_ascii_end(),
            )
            .unwrap();
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["ename"], "CommandExecError");
            (
                v["error"]["evalue"].clone(),
                v["error"]["traceback"].clone(),
            )
        };
        assert_eq!(
            error(3, 0),
            (serde_json::json!("3"), serde_json::json!(["exit status 3"]))
        );
        assert_eq!(
            error(137, 9),
            (
                serde_json::json!("-1"),
                serde_json::json!(["signal: killed"])
            )
        );
        assert_eq!(
            error(128 + 40, 40).1,
            serde_json::json!(["signal: signal 40"])
        );
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
    fn splitter_sends_lines_without_endings() {
        let mut s = LineSplitter::new(1024);
        assert_eq!(s.push(b"connect-ok\n"), vec!["connect-ok"]);
        assert_eq!(s.push(b"a\n\nb\n"), vec!["a", "\n", "b"]);
        assert_eq!(s.push(b"x\r\ny\rz\n"), vec!["x", "y", "z"]);
        assert_eq!(s.push(b"\r\n\r\r"), vec!["\n", "\n", "\n"]);
        // a \r\n pair split across chunks still counts once
        assert_eq!(s.push(b"p\r"), vec!["p"]);
        assert_eq!(s.push(b"\nq"), Vec::<String>::new());
        assert_eq!(s.push(b"r"), Vec::<String>::new(), "partial lines wait");
        assert_eq!(s.finish().as_deref(), Some("qr"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn splitter_never_cuts_utf8() {
        let mut s = LineSplitter::new(4);
        // "a€" is 4 bytes: the cap is hit only after the whole sequence
        assert_eq!(s.push("a€b".as_bytes()), vec!["a€"]);
        assert_eq!(s.finish().as_deref(), Some("b"));
        let mut s = LineSplitter::new(1024);
        let euro = "€".as_bytes();
        assert!(s.push(&euro[..2]).is_empty());
        assert_eq!(s.push(&euro[2..]), Vec::<String>::new());
        assert_eq!(s.push(b"\n"), vec!["€"]);
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
                prev = c;
            }
            if let Some(r) = s.finish() { out.push_str(&r); }
            proptest::prop_assert_eq!(out, input);
        }

        #[test]
        fn splitter_one_event_per_line(lines in proptest::collection::vec("[a-z€ ]{0,6}", 0..8), cut in 0usize..80) {
            let input: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
            let bytes = input.as_bytes();
            let cut = cut.min(bytes.len());
            let mut s = LineSplitter::new(1024);
            let mut got = s.push(&bytes[..cut]);
            got.extend(s.push(&bytes[cut..]));
            proptest::prop_assert_eq!(s.finish(), None);
            let want: Vec<String> = lines.iter().map(|l| if l.is_empty() { "\n".to_string() } else { l.clone() }).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
