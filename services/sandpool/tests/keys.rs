//! `sandpool key create|list|revoke` against a temporary data dir.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn sandpool(data_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sandpool"))
        .args(["key"])
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("SANDPOOL_DATA_DIR")
        .output()
        .expect("run sandpool")
}

fn stdout(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn keys_are_created_listed_and_revoked_and_stored_hashed_in_a_private_file() {
    let d = tempfile::tempdir().expect("tempdir");
    let key = stdout(&sandpool(d.path(), &["create", "--name", "alice"]))
        .trim()
        .to_string();
    assert!(
        key.starts_with("e2b_") && key.len() == 44,
        "E2B key shape: {key}"
    );
    let admin = stdout(&sandpool(d.path(), &["create", "--name", "ops", "--admin"]));
    assert_ne!(admin.trim(), key);

    let file = d.path().join("keys").join("keys.json");
    let text = std::fs::read_to_string(&file).expect("keys file");
    assert!(!text.contains(&key), "the key itself is not stored");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&d.path().join("keys")), 0o700);

    let list = stdout(&sandpool(d.path(), &["list"]));
    assert!(!list.contains(&key));
    let alice = list
        .lines()
        .find(|l| l.contains("alice"))
        .expect("alice listed");
    assert!(alice.contains("user"), "{alice}");
    assert!(
        list.lines()
            .any(|l| l.contains("ops") && l.contains("admin")),
        "{list}"
    );
    let id = alice.split_whitespace().next().expect("id").to_string();
    let store = sandpool_gateway::tenancy::KeyStore::new(&[], Some(file.clone()));
    assert_eq!(store.check(&key).map(|p| p.id), Some(id.clone()));

    stdout(&sandpool(d.path(), &["revoke", &id]));
    assert_eq!(store.check(&key), None, "revoked");
    let list = stdout(&sandpool(d.path(), &["list"]));
    assert!(!list.contains("alice") && list.contains("ops"), "{list}");
    let again = sandpool(d.path(), &["revoke", &id]);
    assert!(!again.status.success(), "revoking an unknown key fails");
}
