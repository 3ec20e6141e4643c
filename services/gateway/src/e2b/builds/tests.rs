use serde_json::json;

use super::{steps::*, *};

#[test]
fn a_build_start_becomes_steps() {
    let body = json!({
        "fromImage": "127.0.0.1:5000/base:1",
        "force": false,
        "steps": [
            {"type": "RUN", "args": ["echo hi > /x && true", "root"], "force": false},
            {"type": "COPY", "args": ["app/*.py", "/app/", "", "0755"],
             "filesHash": "ab".repeat(32), "force": false},
            {"type": "ENV", "args": ["A", "1", "B", "two words"]},
            {"type": "WORKDIR", "args": ["/app"]},
            {"type": "USER", "args": ["user"]},
        ],
        "startCmd": "python3 -m http.server",
        "readyCmd": "sleep 1",
    });
    let s = parse_start(&body).unwrap();
    assert_eq!(s.from_image, "127.0.0.1:5000/base:1");
    assert_eq!(s.start_cmd.as_deref(), Some("python3 -m http.server"));
    assert_eq!(s.ready_cmd.as_deref(), Some("sleep 1"));
    let kinds: Vec<_> = s.steps.iter().map(|s| (s.index, s.kind.clone())).collect();
    assert_eq!(
        kinds,
        [
            (
                1,
                StepKind::Run {
                    cmd: "echo hi > /x && true".into(),
                    user: Some("root".into())
                }
            ),
            (
                2,
                StepKind::Copy {
                    src: "app/*.py".into(),
                    dest: "/app/".into(),
                    user: None,
                    mode: Some("0755".into()),
                    hash: "ab".repeat(32),
                }
            ),
            (
                3,
                StepKind::Env(vec![
                    ("A".into(), "1".into()),
                    ("B".into(), "two words".into())
                ])
            ),
            (4, StepKind::Workdir("/app".into())),
            (5, StepKind::User("user".into())),
        ]
    );
}

#[test]
fn steps_sandpool_cannot_honour_are_refused_naming_them() {
    let with = |steps: Value| json!({"fromImage": "busybox", "steps": steps});
    let cases = [
        (
            with(json!([{"type": "HEALTHCHECK", "args": ["x"]}])),
            501,
            "HEALTHCHECK",
        ),
        (
            with(json!([{"type": "RUN", "args": []}])),
            400,
            "step 1 (RUN)",
        ),
        (with(json!([{"type": "ENV", "args": ["A"]}])), 400, "pairs"),
        (
            with(json!([{"type": "COPY", "args": ["a", "/b"]}])),
            400,
            "filesHash",
        ),
        (
            with(json!([{"type": "COPY", "args": ["a", "/b"], "filesHash": "../../etc"}])),
            400,
            "hex",
        ),
        (
            with(
                json!([{"type": "COPY", "args": ["a", "/b", "", "rwx"], "filesHash": "ab".repeat(16)}]),
            ),
            400,
            "octal",
        ),
        (
            with(
                json!([{"type": "COPY", "args": ["../../etc/shadow", "/b"], "filesHash": "ab".repeat(16)}]),
            ),
            400,
            "relative",
        ),
        (
            with(
                json!([{"type": "COPY", "args": ["/etc/shadow", "/b"], "filesHash": "ab".repeat(16)}]),
            ),
            400,
            "relative",
        ),
        (json!({"steps": []}), 400, "fromImage or fromTemplate"),
        (
            json!({"fromImage": "a", "fromTemplate": "b"}),
            400,
            "not both",
        ),
        (
            json!({"fromImage": "a", "fromImageRegistry": {"type": "aws", "awsAccessKeyId": "x"}}),
            501,
            "aws",
        ),
        (json!([]), 400, "object"),
    ];
    for (body, status, says) in cases {
        let e = parse_start(&body).unwrap_err();
        assert_eq!(e.status().as_u16(), status, "{body}: {e}");
        assert!(e.to_string().contains(says), "{body}: {e}");
    }
    let s = parse_start(&json!({"fromTemplate": "base",
        "fromImageRegistry": null}))
    .unwrap();
    assert_eq!(s.from_template.as_deref(), Some("base"));
    let s = parse_start(&json!({"fromImage": "x",
        "fromImageRegistry": {"type": "registry", "username": "u", "password": "p"}}))
    .unwrap();
    assert_eq!(s.credentials, Some(("u".into(), "p".into())));
}

#[test]
fn a_builders_error_names_its_step() {
    assert_eq!(failed_step("step 3 (RUN): exit 1").as_deref(), Some("3"));
    assert_eq!(
        failed_step("base image x: not found").as_deref(),
        Some("base")
    );
    assert_eq!(failed_step("committing: disk full"), None);
}

fn record(status: Status) -> BuildRecord {
    BuildRecord {
        template: "app".into(),
        build_id: "b1".into(),
        status,
        created_ms: 0,
        updated_ms: 0,
        cpu_count: 2,
        memory_mb: 512,
        tags: vec!["default".into()],
        logs: vec![
            LogEntry {
                ms: 0,
                level: "info",
                message: "one".into(),
            },
            LogEntry {
                ms: 1,
                level: "error",
                message: "step 1 (RUN): exit 1".into(),
            },
        ],
        reason: Some(("step 1 (RUN): exit 1".into(), Some("1".into()))),
    }
}

