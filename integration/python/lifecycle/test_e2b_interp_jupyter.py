"""The real ``e2b-code-interpreter`` SDK on the builtin code-interpreter image
(ipykernel): port 49999 runs a Jupyter kernel per context, the same engine as
OpenSandbox's ``/code``, so results carry E2B's rich fields (``png`` of a
matplotlib figure, ``html``, ``json``) besides ``text``. The image is built on
first use (minutes; cached in target/sandpool-image-cache)."""

from __future__ import annotations

import time

import pytest

from sandpool_platform import PY_POOL_NAME, Sandpool
from sandpool_pytest_helpers import per_test_watchdog

code_interpreter = pytest.importorskip("e2b_code_interpreter")
IMAGE_KEY = "e2b.agents.kruise.io/image"



# the pid of every ipykernel process in the sandbox (the literal is split:
# this script's own command line must not match)
_KERNELS = (
    "python3 -c \"import os\n"
    "for p in filter(str.isdigit, os.listdir('/proc')):\n"
    "    try: a = open('/proc/%s/cmdline' % p).read()\n"
    "    except OSError: continue\n"
    "    if 'ipykernel_' + 'launcher' in a: print(p)\""
)


def _kernel_pids(sbx) -> set[int]:
    return {int(p) for p in sbx.commands.run(_KERNELS).stdout.split()}


def test_the_default_kernel_runs_before_the_first_run_with_the_sandboxs_envs(e2b_env: Sandpool):
    """The default context's kernel is started with the runtime, not by the
    first ``run_code``; the first run is served by it and sees the create's
    ``envs`` (set after the kernel started), the user's home as its cwd and
    the user a fresh context's kernel has; an execution's envs do not stay."""
    sbx = code_interpreter.Sandbox.create(PY_POOL_NAME, metadata={IMAGE_KEY: "code-interpreter"},
                                          envs={"WARM_ENV": "from create"}, timeout=900, request_timeout=900)
    try:
        deadline = time.monotonic() + 120
        while not (before := _kernel_pids(sbx)):
            assert time.monotonic() < deadline, "no kernel started without a run"
            time.sleep(0.5)
        assert [(c.language, c.cwd) for c in sbx.list_code_contexts()][0] == ("python", "/home/user")
        probe = "import os; (os.getpid(), os.getcwd(), os.getuid(), os.environ.get('WARM_ENV'), os.environ.get('PER_RUN'))"
        pid, cwd, uid, env, per_run = eval(sbx.run_code(probe).text)
        assert pid in before, "the first run started a kernel of its own"
        assert (cwd, env, per_run) == ("/home/user", "from create", None)
        fresh = sbx.create_code_context()
        _, fresh_cwd, fresh_uid, fresh_env, _ = eval(sbx.run_code(probe, context=fresh).text)
        assert (fresh_cwd, fresh_uid, fresh_env) == (cwd, uid, env)
        assert eval(sbx.run_code(probe, envs={"PER_RUN": "1"}).text)[4] == "1"
        assert eval(sbx.run_code(probe).text)[3:] == ("from create", None), "an execution's envs stayed"
    finally:
        sbx.kill()


@pytest.fixture(autouse=True)
def _per_test_timeout():
    """The conftest's watchdog, with time for the image's first build."""
    yield from per_test_watchdog(1200)


def test_e2b_results_carry_the_kernels_rich_outputs(e2b_env: Sandpool):
    sbx = code_interpreter.Sandbox.create(PY_POOL_NAME, metadata={IMAGE_KEY: "code-interpreter"},
                                          timeout=900, request_timeout=900)
    try:
        assert sbx.run_code("x = 'bar'\nx").text == "bar"
        plot = sbx.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
        assert plot.error is None, plot.error
        pngs = [r.png for r in plot.results if r.png]
        assert len(pngs) == 1 and pngs[0].startswith("iVBOR"), plot.results
        assert not plot.results[0].is_main_result, "a display, not the cell's value"
        html = sbx.run_code("from IPython.display import HTML\nHTML('<i>rich</i>')")
        assert html.results[0].html == "<i>rich</i>" and html.results[0].is_main_result
        js = sbx.run_code("from IPython.display import JSON\nJSON({'a': 1})")
        assert js.results[0].json == {"a": 1}
        err = sbx.run_code("1 / 0")
        assert err.error is not None and err.error.name == "ZeroDivisionError"
        assert "ZeroDivisionError" in err.error.traceback
    finally:
        sbx.kill()


