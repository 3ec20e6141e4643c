//! The runtime's own file capabilities.
//!
//! Upstream's execd runs as root, so its file API sets any owner and group
//! and writes where root may. A sandbox of the unprivileged user runs this
//! runtime as uid 61000 with only `CAP_CHOWN`, `CAP_DAC_OVERRIDE` and
//! `CAP_FOWNER` (the node agent hands them over as ambient capabilities, the
//! only kind that survives the exec of a non-root process). The runtime keeps
//! them in its effective and permitted sets for its file operations, and
//! [`keep_for_self_only`] clears the ambient and inheritable sets first thing,
//! so everything it starts (commands, sessions, kernels, the entrypoint) execs
//! with no capabilities at all. A process of the sandbox cannot take them over
//! either: ptrace and `/proc/<pid>/mem` need a superset of the target's
//! permitted set.

use nix::libc;
use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capget() -> io::Result<[CapData; 2]> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: the header and the two data words are the layout capget(2)
    // expects for version 3; both outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    if rc == 0 {
        Ok(data)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn capset(data: &[CapData; 2]) -> io::Result<()> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: as in `capget`; the kernel only reads `data`.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// This thread's effective capability set as one 64-bit mask.
pub fn effective() -> io::Result<u64> {
    let d = capget()?;
    Ok(u64::from(d[0].effective) | (u64::from(d[1].effective) << 32))
}

/// Clear the ambient and inheritable sets so that no program this process
/// starts inherits a capability; the effective and permitted sets stay.
/// Call it before any thread exists (both sets are per thread). Returns the
/// effective set that stays.
pub fn keep_for_self_only() -> io::Result<u64> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    // EINVAL: a kernel without ambient capabilities has none to clear
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    let mut data = capget()?;
    if data.iter().any(|d| d.inheritable != 0) {
        for d in &mut data {
            d.inheritable = 0;
        }
        capset(&data)?;
    }
    effective()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_inherit_nothing_and_the_effective_set_stays() {
        // in a thread of its own: the sets are per thread
        std::thread::spawn(|| {
            let before = effective().unwrap();
            assert_eq!(keep_for_self_only().unwrap(), before);
            let d = capget().unwrap();
            assert!(d.iter().all(|d| d.inheritable == 0));
            let out = std::process::Command::new("grep")
                .args(["^CapAmb:", "/proc/self/status"])
                .output()
                .unwrap();
            let line = String::from_utf8_lossy(&out.stdout);
            assert_eq!(line.split_whitespace().nth(1), Some("0000000000000000"));
        })
        .join()
        .unwrap();
    }
}
