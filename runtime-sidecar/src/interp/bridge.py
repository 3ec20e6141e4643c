# sandpool code-interpreter bridge: one process per context, driving a real
# Jupyter kernel (ipykernel, through jupyter_client) when this Python has
# both; otherwise it runs the plain driver given as argv[1] instead.
# Reads one JSON request per line on stdin ({"code", "language", "env"}) and
# writes JSON lines to stdout:
#   {"type": "stdout"|"stderr", "text": ...}
#   {"type": "result", "data": {mime: value, ...}, "is_main_result": bool}
#     (execute_result: the cell's value, is_main_result; display_data: not)
#   {"type": "error", "name": ..., "value": ..., "traceback": [line, ...]}
#   {"type": "end", "execution_count": n}
# Bash code runs in bash, outside the kernel (no bash kernel is installed).
# SIGINT interrupts the running cell: a kernel interrupt (KeyboardInterrupt
# in the kernel), or the end of the running bash.
import json, os, queue, signal, subprocess, shutil, sys

# an interrupt before a cell runs (e.g. while the kernel starts) is a no-op
signal.signal(signal.SIGINT, lambda signum, frame: None)

try:
    import importlib.util
    from jupyter_client.manager import start_new_kernel
    _jupyter = importlib.util.find_spec("ipykernel") is not None  # the kernel started below
except ImportError:
    _jupyter = False
if not _jupyter:
    _driver = sys.argv[1] if len(sys.argv) > 1 else ""
    del sys.argv[1:]
    exec(compile(_driver, "<driver>", "exec"))
    sys.exit(0)

del sys.argv[1:]
_out = os.fdopen(os.dup(1), "w", buffering=1)
_null = os.open(os.devnull, os.O_RDWR)
os.dup2(_null, 1)  # the kernel's own chatter goes nowhere


def _emit(obj):
    _out.write(json.dumps(obj) + "\n")
    _out.flush()


_km, _kc = start_new_kernel(kernel_name="python3", stderr=_null, stdout=_null)
_running = None  # "kernel" or a bash Popen while a cell runs
_count = 0


def _interrupt(signum, frame):
    running = _running
    if running == "kernel":
        _km.interrupt_kernel()
    elif running is not None:
        running.kill()


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
        if silent:
            pass
        elif kind == "stream":
            _emit({"type": c.get("name", "stdout"), "text": c.get("text", "")})
        elif kind in ("execute_result", "display_data"):
            ev = {"type": "result", "data": c.get("data", {}), "is_main_result": kind == "execute_result"}
            if kind == "execute_result":
                ev["execution_count"] = c.get("execution_count")
            _emit(ev)
        elif kind == "error":
            _emit({"type": "error", "name": c.get("ename", ""), "value": c.get("evalue", ""), "traceback": c.get("traceback", [])})
        if kind == "status" and c.get("execution_state") == "idle":
            break
    while True:
        try:
            reply = _kc.get_shell_msg(timeout=5)
        except queue.Empty:
            return None
        if reply.get("parent_header", {}).get("msg_id") == msg_id:
            return reply["content"].get("execution_count")


def _run_bash(code):
    global _running
    bash = shutil.which("bash") or "/bin/sh"
    p = subprocess.Popen([bash, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    _running = p
    out, err = p.communicate()
    _running = None
    if out:
        _emit({"type": "stdout", "text": out})
    if err:
        _emit({"type": "stderr", "text": err})


def _set_env(env):
    """Set `env` in the kernel (and here, for bash); returns the old values."""
    if not env:
        return {}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _run_kernel("import os as __sp_os\n__sp_os.environ.update(%s)\ndel __sp_os" % json.dumps(env), silent=True)
    return old


def _restore_env(old):
    if not old:
        return
    drop = [k for k, v in old.items() if v is None]
    keep = {k: v for k, v in old.items() if v is not None}
    for k in drop:
        os.environ.pop(k, None)
    os.environ.update(keep)
    code = "import os as __sp_os\n__sp_os.environ.update(%s)\nfor __sp_k in %s: __sp_os.environ.pop(__sp_k, None)\ndel __sp_os" % (json.dumps(keep), json.dumps(drop))
    _run_kernel(code, silent=True)


for line in os.fdopen(0, "r"):
    try:
        req = json.loads(line)
    except ValueError:
        continue
    env = {str(k): str(v) for k, v in (req.get("env") or {}).items()}
    old = _set_env(env)
    if req.get("language") == "bash":
        _count += 1
        _run_bash(req.get("code", ""))
    else:
        _running = "kernel"
        n = _run_kernel(req.get("code", ""))
        _running = None
        if n:
            _count = n
    _restore_env(old)
    _emit({"type": "end", "execution_count": _count})
