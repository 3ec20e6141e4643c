"""The real ``e2b-code-interpreter`` SDK running E2B's other languages on the
builtin code-interpreter image: JavaScript and TypeScript (Deno's Jupyter
kernel), R (IRkernel) and Java (JJava), each a Jupyter kernel per context as
Python's is. As on E2B, a default Python and a default JavaScript context
exist from the start, a run naming a language uses that language's default
context in ``/home/user``, sandbox-level envs reach every kernel (Java's as
system properties, as E2B sets them) and an execution's ``envs`` are undone
after it. The image is built on first use (minutes; cached in
target/sandpool-image-cache)."""

from __future__ import annotations

import pytest

from sandpool_platform import PY_POOL_NAME, Sandpool
from sandpool_pytest_helpers import per_test_watchdog

code_interpreter = pytest.importorskip("e2b_code_interpreter")
IMAGE_KEY = "e2b.agents.kruise.io/image"


@pytest.fixture(autouse=True)
def _per_test_timeout():
    """The conftest's watchdog, with time for the image's first build."""
    yield from per_test_watchdog(1200)


@pytest.fixture(scope="module")
def sbx(sandpool: Sandpool):
    env = {"E2B_API_URL": sandpool.url, "E2B_DOMAIN": sandpool.domain,
           "E2B_SANDBOX_URL": sandpool.url, "E2B_API_KEY": sandpool.api_key}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        s = code_interpreter.Sandbox.create(PY_POOL_NAME, metadata={IMAGE_KEY: "code-interpreter"},
                                            envs={"TEST_ENV_VAR": "supertest"},
                                            timeout=900, request_timeout=900)
        try:
            yield s
        finally:
            s.kill()


def test_default_python_and_javascript_contexts_are_listed_from_the_start(sbx):
    listed = [(c.language, c.cwd) for c in sbx.list_code_contexts()]
    assert listed[:2] == [("python", "/home/user"), ("javascript", "/home/user")], listed


def test_javascript_runs_in_deno_with_esm_imports_and_top_level_await(sbx):
    assert sbx.run_code("console.log('Hello, World!')", language="js").logs.stdout == ["Hello, World!\n"]
    esm = sbx.run_code("import { readFileSync } from 'fs'\nconsole.log(typeof readFileSync)", language="js")
    assert esm.logs.stdout == ["function\n"], esm
    assert sbx.run_code("await Promise.resolve('Hello World!')", language="js").text == "Hello World!"
    assert sbx.run_code("process.cwd()", language="javascript").text == "/home/user"
    # state persists in the default context, errors carry the kernel's name
    sbx.run_code("globalThis.kept = 41", language="js")
    assert sbx.run_code("kept + 1", language="js").text == "42"
    err = sbx.run_code("notDefined.x", language="js")
    assert err.error is not None and err.error.name == "ReferenceError", err


def test_javascript_sees_the_sandbox_envs_and_an_executions_envs_once(sbx):
    assert sbx.run_code("process.env.TEST_ENV_VAR", language="js").text == "supertest"
    over = sbx.run_code("process.env.TEST_ENV_VAR", language="js", envs={"TEST_ENV_VAR": "overwrite"})
    assert over.text == "overwrite"
    assert sbx.run_code("process.env.TEST_ENV_VAR", language="js").text == "supertest"
    assert sbx.run_code("process.env.FOO", language="js", envs={"FOO": "bar"}).text == "bar"
    assert sbx.run_code("process.env.FOO || 'default'", language="js").text == "default"


def test_typescript_has_a_context_of_its_own(sbx):
    run = sbx.run_code("const message: string = 'Hello, World!'; console.log(message)", language="ts")
    assert run.logs.stdout == ["Hello, World!\n"], run
    assert sbx.run_code("process.cwd()", language="ts").text == "/home/user"
    ctx = sbx.create_code_context(language="ts", cwd="/tmp")
    assert (ctx.language, ctx.cwd) == ("typescript", "/tmp")
    assert sbx.run_code("process.cwd()", context=ctx).text == "/tmp"


def test_r_runs_in_irkernel(sbx):
    assert sbx.run_code('print("Hello, World!")', language="r").logs.stdout == ['[1] "Hello, World!"\n']
    assert sbx.run_code("getwd()", language="r").results[0].text.strip() == '[1] "/home/user"'
    got = sbx.run_code("Sys.getenv('TEST_ENV_VAR')", language="r", envs={"TEST_ENV_VAR": "overwrite"})
    assert got.results[0].text.strip() == '[1] "overwrite"'
    after = sbx.run_code("Sys.getenv('TEST_ENV_VAR')", language="r")
    assert after.results[0].text.strip() == '[1] "supertest"'
    sbx.run_code("x <- 20", language="r")
    assert sbx.run_code("x + 1", language="r").results[0].text.strip() == "[1] 21"


def test_java_runs_in_jshell_with_envs_as_system_properties(sbx):
    hello = sbx.run_code('System.out.println("Hello, World!"); System.err.println("oops")', language="java")
    # as E2B's kernel (IJava on JDK 11) streams them: a line's text, then its newline
    assert hello.logs.stdout == ["Hello, World!", "\n"], hello
    assert hello.logs.stderr == ["oops", "\n"], hello
    printf = sbx.run_code('System.out.printf("%s!%n", "x")', language="java")
    assert printf.logs.stdout == ["x", "!", "\n"], printf
    assert printf.text.startswith("java.io.PrintStream@"), printf
    assert sbx.run_code('System.getProperty("TEST_ENV_VAR")', language="java").text == "supertest"
    once = sbx.run_code('System.getProperty("FOO")', language="java", envs={"FOO": "bar"})
    assert once.text == "bar"
    assert sbx.run_code('System.getProperty("FOO", "default")', language="java").text == "default"
    assert sbx.run_code('System.getProperty("user.dir")', language="java").text == "/home/user"


def test_bash_has_a_default_context_in_the_home_and_unknown_languages_fail(sbx):
    assert sbx.run_code("pwd", language="bash").logs.stdout == ["/home/user\n"]
    assert "bash" in [c.language for c in sbx.list_code_contexts()]
    with pytest.raises(code_interpreter.SandboxException) as e:
        sbx.run_code("1", language="cobol")
    assert "500" in str(e.value) and "cobol" in str(e.value)
    with pytest.raises(code_interpreter.SandboxException):
        sbx.create_code_context(language="cobol")