#[test]
fn a_ready_build_is_a_pool_with_its_command_and_resources() {
    let p = build_pool(&record(Status::Ready), "img:1", Some("python3 app.py"));
    assert_eq!(p.name, "app");
    let t = p.template.unwrap();
    assert_eq!(t.image, "img:1");
    assert_eq!(t.command, ["/bin/sh", "-c", "python3 app.py"]);
    let r = t.resources.unwrap();
    assert_eq!((r.cpu.as_str(), r.memory.as_str()), ("2", "512Mi"));
    let none = build_pool(&record(Status::Ready), "img:1", None);
    let none = none.template.unwrap();
    assert!(none.command.is_empty());
    // E2B: no startCmd, no process: the image's Entrypoint/Cmd stay off
    assert_eq!(
        none.labels
            .get(sandpool_core::start::IMAGE_COMMAND_LABEL)
            .map(String::as_str),
        Some(sandpool_core::start::IMAGE_COMMAND_NONE)
    );
}

#[test]
fn a_ready_cmd_travels_as_a_template_label() {
    let p = with_ready_cmd(
        build_pool(&record(Status::Ready), "img:1", Some("python3 app.py")),
        Some("curl -sf localhost:8000"),
    );
    assert_eq!(
        ready::ready_cmd(&p).as_deref(),
        Some("curl -sf localhost:8000")
    );
    let none = with_ready_cmd(build_pool(&record(Status::Ready), "img:1", None), None);
    assert_eq!(ready::ready_cmd(&none), None);
}

#[test]
fn status_shows_logs_and_the_failed_step() {
    let b = record(Status::Error);
    let entries: Vec<&LogEntry> = b.logs.iter().collect();
    let v = status_json(&b, &entries[1..]);
    assert_eq!(v["status"], "error");
    assert_eq!(v["logs"], json!(["step 1 (RUN): exit 1"]));
    assert_eq!(v["logEntries"][0]["level"], "error");
    assert_eq!(v["logEntries"][0]["timestamp"], "1970-01-01T00:00:00.001Z");
    assert_eq!(
        v["reason"],
        json!({"message": "step 1 (RUN): exit 1", "step": "1"})
    );
    let ok = status_json(&record(Status::Waiting), &[]);
    assert_eq!(ok["status"], "waiting");
    assert_eq!(ok["logEntries"], json!([]));
}

#[test]
fn template_names_are_pool_names() {
    assert!(check_name("my-app_2").is_ok());
    for bad in ["", "App", "-x", "a/b", &"x".repeat(64)] {
        assert!(check_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn old_finished_builds_go_but_never_a_templates_pool_build() {
    let mut m = HashMap::new();
    for i in 0..(MAX_BUILDS + 40) {
        let mut b = record(if i % 2 == 0 {
            Status::Ready
        } else {
            Status::Error
        });
        b.template = if i % 3 == 0 { "a" } else { "b" }.into();
        b.build_id = format!("b{i}");
        b.updated_ms = i as i64;
        m.insert(b.build_id.clone(), b);
    }
    // the oldest record: a's only ready build, so it stays
    let mut only = record(Status::Ready);
    only.template = "c".into();
    only.build_id = "c-only".into();
    only.updated_ms = -1;
    m.insert("c-only".into(), only);
    let mut building = record(Status::Building);
    building.build_id = "running".into();
    building.updated_ms = -2;
    m.insert("running".into(), building);
    prune(&mut m, 0);
    assert_eq!(m.len(), MAX_BUILDS);
    assert!(m.contains_key("c-only") && m.contains_key("running"));
    let newest = |t: &str| {
        (0..MAX_BUILDS + 40)
            .rev()
            .find(|i| i % 2 == 0 && (i % 3 == 0) == (t == "a"))
            .map(|i| format!("b{i}"))
            .unwrap()
    };
    assert!(m.contains_key(&newest("a")) && m.contains_key(&newest("b")));
    assert!(!m.contains_key("b1"), "the oldest finished went");
}

/// A [`BuildStore`] in memory that outlives the `Builds` using it.
#[derive(Default)]
struct MemStore(Mutex<BTreeMap<String, Value>>);

impl BuildStore for MemStore {
    fn put(&self, id: &str, v: &Value) -> std::result::Result<(), String> {
        self.0.lock().insert(id.into(), v.clone());
        Ok(())
    }
    fn delete(&self, id: &str) -> std::result::Result<(), String> {
        self.0.lock().remove(id);
        Ok(())
    }
    fn all(&self) -> std::result::Result<Vec<Value>, String> {
        Ok(self.0.lock().values().cloned().collect())
    }
}

#[test]
fn build_records_outlive_a_restart_and_a_running_build_fails_over_it() {
    let store = Arc::new(MemStore::default());
    let before = Builds::new(None).with_store(store.clone());
    let mut building = record(Status::Building);
    building.build_id = "b2".into();
    building.template = "other".into();
    building.reason = None;
    for b in [record(Status::Waiting), building] {
        before.builds.lock().insert(b.build_id.clone(), b.clone());
        before.persist(&b);
    }
    before.update("b1", |b| b.status = Status::Ready);
    before.log("b2", "info", "step 1".into());
    drop(before);

    // a new gateway on the same store
    let after = Builds::new(None).with_store(store.clone());
    let ready = after.ready_build("app").unwrap();
    assert_eq!((ready.build_id.as_str(), ready.logs.len()), ("b1", 2));
    assert_eq!(ready.logs[1].level, "error");
    let b2 = after.get("other", "b2").unwrap();
    assert_eq!(b2.status, Status::Error);
    let shown = status_json(&b2, &[]);
    assert_eq!(shown["reason"]["message"], store::INTERRUPTED);
    assert_eq!(
        store.0.lock()["b2"]["status"],
        "error",
        "the interrupted build is stored as failed"
    );
    after.forget(&["b2".into()]);
    assert!(!store.0.lock().contains_key("b2"));
}
