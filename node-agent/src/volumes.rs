//! Named volumes: directories under the node's volume root (the first mount
//! root, `<agent data>/volumes`). A mount names one as `name` or
//! `name/sub/path`; the sub path must stay inside the volume after every
//! symlink is resolved. A leading `+` (`+name[/sub/path]`, what an
//! OpenSandbox `pvc` volume with `createIfNotExists` sends) makes the volume
//! when it is missing, owned by the sandbox user so that an unprivileged
//! sandbox can write to it.

use std::path::{Component, Path, PathBuf};

use crate::error::{AgentError, Result};

/// Split `spec` into a volume name and an optional sub path, both checked
/// lexically: the name is one plain path component, the sub path relative
/// with no `.` or `..`.
fn split(spec: &str) -> Result<(&str, Option<&str>)> {
    let (name, sub) = match spec.split_once('/') {
        Some((n, s)) => (n, Some(s.trim_end_matches('/'))),
        None => (spec, None),
    };
    if name.is_empty() || name == "." || name == ".." || name.contains('\0') {
        return Err(AgentError::InvalidTemplate(format!(
            "bad volume name {name:?}"
        )));
    }
    let sub = sub.filter(|s| !s.is_empty());
    if let Some(s) = sub {
        let lexical_ok = !s.contains('\0')
            && Path::new(s)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !lexical_ok {
            return Err(AgentError::InvalidTemplate(format!(
                "sub path {s:?} of volume {name} must be relative, without . or .."
            )));
        }
    }
    Ok((name, sub))
}

/// The host directory (or file) a named volume mount refers to, canonical;
/// a `+` spec makes the volume first (owned by `owner`) when missing. A
/// missing volume is `NotFound`; a sub path that leaves the volume (through
/// a symlink) is refused.
pub fn resolve(root: &Path, spec: &str, node: &str, owner: (u32, u32)) -> Result<PathBuf> {
    let spec = match spec.strip_prefix('+') {
        Some(s) => {
            create(root, s, owner)?;
            s
        }
        None => spec,
    };
    let (name, sub) = split(spec)?;
    let dir = root.join(name);
    if !dir.is_dir() {
        return Err(AgentError::NotFound(format!(
            "volume {name} not found on node {node} (no directory {})",
            dir.display()
        )));
    }
    let volume = std::fs::canonicalize(&dir)
        .map_err(|e| AgentError::invalid(format!("volume {name}"), e))?;
    let Some(sub) = sub else { return Ok(volume) };
    let path = std::fs::canonicalize(dir.join(sub))
        .map_err(|e| AgentError::invalid(format!("sub path {sub:?} of volume {name}"), e))?;
    if !path.starts_with(&volume) {
        return Err(AgentError::InvalidTemplate(format!(
            "sub path {sub:?} of volume {name} leaves the volume"
        )));
    }
    Ok(path)
}

/// Make the volume `spec` names (its first component) under `root` if it
/// does not exist: a 0755 directory owned by `owner` (uid, gid). An existing
/// one is left as it is.
fn create(root: &Path, spec: &str, owner: (u32, u32)) -> Result<()> {
    let (name, _) = split(spec)?;
    let dir = root.join(name);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(AgentError::io(format!("volume {}", dir.display()), e)),
    }
    std::os::unix::fs::chown(&dir, Some(owner.0), Some(owner.1))
        .map_err(|e| AgentError::io(format!("chown volume {}", dir.display()), e))?;
    tracing::info!(volume = name, path = %dir.display(), "volume created");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: (u32, u32) = (0, 0);

    fn owner() -> (u32, u32) {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    }

    fn fixture() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("volumes");
        std::fs::create_dir_all(root.join("data/train")).expect("dirs");
        std::fs::write(root.join("data/train/m.txt"), "x").expect("file");
        std::fs::create_dir_all(root.join("other")).expect("other");
        (tmp, root)
    }

    #[test]
    fn a_named_volume_and_its_sub_paths_resolve_inside_it() {
        let (_tmp, root) = fixture();
        let vol = std::fs::canonicalize(root.join("data")).expect("canon");
        assert_eq!(resolve(&root, "data", "n", ME).expect("vol"), vol);
        assert_eq!(
            resolve(&root, "data/train", "n", ME).expect("sub"),
            vol.join("train")
        );
        assert_eq!(
            resolve(&root, "data/train/m.txt", "n", ME).expect("file"),
            vol.join("train/m.txt")
        );
    }

    #[test]
    fn traversal_bad_names_and_missing_volumes_are_refused() {
        let (_tmp, root) = fixture();
        for bad in [
            "",
            ".",
            "..",
            "../data",
            "data/../other",
            "data/./train",
            "data//x/..",
        ] {
            let e = resolve(&root, bad, "n", ME).expect_err(bad);
            assert!(matches!(e, AgentError::InvalidTemplate(_)), "{bad}: {e}");
        }
        let e = resolve(&root, "nope", "n", ME).expect_err("missing");
        assert!(e.to_string().contains("volume nope not found"), "{e}");
        assert!(
            resolve(&root, "data/nope", "n", ME).is_err(),
            "missing sub path"
        );
    }

    #[test]
    fn a_symlink_out_of_the_volume_is_refused() {
        let (_tmp, root) = fixture();
        std::os::unix::fs::symlink("/etc", root.join("data/etc")).expect("link");
        std::os::unix::fs::symlink("../other", root.join("data/sibling")).expect("link");
        std::os::unix::fs::symlink("train", root.join("data/inside")).expect("link");
        for escape in ["data/etc", "data/sibling"] {
            let e = resolve(&root, escape, "n", ME).expect_err(escape);
            assert!(e.to_string().contains("leaves the volume"), "{escape}: {e}");
        }
        assert!(
            resolve(&root, "data/inside", "n", ME).is_ok(),
            "a link inside"
        );
    }

    #[test]
    fn a_plus_spec_makes_a_missing_volume_once_and_keeps_an_existing_one() {
        let (_tmp, root) = fixture();
        let me = owner();
        let e = resolve(&root, "+fresh/sub", "n", me).expect_err("no sub path yet");
        assert!(e.to_string().contains("sub path \"sub\""), "{e}");
        assert!(root.join("fresh").is_dir(), "the volume is made");
        assert!(!root.join("fresh/sub").exists(), "only the volume is made");
        std::fs::write(root.join("fresh/kept"), "k").expect("write");
        let vol = resolve(&root, "+fresh", "n", me).expect("again");
        assert!(vol.join("kept").exists(), "an existing volume is kept");
        assert!(resolve(&root, "+..", "n", me).is_err());
        assert!(resolve(&root, "+../x", "n", me).is_err());
        assert!(!root.join("x").exists() && !root.parent().expect("p").join("x").exists());
    }
}
