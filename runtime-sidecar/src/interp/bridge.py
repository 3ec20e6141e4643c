# sandpool code-interpreter bridge: one process per context, driving a real
# Jupyter kernel (through jupyter_client) for the context's language when this
# Python has jupyter_client and the kernel is installed; a Python context
# without them runs the plain driver given as argv[1] instead.
# Reads one JSON request per line on stdin ({"code", "language", "env"}) and
# writes JSON lines to stdout:
#   {"type": "stdout"|"stderr", "text": ...}
#   {"type": "result", "data": {mime: value, ...}, "is_main_result": bool}
#     (execute_result: the cell's value, is_main_result; display_data: not)
#   {"type": "error", "name": ..., "value": ..., "traceback": [line, ...]}
#   {"type": "end", "execution_count": n}
# Bash code runs in one long-lived bash beside the kernel (no bash kernel is
# installed), whose variables and working directory persist; a bash context
# starts no kernel at all.
# SIGINT interrupts the running cell: a kernel interrupt (KeyboardInterrupt
# in the kernel), or SIGINT to the bash cell's processes.
# argv[2], when not empty, is Python run once in the kernel when it starts
# (e2b_kernel.py in E2B Python contexts), in its own namespace, silently.
# argv[3] is the context's language (python, bash, javascript, typescript,
# r, java; default python), argv[4] the sandbox-level environment variables
# as a JSON object (a Java kernel gets them as system properties, as E2B's).
# A request's "sandbox_env" (sent only when they changed since this process
# started: envd's /init after a warm context's kernel was started) replaces
# those sandbox-level variables for good, before the cell's own "env".
import json, os, queue, selectors, signal, subprocess, shutil, sys

# an interrupt before a cell runs (e.g. while the kernel starts) is a no-op
signal.signal(signal.SIGINT, lambda signum, frame: None)

_language = (sys.argv[3] if len(sys.argv) > 3 else "") or "python"
try:
    _globals = {str(k): str(v) for k, v in json.loads(sys.argv[4]).items()}
except (IndexError, ValueError, AttributeError):
    _globals = {}
# the Jupyter kernel (its kernelspec name) of each language; bash has none
_KERNELS = {"python": "python3", "javascript": "javascript", "typescript": "javascript", "r": "ir", "java": "java"}
try:
    import importlib.util
    from jupyter_client.manager import start_new_kernel
    # the kernel started below: ipykernel for Python, a kernelspec otherwise
    _jupyter = _language == "bash" or (importlib.util.find_spec("ipykernel") is not None if _language == "python" else True)
except ImportError:
    _jupyter = _language == "bash"
if not _jupyter:
    _driver = sys.argv[1] if len(sys.argv) > 1 else ""
    del sys.argv[1:]
    exec(compile(_driver, "<driver>", "exec"))
    sys.exit(0)

_startup = sys.argv[2] if len(sys.argv) > 2 else ""
del sys.argv[1:]
_out = os.fdopen(os.dup(1), "w", buffering=1)
_null = os.open(os.devnull, os.O_RDWR)
os.dup2(_null, 1)  # the kernel's own chatter goes nowhere


def _emit(obj):
    _out.write(json.dumps(obj) + "\n")
    _out.flush()


if _language == "bash":
    _km = _kc = None
else:
    try:
        _km, _kc = start_new_kernel(kernel_name=_KERNELS.get(_language, _language), stderr=_null, stdout=_null)
    except Exception as e:  # noqa: BLE001 - every cell then says why
        _km = _kc = None
        _no_kernel = "the %s kernel did not start: %s" % (_language, e)
_running = None  # "kernel" or a bash Popen while a cell runs
_count = 0


def _interrupt(signum, frame):
    running = _running
    if running == "kernel":
        _km.interrupt_kernel()
    elif running is not None:
        running.interrupt()


signal.signal(signal.SIGINT, _interrupt)


def _run_kernel(code, silent=False):
    """Run `code` in the kernel; forward its outputs unless `silent`.
    Returns the execution count of the reply (None when there was none)."""
    msg_id = _kc.execute(code, silent=silent, store_history=not silent, allow_stdin=False, stop_on_error=True)
    while True:
        try:
            msg = _kc.get_iopub_msg(timeout=0.5)
        except queue.Empty:
            if not _km.is_alive():
                _emit({"type": "error", "name": "KernelDied", "value": "the kernel died", "traceback": []})
                _emit({"type": "end", "execution_count": _count})
                sys.exit(1)
            continue
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, c = msg["msg_type"], msg["content"]
        if not silent:
            _forward(kind, c)
        if kind == "status" and c.get("execution_state") == "idle":
            break
    n = _reply_count(msg_id)
    if not silent and _language in ("javascript", "typescript"):
        # Deno's kernel may publish a cell's result or output just after its
        # idle status: take what follows for this cell until the stream is quiet
        while True:
            try:
                msg = _kc.get_iopub_msg(timeout=0.05)
            except queue.Empty:
                break
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                _forward(msg["msg_type"], msg["content"])
    return n


