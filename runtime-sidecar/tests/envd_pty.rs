//! envd's PTY processes on a loopback port: Start with a terminal (output as
//! `pty` data, the terminal as the controlling tty), Update resizes it,
//! SendInput types into it, Connect sees the same output, the end event
//! carries the exit code; stdin/pty input to the wrong kind of process fails.

// Integration tests are test code throughout (helpers included).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use futures_util::{Stream, StreamExt};
use sandpool_runtime::envd::envelope;
use serde_json::{Value, json};

mod support;

const TOKEN: &str = "envd-pty-token";

struct Rpc {
    c: reqwest::Client,
    base: String,
}

impl Rpc {
    /// envd on a loopback port (its data dir lives as long as the guard).
    async fn serve() -> (Self, tempfile::TempDir) {
        let (base, d) = support::serve_envd(TOKEN, &[]).await;
        let rpc = Rpc {
            c: reqwest::Client::new(),
            base,
        };
        (rpc, d)
    }

    async fn unary(&self, method: &str, body: Value) -> (u16, Value) {
        support::unary(&self.c, (&self.base, TOKEN), method, &body, &[]).await
    }

    /// Open a server stream (Start or Connect) and return its body.
    async fn stream(
        &self,
        method: &str,
        body: Value,
    ) -> impl Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin + use<> {
        let r = self
            .c
            .post(format!("{}/{method}", self.base))
            .header("content-type", "application/connect+json")
            .header("x-access-token", TOKEN)
            .body(envelope(0, &body))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes_stream()
    }

    /// Start a process (`body` is the Start request); its events, with the
    /// start event read, and its pid.
    async fn start(
        &self,
        body: Value,
    ) -> (
        Events<impl Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin + use<>>,
        u64,
    ) {
        let mut ev = Events::new(self.stream("process.Process/Start", body).await);
        let first = ev.next().await.unwrap();
        let pid = first["event"]["start"]["pid"]
            .as_u64()
            .expect("start event");
        (ev, pid)
    }

    /// `method` with `body` fails as Connect error `code` (HTTP 500).
    async fn refused(&self, method: &str, body: Value, code: &str) {
        let (st, v) = self.unary(method, body).await;
        assert_eq!((st, &v["code"]), (500, &json!(code)), "{method}: {v}");
    }

    /// SIGKILL to process `pid`, which succeeds.
    async fn kill(&self, pid: u64) {
        let (st, _) = self
            .unary(
                "process.Process/SendSignal",
                json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
            )
            .await;
        assert_eq!(st, 200);
    }
}

/// Reads a Connect stream's envelopes as they arrive.
struct Events<S> {
    body: S,
    buf: Vec<u8>,
    /// Decoded `pty` output so far.
    pty: Vec<u8>,
    /// Whether any `stdout`/`stderr` data came.
    other: bool,
    end: Option<Value>,
}

impl<S: Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin> Events<S> {
    fn new(body: S) -> Self {
        Events {
            body,
            buf: Vec::new(),
            pty: Vec::new(),
            other: false,
            end: None,
        }
    }

    /// The next message (None at the end of the body).
    async fn next(&mut self) -> Option<Value> {
        loop {
            if self.buf.len() >= 5 {
                let n = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() >= 5 + n {
                    let v: Value = serde_json::from_slice(&self.buf[5..5 + n]).unwrap();
                    self.buf.drain(..5 + n);
                    let ev = &v["event"];
                    if let Some(d) = ev["data"]["pty"].as_str() {
                        self.pty.extend(B64.decode(d).unwrap());
                    }
                    self.other |= ev["data"].get("stdout").is_some();
                    self.other |= ev["data"].get("stderr").is_some();
                    if let Some(e) = ev.get("end") {
                        self.end = Some(e.clone());
                    }
                    return Some(v);
                }
            }
            let chunk = self.body.next().await?.unwrap();
            self.buf.extend_from_slice(&chunk);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.pty).into_owned()
    }

