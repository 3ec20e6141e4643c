"""The real ``e2b-code-interpreter`` (2.11.5) SDK against sandpool's code
interpreter (port 49999), on what upstream's own tests expect of it: a
result's text is the value without its quotes, the sandbox's ``envs`` are
seen by the code, an execution's ``envs`` hold for that execution only, a
default Python context is listed from the start, and a client timeout
interrupts the execution so the next one runs at once."""

from __future__ import annotations

import time

import pytest
from e2b import TimeoutException

from sandpool_platform import PY_POOL_NAME, Sandpool

code_interpreter = pytest.importorskip("e2b_code_interpreter")


def test_interp_env_vars_and_result_text(e2b_env: Sandpool):
    sbx = code_interpreter.Sandbox.create(PY_POOL_NAME, envs={"TEST_ENV_VAR": "supertest"}, timeout=180)
    try:
        assert sbx.run_code("x = 'bar'\nx").text == "bar"
        show = "import os; os.getenv('TEST_ENV_VAR')"
        assert sbx.run_code(show).text == "supertest", "the sandbox's envs reach the interpreter"
        assert sbx.run_code(show, envs={"TEST_ENV_VAR": "overwrite"}).text == "overwrite"
        assert sbx.run_code(show).text == "supertest", "an execution's envs are undone after it"
        assert sbx.run_code("import os; os.getenv('FOO')", envs={"FOO": "bar"}).text == "bar"
        assert sbx.run_code("import os; os.getenv('FOO', 'default')").text == "default"
    finally:
        sbx.kill()


def test_interp_default_context_and_client_timeout(e2b_env: Sandpool):
    sbx = code_interpreter.Sandbox.create(PY_POOL_NAME, timeout=180)
    try:
        listed = sbx.list_code_contexts()
        assert [(c.language, c.cwd) for c in listed] == [("python", "/home/user")], listed
        made = sbx.create_code_context()
        assert sbx.list_code_contexts()[-1].id == made.id, "the newest context is listed last"

        sbx.run_code("kept = 41")
        with pytest.raises(TimeoutException):
            sbx.run_code("import time; time.sleep(300)", timeout=3)
        started = time.monotonic()
        after = sbx.run_code("kept + 1", timeout=20)
        assert after.text == "42", "interrupted, not restarted: the context keeps its state"
        assert time.monotonic() - started < 10, "the next execution did not wait for the abandoned one"
    finally:
        sbx.kill()
