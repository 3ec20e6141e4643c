# sandpool: E2B's rich results in an E2B context's Jupyter kernel, run once
# in the kernel when the context starts (bridge.py, E2B contexts only).
#   e2b/chart  a matplotlib Figure as E2B's chart JSON (line, scatter, bar,
#              pie, box_and_whisker, superchart, unknown)
#   e2b/data   a pandas DataFrame as {column: [values]}
#   PIL's Image.save(path) also displays the image (E2B's images show up
#   as results when saved).
# Nothing is imported up front: a formatter only acts on objects of modules
# the cell already imported; PIL is patched when a cell imports it.
import datetime as _dt
import math
import numbers
import re
import sys

from IPython.core.formatters import BaseFormatter
from traitlets import ObjectName, Unicode

_UNIT = re.compile(r"\s\((.*?)\)|\[(.*?)\]")


def _clean(v, ints=False):
    """A JSON-safe value: dates as ISO text, numbers as float (integers
    kept when `ints`; NaN and infinities as null), containers element-wise,
    anything else as its text."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (_dt.date, _dt.datetime, _dt.time)):
        return v.isoformat()
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(v, np.datetime64):
            return str(v.astype("datetime64[s]"))
        if isinstance(v, np.bool_):
            return bool(v)
    if isinstance(v, (list, tuple)):
        return [_clean(x, ints) for x in v]
    if isinstance(v, dict):
        return {str(k): _clean(x, ints) for k, x in v.items()}
    if ints and isinstance(v, numbers.Integral):
        return int(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f if math.isfinite(f) else None


def _num(v):
    """A measured value: float rounded to 8 decimals (what the artist's
    geometry holds is the data up to float noise)."""
    f = float(v)
    return float("%.12g" % round(f, 8)) if math.isfinite(f) else None


def _text(t):
    return t if t else None


def _unit(label):
    m = _UNIT.search(label) if label else None
    return (m.group(1) or m.group(2)) if m else None


def _is_rule(line):
    """A straight horizontal or vertical two-point line (axhline, axvline)."""
    x, y = line.get_xdata(), line.get_ydata()
    return len(x) == 2 and len(y) == 2 and (x[0] == x[1] or y[0] == y[1])


def _is_date_axis(axis):
    conv = axis.get_converter() if hasattr(axis, "get_converter") else axis.converter
    return conv is not None and type(conv).__module__ == "matplotlib.dates"


def _axis(ax, which):
    """label, unit, ticks, tick labels and scale of the x or y axis."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    label = _text(axis.get_label().get_text())
    ticks = list(axis.get_majorticklocs())
    labels = [t.get_text() for t in axis.get_majorticklabels()]
    if _is_date_axis(axis):
        from matplotlib.dates import num2date

        return label, [num2date(t).isoformat() for t in ticks], labels, "datetime"
    ticks = [_clean(t) for t in ticks]
    scale = axis.get_scale()
    if scale == "linear" and all(t == i and lab != str(i) for i, (t, lab) in enumerate(zip(ticks, labels))):
        scale = "categorical"
    return label, ticks, labels, scale


def _base(kind, ax):
    return {"type": kind, "title": _text(ax.get_title()), "elements": []}


def _chart_2d(kind, ax):
    c = _base(kind, ax)
    for w in ("x", "y"):
        label = _text(ax.xaxis.get_label().get_text() if w == "x" else ax.yaxis.get_label().get_text())
        c[w + "_label"] = label
        c[w + "_unit"] = _unit(label)
    return c


def _swap_axes(c):
    for k in ("label", "unit"):
        c["x_" + k], c["y_" + k] = c["y_" + k], c["x_" + k]


def _point_chart(kind, ax, series):
    c = _chart_2d(kind, ax)
    for w in ("x", "y"):
        _, ticks, labels, scale = _axis(ax, w)
        c[w + "_ticks"], c[w + "_tick_labels"], c[w + "_scale"] = ticks, labels, scale
    c["elements"] = [{"label": label, "points": [[_clean(x), _clean(y)] for x, y in pts]} for label, pts in series]
    return c


