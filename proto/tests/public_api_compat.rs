//! buf-style breaking-change discipline for the public API: the current
//! `sandpool.v1.public` descriptor set against the committed snapshot
//! (`proto/public-descriptor.txt`). Removing, renumbering, renaming or
//! retyping a field, moving it in or out of a oneof, removing a message,
//! enum value, method or service, or changing a method's types or streaming
//! fails; additions pass (and are then recorded in the snapshot:
//! `SANDPOOL_UPDATE_PUBLIC_SNAPSHOT=1 cargo nextest run -p sandpool-proto`).

use std::collections::BTreeMap;

use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

const SNAPSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/public-descriptor.txt");

/// The contract as `element → properties` (one line each in the snapshot).
type Model = BTreeMap<String, String>;

fn current_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(sandpool_proto::public::FILE_DESCRIPTOR_SET).expect("descriptor set")
}

fn message(m: &mut Model, scope: &str, d: &DescriptorProto) {
    let name = format!("{scope}.{}", d.name());
    let reserved: Vec<String> = d
        .reserved_range
        .iter()
        .map(|r| format!("{}-{}", r.start(), r.end() - 1))
        .collect();
    m.insert(
        format!("message {name}"),
        format!("reserved={}", reserved.join(",")),
    );
    for f in &d.field {
        let oneof = f
            .oneof_index
            .filter(|_| !f.proto3_optional())
            .and_then(|i| d.oneof_decl.get(usize::try_from(i).ok()?))
            .map_or("", |o| o.name());
        m.insert(
            format!("field {name} #{}", f.number()),
            format!(
                "name={} type={:?} label={:?} type_name={} oneof={oneof}",
                f.name(),
                f.r#type(),
                f.label(),
                f.type_name()
            ),
        );
    }
    for n in &d.nested_type {
        message(m, &name, n);
    }
    for e in &d.enum_type {
        enumeration(m, &name, e);
    }
}

fn enumeration(m: &mut Model, scope: &str, e: &EnumDescriptorProto) {
    let name = format!("{scope}.{}", e.name());
    m.insert(format!("enum {name}"), String::new());
    for v in &e.value {
        m.insert(
            format!("value {name} #{}", v.number()),
            format!("name={}", v.name()),
        );
    }
}

fn model(set: &FileDescriptorSet) -> Model {
    let mut m = Model::new();
    for f in &set.file {
        let pkg = f.package();
        for d in &f.message_type {
            message(&mut m, pkg, d);
        }
        for e in &f.enum_type {
            enumeration(&mut m, pkg, e);
        }
        for s in &f.service {
            let name = format!("{pkg}.{}", s.name());
            m.insert(format!("service {name}"), String::new());
            for r in &s.method {
                m.insert(
                    format!("method {name}.{}", r.name()),
                    format!(
                        "in={} out={} client_streaming={} server_streaming={}",
                        r.input_type(),
                        r.output_type(),
                        r.client_streaming(),
                        r.server_streaming()
                    ),
                );
            }
        }
    }
    m
}

fn render(m: &Model) -> String {
    m.iter().map(|(k, v)| format!("{k} | {v}\n")).collect()
}

fn parse(text: &str) -> Model {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once(" | ")
                .unwrap_or((l.trim_end_matches(" |"), ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Whether field number `n` is reserved in message element `msg` of `m`.
fn reserved(m: &Model, msg: &str, n: i32) -> bool {
    m.get(&format!("message {msg}"))
        .and_then(|v| v.strip_prefix("reserved="))
        .is_some_and(|r| {
            r.split(',')
                .filter_map(|x| x.split_once('-'))
                .any(|(a, b)| {
                    let (a, b) = (a.parse().unwrap_or(i32::MAX), b.parse().unwrap_or(0));
                    (a..=b).contains(&n)
                })
        })
}

/// The incompatible changes from `old` to `new`, one sentence each.
fn breaking(old: &Model, new: &Model) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in old {
        match new.get(k) {
            // message properties (reserved ranges) may grow
            Some(_) if k.starts_with("message ") => {}
            Some(nv) if nv == v => {}
            Some(nv) => out.push(format!("{k} changed: {v} -> {nv}")),
            None => {
                // a removed field whose number is reserved is compatible
                let freed = k.strip_prefix("field ").and_then(|rest| {
                    let (msg, n) = rest.rsplit_once(" #")?;
                    Some(reserved(new, msg, n.parse().ok()?))
                });
                if freed != Some(true) {
                    out.push(format!("{k} removed (was {v})"));
                }
            }
        }
    }
    out
}

#[test]
fn the_public_descriptor_set_holds_only_the_public_package() {
    let set = current_set();
    assert!(!set.file.is_empty());
    for f in &set.file {
        assert_eq!(f.package(), "sandpool.v1.public", "{}", f.name());
        assert!(
            f.dependency.is_empty(),
            "{} imports {:?}",
            f.name(),
            f.dependency
        );
    }
}

#[test]
fn the_public_api_is_compatible_with_the_committed_snapshot() {
    let now = model(&current_set());
    let text = std::fs::read_to_string(SNAPSHOT).unwrap_or_default();
    let old = parse(&text);
    let broken = breaking(&old, &now);
    assert!(
        broken.is_empty(),
        "incompatible changes to sandpool.v1.public:\n{}",
        broken.join("\n")
    );
    if old != now {
        if std::env::var_os("SANDPOOL_UPDATE_PUBLIC_SNAPSHOT").is_some() {
            let head =
                "# sandpool.v1.public as committed; checked by proto/tests/public_api_compat.rs\n";
            std::fs::write(SNAPSHOT, format!("{head}{}", render(&now))).expect("write snapshot");
        } else {
            panic!(
                "compatible additions to sandpool.v1.public are not in {SNAPSHOT}: \
                 record them with SANDPOOL_UPDATE_PUBLIC_SNAPSHOT=1"
            );
        }
    }
}

/// The current set changed by `f`, checked against the current set.
fn changed_by(f: impl FnOnce(&mut FileDescriptorSet)) -> Vec<String> {
    let set = current_set();
    let mut changed = set.clone();
    f(&mut changed);
    breaking(&model(&set), &model(&changed))
}

fn msg<'a>(set: &'a mut FileDescriptorSet, name: &str) -> &'a mut DescriptorProto {
    set.file[0]
        .message_type
        .iter_mut()
        .find(|m| m.name() == name)
        .expect("message")
}