def _forward(kind, c):
    """Emit one iopub message of the running cell."""
    if kind == "stream":
        _emit({"type": c.get("name", "stdout"), "text": c.get("text", "")})
    elif kind in ("execute_result", "display_data"):
        ev = {"type": "result", "data": c.get("data", {}), "is_main_result": kind == "execute_result"}
        if kind == "execute_result":
            ev["execution_count"] = c.get("execution_count")
        _emit(ev)
    elif kind == "error":
        _emit({"type": "error", "name": c.get("ename", ""), "value": c.get("evalue", ""), "traceback": c.get("traceback", [])})


def _reply_count(msg_id):
    """The execution count of the cell's shell reply (None when there was none)."""
    while True:
        try:
            reply = _kc.get_shell_msg(timeout=5)
        except queue.Empty:
            return None
        if reply.get("parent_header", {}).get("msg_id") == msg_id:
            return reply["content"].get("execution_count")


class _Bash:
    """One long-lived bash per context: variables, functions and `cd` persist
    between cells, as in a bash kernel. A cell is sourced from a file (stdin
    is /dev/null) and ends with a marker line on stdout and stderr; an
    interrupt is SIGINT to bash's process group (bash traps it and lives)."""

    def __init__(self):
        argv = [shutil.which("bash") or "/bin/sh", "--noprofile", "--norc"]
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.file = "/tmp/.sandpool-cell-%d.sh" % self.p.pid
        self.mark = ("__sandpool_end_%s__" % os.urandom(12).hex()).encode()
        # an interrupt ends the cell (its running command, then the rest)
        self.p.stdin.write(b"trap 'return 130 2>/dev/null' INT\n")

    def interrupt(self):
        try:
            os.killpg(self.p.pid, signal.SIGINT)
        except OSError:
            pass

    def run(self, code):
        """Run one cell, streaming its output; False when bash died."""
        mark = self.mark
        with open(self.file, "w") as f:
            f.write(code + "\n")
        m = mark.decode()
        line = ". %s </dev/null; printf '%%s\\n' %s; printf '%%s\\n' %s >&2\n" % (self.file, m, m)
        try:
            self.p.stdin.write(line.encode())
            self.p.stdin.flush()
        except OSError:
            return False
        pending = {self.p.stdout: ("stdout", b""), self.p.stderr: ("stderr", b"")}
        sel = selectors.DefaultSelector()
        for f in pending:
            sel.register(f, selectors.EVENT_READ)
        open_streams = 2
        while open_streams:
            for key, _ in sel.select():
                name, buf = pending[key.fileobj]
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    return False
                buf += chunk
                end = buf.find(mark)
                done = end >= 0
                out, rest = (buf[:end], b"") if done else self._complete(buf, mark)
                if out:
                    _emit({"type": name, "text": out.decode("utf-8", "replace")})
                pending[key.fileobj] = (name, rest)
                if done:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
        return True

    @staticmethod
    def _complete(buf, mark):
        """What of `buf` can be sent now: its whole lines (a partial last
        line waits: it may end where the end marker begins)."""
        cut = buf.rfind(b"\n") + 1
        return buf[:cut], buf[cut:]


_bash = None


def _run_bash_once(code):
    """A bash cell with its own env vars (E2B's per-execution `envs`): a new
    bash with this process's environment, which holds them now."""
    global _running
    argv = [shutil.which("bash") or "/bin/sh", "-c", code]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    class _Group:
        def interrupt(self):
            try:
                os.killpg(p.pid, signal.SIGINT)
            except OSError:
                pass

    _running = _Group()
    out, err = p.communicate()
    _running = None
    for name, data in (("stdout", out), ("stderr", err)):
        if data:
            _emit({"type": name, "text": data.decode("utf-8", "replace")})


def _run_bash(code):
    global _running, _bash
    if _bash is None or _bash.p.poll() is not None:
        _bash = _Bash()
    _running = _bash
    alive = _bash.run(code)
    _running = None
    if not alive:
        _bash = None
        _emit({"type": "error", "name": "BashExited", "value": "bash exited; the next bash cell starts a new one", "traceback": []})


def _set_code(env):
    """Kernel code setting `env` (name -> value) as the language has it:
    the process environment, or, in Java, system properties (as E2B's)."""
    q = json.dumps
    if _language == "python":
        return "import os as __sp_os\n__sp_os.environ.update(%s)\ndel __sp_os" % q(env)
    if _language in ("javascript", "typescript"):
        return "\n".join("process.env[%s] = %s;" % (q(k), q(v)) for k, v in env.items())
    if _language == "r":
        return "\n".join("invisible(do.call(Sys.setenv, setNames(list(%s), %s)))" % (q(v), q(k)) for k, v in env.items())
    if _language == "java":
        return "\n".join("System.setProperty(%s, %s);" % (q(k), q(v)) for k, v in env.items())
    return ""


