//! Dynamic mounts into a running (runc) sandbox, with the kernel's mount API:
//! `open_tree(OPEN_TREE_CLONE)` makes a detached copy of the host path in the
//! agent's mount namespace, then a short-lived child enters the sandbox's
//! mount namespace and `move_mount`s it to the requested path. Unmounting is
//! `umount2(MNT_DETACH)` from inside the namespace. gVisor (runsc) keeps its
//! own file system, so this is runc only.
//!
//! Only host paths under the configured mount roots can be mounted.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use nix::libc;

use crate::error::{AgentError, Result};

// Same numbers on every Linux architecture (the unified syscall table, 5.2+).
const SYS_OPEN_TREE: libc::c_long = 428;
const SYS_MOVE_MOUNT: libc::c_long = 429;
const SYS_MOUNT_SETATTR: libc::c_long = 442;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Paths a sandbox may not have mounted over.
const RESERVED: [&str; 5] = ["/proc", "/sys", "/dev", "/.sandpool", "/etc/resolv.conf"];

/// Check a mount request: `host_path` must resolve inside one of `roots`;
/// `mount_path` must be an absolute, normal path that is not `/` or reserved.
/// Returns the canonical host path.
pub fn validate(host_path: &str, mount_path: &str, roots: &[PathBuf]) -> Result<PathBuf> {
    validate_target(mount_path)?;
    let source = std::fs::canonicalize(host_path)
        .map_err(|e| AgentError::invalid(format!("host path {host_path:?}"), e))?;
    let allowed = roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .any(|r| source.starts_with(&r) && source != r);
    if !allowed {
        let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        return Err(AgentError::InvalidTemplate(format!(
            "host path {host_path:?} is not under a mount root ({})",
            roots.join(", ")
        )));
    }
    Ok(source)
}

/// `mount_path` must be an absolute, normal path that is not `/` or reserved.
pub fn validate_target(mount_path: &str) -> Result<()> {
    let target = Path::new(mount_path);
    if !target.is_absolute()
        || target
            .components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return Err(AgentError::InvalidTemplate(format!(
            "mount path {mount_path:?} must be absolute, without . or .."
        )));
    }
    if target == Path::new("/") || RESERVED.iter().any(|r| target.starts_with(r)) {
        return Err(AgentError::InvalidTemplate(format!(
            "mount path {mount_path:?} is reserved"
        )));
    }
    Ok(())
}

/// The host path a mount request names, checked: a volume name (and sub
/// path) is a directory under the first mount root (made, owned by the
/// sandbox user, when the name starts with `+`); an absolute path must be
/// under a mount root; `None` (an unmount) only checks `mount_path`.
pub fn source_of(
    host_path: Option<&str>,
    mount_path: &str,
    roots: &[PathBuf],
    node: &str,
) -> Result<Option<PathBuf>> {
    match host_path {
        Some(h) if !h.starts_with('/') => {
            let root = roots
                .first()
                .ok_or_else(|| AgentError::FailedPrecondition("no mount root configured".into()))?;
            let path = crate::volumes::resolve(root, h, node, crate::spec::SANDBOX_USER)?;
            validate(&path.to_string_lossy(), mount_path, roots).map(Some)
        }
        Some(h) => validate(h, mount_path, roots).map(Some),
        None => validate_target(mount_path).map(|()| None),
    }
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| AgentError::InvalidTemplate(format!("path {s:?} contains NUL")))
}

fn os_err(what: &str) -> AgentError {
    AgentError::Network(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// Run `f` in a child that has entered the mount namespace of `pid`.
fn in_mount_ns_of(
    pid: u32,
    f: impl Fn() -> std::io::Result<()> + Send + Sync + 'static,
) -> Result<()> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .map_err(|source| AgentError::MountNamespace { pid, source })?;
    let ns_fd = ns.as_raw_fd();
    // The child never execs: after the work it `_exit(0)`s (the parent sees
    // a successful spawn and exit status 0); an error is reported through
    // std's spawn error pipe. The program name is never looked up.
    let mut cmd = Command::new("/bin/true");
    // SAFETY: the closure only makes raw syscalls (setns, mkdir, open,
    // move_mount, umount2, _exit) on data prepared before the fork; no allocation.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            f()?;
            libc::_exit(0)
        });
    }
    let status = cmd
        .status()
        .map_err(|e| AgentError::precondition("in the sandbox's mount namespace", e))?;
    drop(ns);
    if status.success() {
        Ok(())
    } else {
        Err(AgentError::Network(format!(
            "mount helper exited with {status}"
        )))
    }
}

