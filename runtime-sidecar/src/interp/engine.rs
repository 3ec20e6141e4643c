//! The engine behind both code interpreters (E2B's on 49999, execd's
//! `/code`): one process per context running `bridge.py`. Where the
//! sandbox's Python has `jupyter_client` and `ipykernel` (the builtin
//! code-interpreter image) that process drives a real Jupyter kernel of the
//! context's language (Python; JavaScript/TypeScript, R and Java where the
//! image has their kernelspecs), so results carry whole MIME bundles
//! (text/plain, text/html, image/png, ...); elsewhere a Python context runs
//! `driver.py` (a plain Python loop: text/plain results only). Both speak
//! the same JSON lines (see `bridge.py`).
//!
//! An E2B context's kernel also runs `e2b_kernel.py` when it starts: the
//! formatters behind E2B's `chart` (matplotlib figures, `e2b/chart`) and
//! `data` (pandas DataFrames, `e2b/data`) results, and PIL's `Image.save`
//! displaying the image, as E2B's own kernel does. OpenSandbox's `/code`
//! contexts run without it (upstream's execd has none of these).

use std::{collections::HashMap, process::Stdio};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, ChildStdout},
};

const BRIDGE: &str = include_str!("bridge.py");
const DRIVER: &str = include_str!("driver.py");
const E2B_KERNEL: &str = include_str!("e2b_kernel.py");

/// Whose code interpreter a context's process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// E2B's (port 49999): the kernel has E2B's formatters.
    E2b,
    /// OpenSandbox execd's `/code`: the plain kernel.
    Execd,
}

impl Flavour {
    /// The bridge's arguments after its own code: the plain driver, then
    /// the kernel's start-up code (empty for none).
    pub(crate) fn startup_args(self) -> [&'static str; 2] {
        match self {
            Flavour::E2b => [DRIVER, E2B_KERNEL],
            Flavour::Execd => [DRIVER, ""],
        }
    }
}

/// A context's running process.
pub struct Kernel {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    /// The sandbox-level env vars the process has (those it started with,
    /// or a later request's `sandbox_env`).
    pub env: HashMap<String, String>,
}

/// Names whose value an interpreter (or a library it loads as it starts)
/// reads only at its start: a process that started without the sandbox's
/// value of one of them is replaced, never updated in place.
const START_ONLY_PREFIXES: &[&str] = &["PYTHON", "LD_", "JUPYTER", "IPYTHON", "MPL", "LC_"];
const START_ONLY_NAMES: &[&str] = &["HOME", "TZ", "LANG", "LANGUAGE", "TMPDIR", "USER"];

/// Whether a process with sandbox-level env vars `had` can take `now` in
/// place (its `os.environ` set and unset, `sandbox_env` of a request): not
/// when a name that differs is read only at start-up.
pub fn env_update_in_place(had: &HashMap<String, String>, now: &HashMap<String, String>) -> bool {
    let start_only = |k: &str| {
        START_ONLY_NAMES.contains(&k) || START_ONLY_PREFIXES.iter().any(|p| k.starts_with(p))
    };
    had.keys()
        .chain(now.keys())
        .filter(|k| had.get(*k) != now.get(*k))
        .all(|k| !start_only(k))
}

/// Whether the code interpreter starts its default Python context's
/// kernel when the runtime starts (`Config::interp_prestart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Prestart {
    /// Where the image has a Jupyter Python kernel (the code-interpreter
    /// image): there a first run would wait ~1 s for it.
    Auto,
    On,
    Off,
}

impl Prestart {
    pub fn enabled(self) -> bool {
        match self {
            Prestart::On => true,
            Prestart::Off => false,
            Prestart::Auto => python().is_some() && has_kernelspec("python3"),
        }
    }
}

fn has_kernelspec(name: &str) -> bool {
    KERNELSPEC_DIRS.iter().any(|d| {
        std::path::Path::new(d)
            .join(name)
            .join("kernel.json")
            .is_file()
    })
}

/// Where Jupyter looks for kernelspecs in an image (system-wide).
const KERNELSPEC_DIRS: &[&str] = &[
    "/usr/local/share/jupyter/kernels",
    "/usr/share/jupyter/kernels",
];