# E2B's chart, data and saved-image results: the kernel of an E2B context
# formats matplotlib figures as `e2b/chart` and DataFrames as `e2b/data`
# (the SDK's `Result.chart` and `.data`), and PIL's `Image.save` displays.

@pytest.fixture(scope="module")
def ci_sandbox(sandpool: Sandpool):
    env = {"E2B_API_URL": sandpool.url, "E2B_DOMAIN": sandpool.domain,
           "E2B_SANDBOX_URL": sandpool.url, "E2B_API_KEY": sandpool.api_key}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        sbx = code_interpreter.Sandbox.create(PY_POOL_NAME, metadata={IMAGE_KEY: "code-interpreter"},
                                              timeout=900, request_timeout=900)
        try:
            yield sbx
        finally:
            sbx.kill()


def _chart(sbx, code: str):
    run = sbx.run_code("import matplotlib.pyplot as plt\nimport numpy as np\n" + code + "\nplt.show()")
    assert run.error is None, run.error
    charts = [r.chart for r in run.results if r.chart]
    assert len(charts) == 1, run.results
    assert run.results[0].png, "the figure's image stays beside its chart"
    return charts[0]


def test_a_line_chart_with_dates_units_and_ticks(ci_sandbox):
    c = _chart(ci_sandbox, """import datetime
days = [datetime.date(2024, 3, 1) + datetime.timedelta(days=i) for i in range(10)]
plt.plot(days, [i * 0.5 for i in range(10)], label='half')
plt.plot(days, [float(i) for i in range(10)])
plt.xlabel('Day [d]'); plt.ylabel('Level (m)'); plt.title('Levels')""")
    assert isinstance(c, code_interpreter.charts.LineChart) and c.type == "line"
    assert (c.title, c.x_label, c.y_label, c.x_unit, c.y_unit) == ("Levels", "Day [d]", "Level (m)", "d", "m")
    assert (c.x_scale, c.y_scale) == ("datetime", "linear")
    assert c.x_ticks and all(isinstance(t, str) and "2024-03" in t for t in c.x_ticks)
    assert c.y_ticks and all(isinstance(t, float) for t in c.y_ticks)
    assert len(c.y_tick_labels) == len(c.y_ticks)
    assert [e.label for e in c.elements] == ["half", "Line 1"]
    assert c.elements[0].points[:2] == [("2024-03-01", 0.0), ("2024-03-02", 0.5)]
    assert len(c.elements[1].points) == 10


def test_a_log_and_a_categorical_scale(ci_sandbox):
    c = _chart(ci_sandbox, "plt.plot([1, 10, 100], ['a', 'b', 'c']); plt.xscale('log')")
    assert (c.x_scale, c.y_scale) == ("log", "categorical")
    assert c.elements[0].points == [(1.0, "a"), (10.0, "b"), (100.0, "c")]


def test_a_bar_chart_vertical_and_horizontal(ci_sandbox):
    c = _chart(ci_sandbox, """plt.bar(['x', 'y', 'z'], [3, 1, 2], label='n')
plt.xlabel('Kind'); plt.ylabel('Count')""")
    assert isinstance(c, code_interpreter.charts.BarChart)
    assert [(b.label, b.value, b.group) for b in c.elements] == [("x", 3, "n"), ("y", 1, "n"), ("z", 2, "n")]
    assert (c.x_label, c.y_label, c.title) == ("Kind", "Count", None)
    # horizontal bars: the categories' axis is still reported as x
    h = _chart(ci_sandbox, "plt.barh(['p', 'q'], [5, 7]); plt.xlabel('Amount'); plt.ylabel('Who')")
    assert [(b.label, b.value, b.group) for b in h.elements] == [("p", 5, "Group 0"), ("q", 7, "Group 0")]
    assert (h.x_label, h.y_label) == ("Who", "Amount")