def _line(ax):
    series = []
    for line in ax.get_lines():
        if _is_rule(line):
            continue
        label = line.get_label()
        if label.startswith("_child"):
            label = "Line " + label[len("_child"):]
        series.append((label, zip(line.get_xdata(), line.get_ydata())))
    return _point_chart("line", ax, series)


def _scatter(ax):
    series = [(col.get_label(), [tuple(p) for p in col.get_offsets()]) for col in ax.collections]
    return _point_chart("scatter", ax, series)


def _tick_label_at(axis, pos):
    """The tick label of the category at `pos` (bar and box positions)."""
    for t, lab in zip(axis.get_majorticklocs(), axis.get_majorticklabels()):
        if abs(t - pos) < 1e-9:
            return lab.get_text()
    return str(_num(pos))


def _bar(ax):
    c = _chart_2d("bar", ax)
    horizontal = False
    for container in ax.containers:
        group = container.get_label()
        if group.startswith("_container"):
            group = "Group " + group[len("_container"):]
        rects = list(getattr(container, "patches", container))
        hz = getattr(container, "orientation", None) == "horizontal"
        horizontal = horizontal or hz
        for r in rects:
            if hz:
                label = _tick_label_at(ax.yaxis, r.get_y() + r.get_height() / 2)
                value = r.get_width()
            else:
                label = _tick_label_at(ax.xaxis, r.get_x() + r.get_width() / 2)
                value = r.get_height()
            c["elements"].append({"label": label, "group": group, "value": _num(value)})
    if horizontal:
        _swap_axes(c)
    return c


def _pie(ax):
    c = _base("pie", ax)
    for w in ax.patches:
        c["elements"].append({"label": w.get_label(), "angle": abs(_num(w.theta2 - w.theta1)), "radius": _num(w.r)})
    return c


def _box(ax):
    """Boxes (PathPatch, patch_artist=True) with the lines around them:
    whiskers (from a box edge outwards), the median (across the box) and
    fliers (markers only: the outliers)."""
    c = _chart_2d("box_and_whisker", ax)
    boxes = []
    for p in ax.patches:
        v = p.get_path().vertices
        xs, ys = [_num(x) for x in v[:, 0]], [_num(y) for y in v[:, 1]]
        boxes.append([min(xs), max(xs), min(ys), max(ys)])
    if not boxes:
        return c
    # vertical boxes share a width; horizontal ones a height
    widths, heights = {_num(b[1] - b[0]) for b in boxes}, {_num(b[3] - b[2]) for b in boxes}
    horizontal = len(widths) > 1 and len(heights) == 1
    if horizontal:
        _swap_axes(c)
        boxes = [[b[2], b[3], b[0], b[1]] for b in boxes]
    cat_axis = ax.yaxis if horizontal else ax.xaxis
    out = []
    for lo, hi, q1, q3 in boxes:
        out.append({"label": _tick_label_at(cat_axis, (lo + hi) / 2), "min": q1, "first_quartile": q1, "median": q1,
                    "third_quartile": q3, "max": q3, "outliers": [], "_span": (lo, hi)})
    for line in ax.lines:
        pos, val = line.get_ydata(), line.get_xdata()
        if not horizontal:
            pos, val = val, pos
        pos, val = [_num(x) for x in pos], [_num(y) for y in val]
        if not pos:
            continue
        box = next((b for b in out if b["_span"][0] <= min(pos) and max(pos) <= b["_span"][1]), None)
        if box is None:
            continue
        if line.get_linestyle() in ("None", "", " ", "none"):
            box["outliers"].extend(val)
        elif len(val) == 2 and val[0] == val[1] and box["first_quartile"] <= val[0] <= box["third_quartile"]:
            if pos[0] != pos[1]:
                box["median"] = val[0]
        elif len(val) == 2 and pos[0] == pos[1]:
            if max(val) == box["first_quartile"]:
                box["min"] = min(val)
            elif min(val) == box["third_quartile"]:
                box["max"] = max(val)
    for b in out:
        del b["_span"]
    c["elements"] = out
    return c