/// The kernelspec a context of `language` (canonical name) runs, `None`
/// for bash (a shell beside the kernel) and Python (ipykernel, or the
/// plain driver where the image has none).
pub fn kernelspec(language: &str) -> Option<&'static str> {
    match language {
        "javascript" | "typescript" => Some("javascript"),
        "r" => Some("ir"),
        "java" => Some("java"),
        _ => None,
    }
}

/// Whether this sandbox can run contexts of `language` (canonical name):
/// Python and bash with a `python3`, the others where the image installed
/// their Jupyter kernel (the builtin code-interpreter image has them).
pub fn available(language: &str) -> bool {
    let spec = match language {
        "python" | "bash" => return python().is_some(),
        other => kernelspec(other),
    };
    spec.is_some_and(|name| python().is_some() && has_kernelspec(name))
}

/// The sandbox's `python3`, if it has one.
fn python() -> Option<&'static str> {
    ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

impl Kernel {
    /// A context's process for `language` (canonical name) in `cwd` (`/`
    /// when that is no directory), with the sandbox-level `env` on top of
    /// the runtime's environment, serving `flavour`.
    pub async fn spawn(
        cwd: &str,
        env: HashMap<String, String>,
        flavour: Flavour,
        language: &str,
    ) -> Result<Kernel, String> {
        let py = python().ok_or(
            "python3 is not installed in this sandbox (use a Python image, e.g. the `code-interpreter` builtin)",
        )?;
        let dir = if std::path::Path::new(cwd).is_dir() {
            cwd
        } else {
            "/"
        };
        let globals = serde_json::to_string(&env).unwrap_or_else(|_| "{}".into());
        let mut child = tokio::process::Command::new(py)
            .args(["-u", "-c", BRIDGE])
            .args(flavour.startup_args())
            .args([language, globals.as_str()])
            .envs(&env)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {py}: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        Ok(Kernel {
            child,
            stdin,
            stdout,
            env,
        })
    }

    /// Send one request (`{"code", "language", "env"}`); `false` when the
    /// process is gone.
    pub async fn send(&mut self, req: &Value) -> bool {
        let mut msg = serde_json::to_vec(req).unwrap_or_default();
        msg.push(b'\n');
        self.stdin.write_all(&msg).await.is_ok() && self.stdin.flush().await.is_ok()
    }

    /// The next event of the running cell; `None` when the process exited.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let line = self.stdout.next_line().await.ok()??;
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                return Some(v);
            }
        }
    }

    /// Interrupt the running cell (SIGINT to the context's process: a
    /// kernel interrupt, a `KeyboardInterrupt` in the cell). Always `true`.
    pub fn interrupt(&self) -> bool {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            interrupt_pid(pid);
        }
        true
    }

    /// The process id, for an interrupt sent without holding the kernel.
    pub fn pid(&self) -> Option<i32> {
        self.child.id().and_then(|p| i32::try_from(p).ok())
    }
}

/// SIGINT to `pid` (a context's process).
pub fn interrupt_pid(pid: i32) {
    use nix::sys::signal::{Signal, kill};
    let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGINT);
}

/// Whether an engine event ends its cell.
pub fn is_end(ev: &Value) -> bool {
    ev["type"] == "end"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_names_read_after_start_up_are_updated_in_place() {
        let had = env(&[("A", "1"), ("PYTHONPATH", "/p")]);
        assert!(env_update_in_place(&had, &had));
        // added, changed or removed ordinary names
        assert!(env_update_in_place(
            &had,
            &env(&[("A", "2"), ("PYTHONPATH", "/p"), ("B", "x")])
        ));
        assert!(env_update_in_place(&had, &env(&[("PYTHONPATH", "/p")])));
        // a start-only name added, changed or removed
        for now in [
            env(&[("A", "1")]),
            env(&[("A", "1"), ("PYTHONPATH", "/q")]),
            env(&[("A", "1"), ("PYTHONPATH", "/p"), ("LD_PRELOAD", "x")]),
            env(&[("A", "1"), ("PYTHONPATH", "/p"), ("HOME", "/h")]),
            env(&[("A", "1"), ("PYTHONPATH", "/p"), ("LC_ALL", "C")]),
        ] {
            assert!(!env_update_in_place(&had, &now), "{now:?}");
        }
    }
}