def test_a_pie_chart(ci_sandbox):
    c = _chart(ci_sandbox, "plt.pie([1, 3], labels=['one', 'three']); plt.title('Share')")
    assert isinstance(c, code_interpreter.charts.PieChart) and c.title == "Share"
    assert [(p.label, p.angle, p.radius) for p in c.elements] == [("one", 90, 1), ("three", 270, 1)]


def test_a_scatter_chart(ci_sandbox):
    c = _chart(ci_sandbox, """plt.scatter([1, 2], [3, 4], label='s1')
plt.scatter([5], [6], label='s2'); plt.xlabel('X')""")
    assert isinstance(c, code_interpreter.charts.ScatterChart)
    assert [(e.label, e.points) for e in c.elements] == [("s1", [(1.0, 3.0), (2.0, 4.0)]), ("s2", [(5.0, 6.0)])]
    assert (c.x_label, c.y_label, c.x_scale) == ("X", None, "linear")


def test_a_box_and_whisker_chart(ci_sandbox):
    c = _chart(ci_sandbox, """plt.boxplot([[1, 2, 3, 4, 5], [2, 4, 4, 5, 6, 30]], tick_labels=['a', 'b'], patch_artist=True)
plt.title('Spread'); plt.ylabel('Value')""")
    assert isinstance(c, code_interpreter.charts.BoxAndWhiskerChart)
    got = [(b.label, b.min, b.first_quartile, b.median, b.third_quartile, b.max, b.outliers) for b in c.elements]
    assert got == [("a", 1, 2, 3, 4, 5, []), ("b", 2, 4, 4.5, 5.75, 6, [30])]
    assert (c.title, c.y_label) == ("Spread", "Value")


def test_a_figure_of_several_axes_is_a_superchart(ci_sandbox):
    c = _chart(ci_sandbox, """fig, (a, b, d) = plt.subplots(1, 3); fig.suptitle('All')
a.plot([1, 2]); a.set_title('L'); b.bar(['u'], [2]); d.add_patch(plt.Circle((0, 0), 1))""")
    assert isinstance(c, code_interpreter.charts.SuperChart) and c.title == "All"
    assert [e.type for e in c.elements] == ["line", "bar", "unknown"]
    assert c.elements[0].title == "L" and c.elements[1].elements[0].value == 2


def test_an_empty_figure_has_no_chart(ci_sandbox):
    run = ci_sandbox.run_code("import matplotlib.pyplot as plt\nplt.figure()\nplt.show()")
    assert run.error is None and all(r.chart is None for r in run.results), run.results


def test_a_dataframe_has_its_columns_as_data(ci_sandbox):
    run = ci_sandbox.run_code("""import pandas as pd
pd.DataFrame({'a': [1, 2, 3], 'b': [0.5, float('nan'), 2.0], 't': pd.to_datetime(['2024-01-02'] * 3)})""")
    assert run.error is None, run.error
    r = run.results[0]
    assert r.is_main_result and r.html and "<table" in r.html
    assert r.data == {"a": [1, 2, 3], "b": [0.5, None, 2.0], "t": ["2024-01-02T00:00:00"] * 3}
    # anything else has no data, and a chart formatter never breaks a cell
    assert ci_sandbox.run_code("1 + 1").results[0].data is None


def test_saving_a_pil_image_displays_it(ci_sandbox):
    run = ci_sandbox.run_code("""import numpy as np
from PIL import Image
img = Image.fromarray((np.random.rand(8, 8, 3) * 255).astype('uint8'))
img.save('/tmp/saved.png')
print('saved')""")
    assert run.error is None, run.error
    assert run.logs.stdout == ["saved\n"]
    assert [r.png[:5] for r in run.results] == ["iVBOR"]
    # saving to a file object does not display
    again = ci_sandbox.run_code("import io\nimg.save(io.BytesIO(), 'PNG')")
    assert again.error is None and again.results == []