    /// Read until the pty output contains `want` (or fail after 10 s).
    async fn until(&mut self, want: &str) {
        let wait = async {
            while !self.text().contains(want) {
                if self.next().await.is_none() {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in pty output {:?}", self.text()));
        assert!(self.text().contains(want), "{:?}", self.text());
    }

    /// Read to the end of the stream; the end event.
    async fn finish(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.next().await.is_some() {}
        })
        .await
        .expect("stream ends");
        self.end.clone().expect("end event")
    }
}

#[tokio::test]
async fn pty_start_resize_input_and_exit() {
    let (rpc, _d) = Rpc::serve().await;
    let script = "stty size; echo ctty >/dev/tty; read x; stty size; echo \"got $x\"; exit 3";
    let (mut ev, pid) = rpc
        .start(
            json!({"process": {"cmd": "/bin/sh", "args": ["-c", script]},
                      "pty": {"size": {"cols": 80, "rows": 24}}}),
        )
        .await;
    // the size it was started with; /dev/tty is its controlling terminal
    ev.until("24 80").await;
    ev.until("ctty").await;

    // a second client attached by pid sees the same terminal output
    let mut attached = Events::new(
        rpc.stream("process.Process/Connect", json!({"process": {"pid": pid}}))
            .await,
    );
    assert_eq!(attached.next().await.unwrap()["event"]["start"]["pid"], pid);

    // stdin input and CloseStdin do not apply to a terminal
    rpc.refused(
        "process.Process/SendInput",
        json!({"process": {"pid": pid}, "input": {"stdin": B64.encode("no\n")}}),
        "internal",
    )
    .await;
    rpc.refused(
        "process.Process/CloseStdin",
        json!({"process": {"pid": pid}}),
        "unknown",
    )
    .await;

    let (st, v) = rpc
        .unary(
            "process.Process/Update",
            json!({"process": {"pid": pid}, "pty": {"size": {"cols": 100, "rows": "30"}}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = rpc
        .unary(
            "process.Process/SendInput",
            json!({"process": {"pid": pid}, "input": {"pty": B64.encode("hi\n")}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");

    ev.until("30 100").await;
    ev.until("got hi").await;
    let end = ev.finish().await;
    assert_eq!(
        (&end["exitCode"], &end["exited"]),
        (&json!(3), &json!(true))
    );
    assert!(!ev.other, "a terminal's output is pty data only");
    // the terminal echoed what was typed
    assert!(ev.text().contains("hi\r\n"), "{:?}", ev.text());

    attached.until("got hi").await;
    assert_eq!(attached.finish().await["exitCode"], 3);
}

#[tokio::test]
async fn pty_input_and_resize_need_a_terminal() {
    let (rpc, _d) = Rpc::serve().await;
    let (mut ev, pid) = rpc
        .start(json!({"process": {"cmd": "sleep", "args": ["30"]}, "stdin": true}))
        .await;
    rpc.refused(
        "process.Process/Update",
        json!({"process": {"pid": pid}, "pty": {"size": {"cols": 10, "rows": 10}}}),
        "internal",
    )
    .await;
    rpc.refused(
        "process.Process/SendInput",
        json!({"process": {"pid": pid}, "input": {"pty": B64.encode("x")}}),
        "internal",
    )
    .await;
    // an Update without a pty changes nothing
    let (st, _) = rpc
        .unary("process.Process/Update", json!({"process": {"pid": pid}}))
        .await;
    assert_eq!(st, 200);
    rpc.kill(pid).await;
    assert_eq!(ev.finish().await["status"], "signal: killed");
}

/// Killing a terminal's shell ends its stream with the signal.
#[tokio::test]
async fn pty_kill_ends_the_stream() {
    let (rpc, _d) = Rpc::serve().await;
    let (mut ev, pid) = rpc
        .start(
            json!({"process": {"cmd": "/bin/sh", "args": ["-c", "echo ready; sleep 30"]},
                      "pty": {"size": {"cols": 40, "rows": 10}}}),
        )
        .await;
    ev.until("ready").await;
    let (st, v) = rpc.unary("process.Process/List", json!({})).await;
    assert_eq!(st, 200);
    assert_eq!(v["processes"][0]["pid"], pid, "{v}");
    rpc.kill(pid).await;
    let end = ev.finish().await;
    assert_eq!(end["status"], "signal: killed", "{end}");
}
