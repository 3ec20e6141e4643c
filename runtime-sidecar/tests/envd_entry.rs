//! envd's entry metadata: `include_entry` on watchers, `EntryInfo` fields,
//! and the user an envd call runs as.

// Integration tests are test code throughout (helpers included).
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

mod support;

const TOKEN: &str = "envd-token";

/// envd on a loopback port, its home (with a directory `w`) in a tempdir.
async fn serve() -> (String, tempfile::TempDir) {
    support::serve_envd(TOKEN, &["w"]).await
}

/// A unary Connect call with extra headers: its status and JSON answer.
async fn unary(base: &str, method: &str, body: Value, headers: &[(&str, &str)]) -> (u16, Value) {
    support::unary(
        &reqwest::Client::new(),
        (base, TOKEN),
        method,
        &body,
        headers,
    )
    .await
}

/// With `includeEntry`, a watcher's create and write events carry the
/// entry's `EntryInfo`; a remove carries none; without it no event does.
#[tokio::test]
async fn watcher_events_carry_entries_when_asked() {
    let (base, d) = serve().await;
    let create = |include: bool| {
        let base = base.clone();
        async move {
            let (st, v) = unary(
                &base,
                "filesystem.Filesystem/CreateWatcher",
                json!({"path": "w", "includeEntry": include}),
                &[],
            )
            .await;
            assert_eq!(st, 200, "{v}");
            v["watcherId"].as_str().unwrap().to_string()
        }
    };
    let with = create(true).await;
    let without = create(false).await;
    let f = d.path().join("home/w/a.txt");
    std::fs::write(&f, "hello").unwrap();
    let events = |id: String| {
        let base = base.clone();
        async move {
            let (st, v) = unary(
                &base,
                "filesystem.Filesystem/GetWatcherEvents",
                json!({"watcherId": id}),
                &[],
            )
            .await;
            assert_eq!(st, 200, "{v}");
            v["events"].as_array().unwrap().clone()
        }
    };
    let mut got = events(with.clone()).await;
    // the entry is stat'ed when the event is read, so remove only now
    std::fs::remove_file(&f).unwrap();
    got.extend(events(with).await);
    let create_ev = got
        .iter()
        .find(|e| e["type"] == "EVENT_TYPE_CREATE")
        .expect("a create event");
    let entry = &create_ev["entry"];
    assert_eq!(entry["name"], "a.txt", "{got:?}");
    assert_eq!(entry["type"], "FILE_TYPE_FILE");
    assert_eq!(entry["path"], f.to_string_lossy().as_ref());
    // stat'ed when the event was taken off the queue: a background drain
    // may run between the file's creation and its write
    assert!(entry["size"] == 5 || entry["size"] == 0, "{entry}");
    assert!(entry["permissions"].as_str().unwrap().starts_with("-rw"));
    let remove_ev = got
        .iter()
        .find(|e| e["type"] == "EVENT_TYPE_REMOVE")
        .expect("a remove event");
    assert!(remove_ev.get("entry").is_none(), "{remove_ev}");
    let plain = events(without).await;
    assert!(!plain.is_empty());
    assert!(plain.iter().all(|e| e.get("entry").is_none()), "{plain:?}");
}