/// Bind `source` (host) at `target` inside the mount namespace of `pid`.
pub fn mount_into(pid: u32, source: &Path, target: &str, read_only: bool) -> Result<()> {
    let src = cstr(&source.to_string_lossy())?;
    // SAFETY: plain syscall with a valid C string; the returned fd is owned below.
    let fd = unsafe {
        libc::syscall(
            SYS_OPEN_TREE,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(os_err(&format!("open_tree {}", source.display())));
    }
    // SAFETY: `fd` is a new descriptor we own.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if read_only {
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let empty = cstr("")?;
        // SAFETY: valid fd, empty path with AT_EMPTY_PATH, attr of the documented size.
        let r = unsafe {
            libc::syscall(
                SYS_MOUNT_SETATTR,
                tree.as_raw_fd(),
                empty.as_ptr(),
                (libc::AT_EMPTY_PATH | AT_RECURSIVE as i32) as libc::c_uint,
                &attr as *const MountAttr,
                size_of::<MountAttr>(),
            )
        };
        if r != 0 {
            return Err(os_err("mount_setattr(read-only)"));
        }
    }
    let is_dir = source.is_dir();
    // every ancestor of the target, created if missing, then the mount point
    let mut prefixes = Vec::new();
    let mut acc = PathBuf::from("/");
    let comps: Vec<_> = Path::new(target).components().skip(1).collect();
    for (i, c) in comps.iter().enumerate() {
        acc.push(c);
        if i + 1 < comps.len() || is_dir {
            prefixes.push(cstr(&acc.to_string_lossy())?);
        }
    }
    let tgt = cstr(target)?;
    let tree_fd = tree.as_raw_fd();
    let empty = cstr("")?;
    in_mount_ns_of(pid, move || {
        for p in &prefixes {
            // SAFETY: valid C strings prepared before fork.
            if unsafe { libc::mkdir(p.as_ptr(), 0o755) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(e);
                }
            }
        }
        if !is_dir {
            // SAFETY: as above; the fd is closed right away.
            let f = unsafe {
                libc::open(
                    tgt.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if f < 0 {
                return Err(std::io::Error::last_os_error());
            }
            unsafe { libc::close(f) };
        }
        // SAFETY: detached tree fd from open_tree, target path in this namespace.
        let r = unsafe {
            libc::syscall(
                SYS_MOVE_MOUNT,
                tree_fd,
                empty.as_ptr(),
                libc::AT_FDCWD,
                tgt.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if r != 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    })?;
    drop(tree);
    Ok(())
}

/// Detach the mount at `target` inside the mount namespace of `pid`.
pub fn unmount_from(pid: u32, target: &str) -> Result<()> {
    let tgt = cstr(target)?;
    in_mount_ns_of(pid, move || {
        // SAFETY: valid C string prepared before fork.
        if unsafe { libc::umount2(tgt.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_the_roots_and_sane_targets() {
        let root = tempfile::tempdir().expect("tmp");
        let vol = root.path().join("vol");
        std::fs::create_dir(&vol).expect("vol");
        let roots = vec![root.path().to_path_buf()];
        let v = vol.to_str().expect("utf8");
        assert!(validate(v, "/mnt/data", &roots).is_ok());
        for bad_target in [
            "relative",
            "/",
            "/proc/x",
            "/mnt/../etc",
            "/.sandpool/x",
            "/dev",
        ] {
            assert!(validate(v, bad_target, &roots).is_err(), "{bad_target}");
        }
        assert!(
            validate("/etc", "/mnt/etc", &roots).is_err(),
            "outside the roots"
        );
        assert!(
            validate(root.path().to_str().expect("utf8"), "/mnt/r", &roots).is_err(),
            "the root itself"
        );
        let escape = format!("{v}/../../../etc");
        assert!(
            validate(&escape, "/mnt/e", &roots).is_err(),
            "no escape through .."
        );
        assert!(validate("/does/not/exist", "/mnt/x", &roots).is_err());
    }
}