#[test]
fn removing_renumbering_or_retyping_a_field_is_breaking() {
    let removed = changed_by(|s| msg(s, "Sandbox").field.retain(|f| f.name() != "pool"));
    assert_eq!(
        removed,
        [
            "field sandpool.v1.public.Sandbox #3 removed (was name=pool type=String label=Optional type_name= oneof=)"
        ]
    );
    let renumbered = changed_by(|s| {
        let f = msg(s, "Sandbox")
            .field
            .iter_mut()
            .find(|f| f.name() == "pool");
        f.expect("pool").number = Some(99);
    });
    assert!(
        renumbered.iter().any(|b| b.contains("Sandbox #3 removed")),
        "{renumbered:?}"
    );
    let retyped = changed_by(|s| {
        let f = msg(s, "Sandbox")
            .field
            .iter_mut()
            .find(|f| f.name() == "created_unix_ms");
        f.expect("field")
            .set_type(prost_types::field_descriptor_proto::Type::Uint64);
    });
    assert_eq!(retyped.len(), 1, "{retyped:?}");
    assert!(retyped[0].contains("type=Int64 ") && retyped[0].contains("type=Uint64 "));
    let out_of_oneof = changed_by(|s| {
        let m = msg(s, "CreateSandboxRequest");
        let f = m.field.iter_mut().find(|f| f.name() == "image");
        f.expect("image").oneof_index = None;
    });
    assert!(
        out_of_oneof[0].contains("oneof=source -> "),
        "{out_of_oneof:?}"
    );
}

#[test]
fn a_removed_field_whose_number_is_reserved_and_an_added_field_are_compatible() {
    assert!(
        changed_by(|s| {
            let m = msg(s, "Sandbox");
            m.field.retain(|f| f.name() != "pool");
            m.reserved_range
                .push(prost_types::descriptor_proto::ReservedRange {
                    start: Some(3),
                    end: Some(4),
                });
        })
        .is_empty()
    );
    assert!(
        changed_by(|s| {
            let m = msg(s, "Sandbox");
            let mut f = m.field[0].clone();
            f.name = Some("added".into());
            f.number = Some(100);
            m.field.push(f);
        })
        .is_empty()
    );
}

#[test]
fn removing_a_method_or_service_or_changing_streaming_is_breaking() {
    let gone = changed_by(|s| s.file[0].service[0].method.retain(|m| m.name() != "Watch"));
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert!(gone[0].starts_with("method sandpool.v1.public.Sandboxes.Watch removed"));
    let unary = changed_by(|s| {
        let m = s.file[0].service[0]
            .method
            .iter_mut()
            .find(|m| m.name() == "Exec");
        m.expect("Exec").client_streaming = Some(false);
    });
    assert!(
        unary[0].contains("client_streaming=true") && unary[0].contains("client_streaming=false")
    );
    let retyped = changed_by(|s| {
        let m = s.file[0].service[0]
            .method
            .iter_mut()
            .find(|m| m.name() == "Get");
        m.expect("Get").output_type = Some(".sandpool.v1.public.SandboxSnapshot".into());
    });
    assert_eq!(retyped.len(), 1, "{retyped:?}");
    let no_service = changed_by(|s| s.file[0].service.clear());
    assert!(
        no_service
            .iter()
            .any(|b| b == "service sandpool.v1.public.Sandboxes removed (was )")
    );
    let enum_value = changed_by(|s| s.file[0].enum_type[0].value.pop().map(drop).unwrap_or(()));
    assert_eq!(enum_value.len(), 1, "{enum_value:?}");
}
