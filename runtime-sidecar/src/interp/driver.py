# sandpool code-interpreter driver: one Python process per context.
# Reads one JSON request per line on stdin ({"code": ...}), runs it in a
# persistent namespace like a notebook cell (the value of a final expression
# is the result), and writes JSON lines to the original stdout:
#   {"type": "stdout"|"stderr", "text": ...}
#   {"type": "result", "data": {"text/plain": repr(value)}, "is_main_result": true}
#   {"type": "error", "name": ..., "value": ..., "traceback": [line, ...]}
#   {"type": "end", "execution_count": n}
# A line `!cmd` (IPython's shell escape) runs `cmd` in sh, and a request with
# "language": "bash" runs its code in bash; their output is the cell's
# stdout and stderr. A request's "sandbox_env" replaces the sandbox-level env
# vars (the bridge's `_globals`) for good, before the cell's own "env".
import ast, json, os, re, shutil, signal, subprocess, sys, traceback

_out = os.fdopen(os.dup(1), "w", buffering=1)
_null = open(os.devnull, "r")


def _emit(obj):
    _out.write(json.dumps(obj) + "\n")
    _out.flush()


class _Stream:
    """Line-buffered: print("x") is one "x\n" event, as in Jupyter."""

    def __init__(self, kind):
        self.kind = kind
        self.buf = ""

    def write(self, s):
        self.buf += s
        cut = self.buf.rfind("\n")
        if cut >= 0:
            _emit({"type": self.kind, "text": self.buf[: cut + 1]})
            self.buf = self.buf[cut + 1 :]
        return len(s)

    def flush(self):
        if self.buf:
            _emit({"type": self.kind, "text": self.buf})
            self.buf = ""

    def isatty(self):
        return False


_ns = {"__name__": "__main__", "__sandpool_shell__": None}
_count = 0
# the sandbox-level env vars this process started with (the bridge's)
_globals = dict(globals().get("_globals") or {})
_running = False


_BANG = re.compile(r"^([ \t]*)!(.*)$", re.M)


def _shell(cmd, shell="/bin/sh"):
    """Run `cmd` in `shell` (bash cells: in bash; `!cmd` lines: in sh)."""
    argv = [shutil.which(shell) or "/bin/sh", "-c", cmd]
    done = subprocess.run(argv, capture_output=True, text=True, errors="replace")
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)


def _escapes(code):
    """`!cmd` lines as calls of the shell helper (each at its own indent)."""
    return _BANG.sub(lambda m: m.group(1) + "__sandpool_shell__(" + repr(m.group(2)) + ")", code)


def _interrupt(signum, frame):
    """SIGINT (the client of a cell left): a KeyboardInterrupt in the running
    cell, once; between cells it is ignored, so the loop below never dies."""
    global _running
    if _running:
        _running = False
        raise KeyboardInterrupt


signal.signal(signal.SIGINT, _interrupt)
sys.stdin = _null
sys.stdout = _Stream("stdout")
sys.stderr = _Stream("stderr")

for line in os.fdopen(0, "r"):
    try:
        req = json.loads(line)
    except ValueError:
        continue
    _count += 1
    if isinstance(req.get("sandbox_env"), dict):
        _new = {str(k): str(v) for k, v in req["sandbox_env"].items()}
        for k in [k for k in _globals if k not in _new]:
            os.environ.pop(k, None)
        os.environ.update(_new)
        _globals = _new
    # this execution's env vars, put back as they were once it is done
    saved = {}
    for k, v in (req.get("env") or {}).items():
        k = str(k)
        saved.setdefault(k, os.environ.get(k))
        os.environ[k] = str(v)
    _ns["__sandpool_shell__"] = _shell
    code = req.get("code", "")
    if req.get("language") == "bash":
        code = "__sandpool_shell__(" + repr(code) + ", 'bash')"
    else:
        code = _escapes(code)
    value = None
    try:
        _running = True
        tree = ast.parse(code, "<cell>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<cell>", "exec"), _ns)
        if last is not None:
            value = eval(compile(last, "<cell>", "eval"), _ns)
        _running = False
        if value is not None:
            _emit({"type": "result", "data": {"text/plain": repr(value)}, "is_main_result": True, "execution_count": _count})
    except BaseException as e:  # noqa: BLE001 - report everything, like a notebook
        _running = False
        tb = traceback.format_exception(type(e), e, e.__traceback__)
        _emit({"type": "error", "name": type(e).__name__, "value": str(e), "traceback": "".join(tb).rstrip("\n").split("\n")})
    sys.stdout.flush()
    sys.stderr.flush()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _emit({"type": "end", "execution_count": _count})
