"""The real ``e2b-code-interpreter`` SDK on the builtin code-interpreter image
(ipykernel): port 49999 runs a Jupyter kernel per context, the same engine as
OpenSandbox's ``/code``, so results carry E2B's rich fields (``png`` of a
matplotlib figure, ``html``, ``json``) besides ``text``. The image is built on
first use (minutes; cached in target/sandpool-image-cache)."""

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