def _kind(ax):
    """What `ax` shows, from the artists on it (texts aside)."""
    from matplotlib.collections import PathCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import PathPatch, Rectangle, Wedge

    arts = [a for group in (ax.lines, ax.patches, ax.collections, ax.images, ax.tables, ax.artists) for a in group]
    if all(isinstance(a, Line2D) for a in arts):
        return "line"
    if all(isinstance(a, (PathPatch, Line2D)) for a in arts):
        return "box_and_whisker"
    arts = [a for a in arts if not (isinstance(a, Line2D) and _is_rule(a))]
    for kind, cls in (("scatter", PathCollection), ("pie", Wedge), ("bar", Rectangle)):
        if all(isinstance(a, cls) for a in arts):
            return kind
    return "unknown"


_BUILDERS = {"line": _line, "scatter": _scatter, "bar": _bar, "pie": _pie, "box_and_whisker": _box}


def _ax_chart(ax):
    kind = _kind(ax)
    build = _BUILDERS.get(kind)
    return build(ax) if build else _base(kind, ax)


def figure_chart(fig):
    """E2B's chart JSON of a figure, None for a figure without data."""
    axes = fig.get_axes()
    if not any(ax.has_data() for ax in axes):
        return None
    if len(axes) == 1:
        return _ax_chart(axes[0])
    sup = fig.get_suptitle() if hasattr(fig, "get_suptitle") else (fig._suptitle.get_text() if fig._suptitle else "")
    return {"type": "superchart", "title": sup, "elements": [_ax_chart(ax) for ax in axes]}


def dataframe_data(df):
    """A DataFrame as {column: [values]} (JSON-safe values)."""
    return {str(k): [_clean(v, ints=True) for v in vals] for k, vals in df.to_dict(orient="list").items()}


class _Formatter(BaseFormatter):
    """A formatter of one class of a module the cell imported; a failing
    conversion gives no output of this type (never an error in the cell)."""

    _return_type = (dict,)
    module = ""
    convert = None

    def __call__(self, obj):
        mod = sys.modules.get(self.module)
        if not self.enabled:
            return None
        if mod is None or not self.accepts(mod, obj):
            return super().__call__(obj)  # an object's own _repr_e2b_*_
        try:
            return type(self).convert(obj)
        except Exception:
            return None


class ChartFormatter(_Formatter):
    format_type = Unicode("e2b/chart")
    print_method = ObjectName("_repr_e2b_chart_")
    module = "matplotlib.figure"
    convert = figure_chart

    @staticmethod
    def accepts(mod, obj):
        return isinstance(obj, mod.Figure)


class DataFormatter(_Formatter):
    format_type = Unicode("e2b/data")
    print_method = ObjectName("_repr_e2b_data_")
    module = "pandas"
    convert = dataframe_data

    @staticmethod
    def accepts(mod, obj):
        return isinstance(obj, mod.DataFrame)


def _patch_pil_image(mod):
    """Image.save to a path also displays the image."""
    save = mod.Image.save

    def save_and_show(self, fp, format=None, **params):
        if isinstance(fp, (str, bytes)) or hasattr(fp, "__fspath__"):
            from IPython.display import display

            display(self)
        return save(self, fp, format, **params)

    mod.Image.save = save_and_show


class _OnImport:
    """Runs `hook(module)` right after `name` is first imported."""

    def __init__(self, name, hook):
        self.name, self.hook = name, hook

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run, hook = spec.loader.exec_module, self.hook

        def exec_module(module):
            run(module)
            try:
                hook(module)
            except Exception:
                pass

        spec.loader.exec_module = exec_module
        return spec


def _install():
    from IPython import get_ipython

    ip = get_ipython()
    fmt = ip.display_formatter
    fmt.formatters["e2b/chart"] = ChartFormatter(parent=fmt)
    fmt.formatters["e2b/data"] = DataFormatter(parent=fmt)
    if "PIL.Image" in sys.modules:
        _patch_pil_image(sys.modules["PIL.Image"])
    else:
        sys.meta_path.insert(0, _OnImport("PIL.Image", _patch_pil_image))


_install()