def _unset_code(names):
    """Kernel code removing the variables `names`."""
    q = json.dumps
    if _language == "python":
        return "import os as __sp_os\nfor __sp_k in %s: __sp_os.environ.pop(__sp_k, None)\ndel __sp_os" % q(names)
    if _language in ("javascript", "typescript"):
        return "\n".join("delete process.env[%s];" % q(k) for k in names)
    if _language == "r":
        return "\n".join("invisible(Sys.unsetenv(%s))" % q(k) for k in names)
    if _language == "java":
        return "\n".join("System.clearProperty(%s);" % q(k) for k in names)
    return ""


# Java: the kernel's System.out and System.err print a line as E2B's kernel
# (IJava on JDK 11) does: println's text, then its line separator, each
# flushed, so each its own stream message (`println("a")` streams "a" and
# "\n"). JJava's PrintStream (the plain class on the JDK 17 here) writes the
# two at once, and a PrintStream subclass takes JDK 11's path. Its
# toString stays a PrintStream's (printf's result shows it).
_JAVA_STREAMS = """{
    var io = org.dflib.jjava.jupyter.kernel.BaseKernel.notebookKernel().getIO();
    for (var names : new String[][] {{"out", "jupyterOut"}, {"err", "jupyterErr"}}) {
        var sink = org.dflib.jjava.jupyter.kernel.JupyterIO.class.getDeclaredField(names[1]);
        sink.setAccessible(true);
        var stream = org.dflib.jjava.jupyter.kernel.JupyterIO.class.getDeclaredField(names[0]);
        stream.setAccessible(true);
        stream.set(io, new java.io.PrintStream((java.io.OutputStream) sink.get(io), true, java.nio.charset.StandardCharsets.UTF_8) {
            public String toString() { return "java.io.PrintStream@" + Integer.toHexString(hashCode()); }
        });
    }
}"""


def _in_kernel(code):
    if _kc is not None and code:
        _run_kernel(code, silent=True)


def _set_env(env):
    """Set `env` in the kernel (and here, for bash); returns the old values:
    the sandbox-level ones (a Java kernel's properties) or this process's."""
    if not env:
        return {}
    base = _globals if _language == "java" else os.environ
    old = {k: base.get(k) for k in env}
    os.environ.update(env)
    _in_kernel(_set_code(env))
    return old


def _restore_env(old):
    if not old:
        return
    drop = [k for k, v in old.items() if v is None]
    keep = {k: v for k, v in old.items() if v is not None}
    for k in drop:
        os.environ.pop(k, None)
    os.environ.update(keep)
    _in_kernel("\n".join(c for c in (_set_code(keep) if keep else "", _unset_code(drop) if drop else "") if c))


def _set_sandbox_env(new):
    """Replace the sandbox-level env vars (`_globals`) with `new`, here and in
    the kernel: those gone are unset, the others set."""
    global _globals
    new = {str(k): str(v) for k, v in new.items()}
    gone = [k for k in _globals if k not in new]
    for k in gone:
        os.environ.pop(k, None)
    os.environ.update(new)
    _in_kernel("\n".join(c for c in (_unset_code(gone) if gone else "", _set_code(new) if new else "") if c))
    _globals = new


if _startup and _kc is not None and _language == "python":
    _run_kernel("exec(compile(%r, '<sandpool-startup>', 'exec'), {'__name__': '__sandpool_startup__'})" % _startup, silent=True)
del _startup
if _language == "java" and _kc is not None:
    _in_kernel(_JAVA_STREAMS + "\n" + _set_code(_globals))

for line in os.fdopen(0, "r"):
    try:
        req = json.loads(line)
    except ValueError:
        continue
    env = {str(k): str(v) for k, v in (req.get("env") or {}).items()}
    if isinstance(req.get("sandbox_env"), dict):
        _set_sandbox_env(req["sandbox_env"])
    if req.get("language") != "bash" and _kc is None:
        _emit({"type": "error", "name": "KernelError", "value": _no_kernel, "traceback": []})
        _emit({"type": "end", "execution_count": _count})
        continue
    old = _set_env(env)
    if req.get("language") == "bash":
        _count += 1
        (_run_bash_once if env else _run_bash)(req.get("code", ""))
    else:
        _running = "kernel"
        n = _run_kernel(req.get("code", ""))
        _running = None
        if n:
            _count = n
    _restore_env(old)
    _emit({"type": "end", "execution_count": _count})
