//! Pseudo-terminals for commands (E2B `pty` processes): open a master/slave
//! pair, make the slave the child's stdio and controlling terminal, and give
//! the master to tokio for non-blocking reads, writes and resizes.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::{
    fcntl::{FcntlArg, OFlag, fcntl, open},
    libc,
    pty::{grantpt, posix_openpt, ptsname_r, unlockpt},
    sys::stat::Mode,
};
use tokio::net::unix::pipe;

use crate::error::{Result, RuntimeError};

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

impl PtySize {
    /// A size from the request's (proto `uint32`) numbers, clamped to what a
    /// terminal can hold.
    pub fn new(cols: u32, rows: u32) -> Self {
        PtySize {
            cols: u16::try_from(cols).unwrap_or(u16::MAX),
            rows: u16::try_from(rows).unwrap_or(u16::MAX),
        }
    }
}

fn pty_err(what: &str, e: nix::Error) -> RuntimeError {
    RuntimeError::Io {
        context: format!("pty: {what}"),
        source: std::io::Error::from(e),
    }
}

/// A freshly opened terminal: the master (close-on-exec, non-blocking) and
/// the slave (close-on-exec; dup'ed onto the child's stdio).
pub(crate) struct OpenPty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Open a pseudo-terminal of `size`.
pub(crate) fn open_pty(size: PtySize) -> Result<OpenPty> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| pty_err("posix_openpt", e))?;
    grantpt(&master).map_err(|e| pty_err("grantpt", e))?;
    unlockpt(&master).map_err(|e| pty_err("unlockpt", e))?;
    let name = ptsname_r(&master).map_err(|e| pty_err("ptsname", e))?;
    let slave = open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| pty_err(&format!("opening {name}"), e))?;
    let master = OwnedFd::from(master);
    fcntl(
        &master,
        FcntlArg::F_SETFL(OFlag::O_RDWR | OFlag::O_NONBLOCK),
    )
    .map_err(|e| pty_err("making the master non-blocking", e))?;
    resize(&master, size)?;
    Ok(OpenPty { master, slave })
}

/// Set the terminal's window size (the kernel sends SIGWINCH to its
/// foreground process group).
pub(crate) fn resize(fd: &impl AsRawFd, size: PtySize) -> Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which is
    // valid for the duration of the call; the fd is owned by the caller.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(RuntimeError::Io {
            context: "pty: resizing the terminal".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Run `cmd` on the terminal's slave: stdin/stdout/stderr, a new session, and
/// the slave as its controlling terminal (so its process group is
/// the child's pid, as for other commands).
pub(crate) fn attach_slave(cmd: &mut tokio::process::Command, slave: OwnedFd) -> Result<()> {
    let dup = |what: &str| {
        slave.try_clone().map_err(|e| RuntimeError::Io {
            context: format!("pty: duplicating the slave for {what}"),
            source: e,
        })
    };
    cmd.stdin(dup("stdin")?)
        .stdout(dup("stdout")?)
        .stderr(slave);
    // SAFETY: the closure only calls async-signal-safe functions (setsid,
    // ioctl) and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// The master as a tokio reader and a writer (two descriptors of the same
/// terminal).
pub(crate) fn master_io(master: OwnedFd) -> Result<(pipe::Receiver, pipe::Sender)> {
    let io_err = |what: &str, e: std::io::Error| RuntimeError::Io {
        context: format!("pty: {what}"),
        source: e,
    };
    let writer_fd = master
        .try_clone()
        .map_err(|e| io_err("duplicating the master", e))?;
    let reader = pipe::Receiver::from_owned_fd_unchecked(master)
        .map_err(|e| io_err("registering the master", e))?;
    let writer = pipe::Sender::from_owned_fd_unchecked(writer_fd)
        .map_err(|e| io_err("registering the master", e))?;
    Ok((reader, writer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_clamp() {
        assert_eq!(PtySize::new(80, 24), PtySize { cols: 80, rows: 24 });
        assert_eq!(PtySize::new(70_000, 1).cols, u16::MAX);
    }

    #[test]
    fn opens_and_resizes() {
        let p = open_pty(PtySize::new(100, 30)).unwrap();
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize through a valid pointer.
        let rc = unsafe { libc::ioctl(p.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!((rc, ws.ws_col, ws.ws_row), (0, 100, 30));
        resize(&p.master, PtySize::new(7, 5)).unwrap();
        // SAFETY: as above.
        let rc = unsafe { libc::ioctl(p.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!((rc, ws.ws_col, ws.ws_row), (0, 7, 5));
    }
}