/// An upload's `X-Metadata-*` headers become the file's metadata (keys
/// lowercased), answered by the upload and by Stat/ListDir; an overwrite
/// replaces the set. A symlink is its target's type, marked `isSymlink`.
#[tokio::test]
async fn uploads_keep_metadata_and_entries_report_it() {
    let (base, d) = serve().await;
    let c = reqwest::Client::new();
    let upload = |md: &'static [(&'static str, &'static str)]| {
        let mut r = c
            .post(format!("{base}/files"))
            .query(&[("path", "w/m.txt")])
            .header("x-access-token", TOKEN)
            .header("content-type", "application/octet-stream")
            .body("data");
        for (k, v) in md {
            r = r.header(*k, *v);
        }
        async move {
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let up = upload(&[("X-Metadata-Owner", "Alice"), ("X-Metadata-tag", "t1")]).await;
    assert_eq!(
        up[0]["metadata"],
        json!({"owner": "Alice", "tag": "t1"}),
        "{up}"
    );
    let (st, v) = unary(
        &base,
        "filesystem.Filesystem/Stat",
        json!({"path": "w/m.txt"}),
        &[],
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["entry"]["metadata"],
        json!({"owner": "Alice", "tag": "t1"})
    );
    assert!(v["entry"].get("isSymlink").is_none(), "{v}");

    let up = upload(&[("X-Metadata-tag", "t2")]).await;
    assert_eq!(up[0]["metadata"], json!({"tag": "t2"}), "{up}");

    std::os::unix::fs::symlink(d.path().join("home/w/m.txt"), d.path().join("home/w/l")).unwrap();
    let (st, v) = unary(
        &base,
        "filesystem.Filesystem/ListDir",
        json!({"path": "w"}),
        &[],
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let entries = v["entries"].as_array().unwrap();
    let link = entries.iter().find(|e| e["name"] == "l").unwrap();
    assert_eq!(link["type"], "FILE_TYPE_FILE", "{link}");
    assert_eq!(link["isSymlink"], true);
    assert!(link["symlinkTarget"].as_str().unwrap().ends_with("w/m.txt"));

    // a relative link answers the absolute path it resolves to, as envd's
    // (EvalSymlinks); a dangling one answers its own path
    std::os::unix::fs::symlink("m.txt", d.path().join("home/w/rel")).unwrap();
    std::os::unix::fs::symlink("gone.txt", d.path().join("home/w/dangling")).unwrap();
    let home_w = std::fs::canonicalize(d.path().join("home/w")).unwrap();
    for (name, target) in [
        ("rel", home_w.join("m.txt")),
        ("dangling", d.path().join("home/w/dangling")),
    ] {
        let (st, v) = unary(
            &base,
            "filesystem.Filesystem/Stat",
            json!({"path": format!("w/{name}")}),
            &[],
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(
            v["entry"]["symlinkTarget"],
            target.to_string_lossy().as_ref(),
            "{v}"
        );
        assert_eq!(v["entry"]["isSymlink"], true, "{v}");
    }
    let file = entries.iter().find(|e| e["name"] == "m.txt").unwrap();
    assert_eq!(file["metadata"], json!({"tag": "t2"}), "{file}");
}

fn basic(user: &str) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
    format!("Basic {b}")
}

/// The Connect stream answer of `process.Process/Start` running `sh -c`
/// as `user`, as its JSON messages.
async fn run_as(base: &str, user: &str, script: &str) -> Vec<Value> {
    let body = sandpool_runtime::envd::envelope(
        0,
        &json!({"process": {"cmd": "/bin/sh", "args": ["-c", script], "cwd": "/tmp"}}),
    );
    let r = reqwest::Client::new()
        .post(format!("{base}/process.Process/Start"))
        .header("content-type", "application/connect+json")
        .header("x-access-token", TOKEN)
        .header("authorization", basic(user))
        .body(body)
        .send()
        .await
        .unwrap();
    let mut b: &[u8] = &r.bytes().await.unwrap();
    let mut out = Vec::new();
    while b.len() >= 5 {
        let n = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        out.push(serde_json::from_slice(&b[5..5 + n]).unwrap());
        b = &b[5 + n..];
    }
    out
}

/// The user in `Authorization: Basic` picks whom a process runs as; an
/// unknown user is refused (`unauthenticated`, "invalid username") on
/// process and filesystem calls alike.
#[tokio::test]
async fn envd_calls_run_as_the_user_they_name() {
    let (base, _d) = serve().await;
    let me = nix::unistd::geteuid().as_raw();
    let stdout = |msgs: &[Value]| {
        use base64::Engine;
        msgs.iter()
            .filter_map(|m| m["event"]["data"]["stdout"].as_str())
            .map(|s| base64::engine::general_purpose::STANDARD.decode(s).unwrap())
            .map(|b| String::from_utf8(b).unwrap())
            .collect::<String>()
    };
    let msgs = run_as(&base, "user", "id -u").await;
    let uid: u32 = stdout(&msgs).trim().parse().unwrap();
    if me == 0 {
        // a root runtime runs `user` as the unprivileged sandbox user
        assert_ne!(uid, 0, "{msgs:?}");
        let root = run_as(&base, "root", "id -u").await;
        assert_eq!(stdout(&root).trim(), "0", "{root:?}");
    } else {
        assert_eq!(uid, me, "{msgs:?}");
        let root = run_as(&base, "root", "id -u").await;
        let err = &root.last().unwrap()["error"];
        assert_eq!(err["code"], "permission_denied", "{root:?}");
    }
    let unknown = run_as(&base, "no-such-user-xyz", "true").await;
    let err = &unknown.last().unwrap()["error"];
    assert_eq!(err["code"], "unauthenticated", "{unknown:?}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("invalid username")
    );
    let (st, v) = unary(
        &base,
        "filesystem.Filesystem/Stat",
        json!({"path": "w"}),
        &[("authorization", &basic("no-such-user-xyz"))],
    )
    .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (401, Some("unauthenticated")),
        "{v}"
    );
}

/// `GET /files` reads a file to its end even where the kernel reports a size
/// of 0 (procfs), as envd's does: E2B's SDK reads `/proc` files this way
/// (`files.read("/proc/sys/kernel/random/boot_id")`).
#[tokio::test]
async fn downloads_read_procfs_files_to_their_end() {
    let (base, _d) = serve().await;
    let r = reqwest::Client::new()
        .get(format!("{base}/files"))
        .query(&[("path", "/proc/sys/kernel/random/boot_id")])
        .header("x-access-token", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert_eq!(body.trim().len(), 36, "{body:?}");
}
