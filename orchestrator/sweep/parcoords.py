"""An interactive parallel-coordinates plot as inline SVG + a few lines of JavaScript.

The SVG is complete without script (it renders in MLflow's artifact viewer and offline); the
script adds brushing: drag along an axis to keep only the trials inside the range, double-click
the axis to clear it. Hovering a line shows its trial (SVG ``<title>``). No CDN, no library.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

from ambient_platform.config.naming import format_value
from orchestrator.sweep.figures import LOWER_IS_BETTER, param_axis
from orchestrator.sweep.results import Results, TrialRow
from orchestrator.sweep.state import SMOOTHNESS

WIDTH, HEIGHT = 960, 380
TOP, BOTTOM, LEFT, RIGHT = 48, 40, 70, 90


@dataclass
class _Dim:
    """One vertical axis: how a trial's value maps to [0, 1] (0 = bottom) and tick labels."""

    name: str
    key: str  # "param:<path>" or "metric:<name>"
    pos: dict[str, float]  # trial run id -> position in [0, 1]
    ticks: list[tuple[float, str]]


def _numeric_dim(name: str, key: str, vals: dict[str, float], log: bool) -> _Dim | None:
    if not vals:
        return None
    f = (lambda v: math.log(v)) if log and min(vals.values()) > 0 else (lambda v: v)
    lo, hi = min(f(v) for v in vals.values()), max(f(v) for v in vals.values())
    span = (hi - lo) or 1.0
    pos = {k: (f(v) - lo) / span if hi > lo else 0.5 for k, v in vals.items()}
    distinct = sorted(set(vals.values()))
    shown = distinct if len(distinct) <= 8 else [distinct[0], distinct[-1]]
    ticks = [((f(v) - lo) / span if hi > lo else 0.5, format_value(v)) for v in shown]
    return _Dim(name, key, pos, ticks)


def _dims(results: Results, rows: list[TrialRow]) -> list[_Dim]:
    info = results.info
    dims: list[_Dim] = []
    for path in info.paths:
        axis = param_axis(results, path)
        label = info.labels.get(path, path)
        vals = {r.run_id: r.params[path] for r in rows if path in r.params}
        if axis.numeric:
            d = _numeric_dim(
                label, f"param:{path}", {k: float(v) for k, v in vals.items()}, axis.log
            )
        else:
            n = max(len(axis.categories) - 1, 1)
            pos = {k: axis.categories.index(format_value(v)) / n for k, v in vals.items()}
            if len(axis.categories) == 1:
                pos = dict.fromkeys(pos, 0.5)
            ticks = [
                (i / n if len(axis.categories) > 1 else 0.5, c)
                for i, c in enumerate(axis.categories)
            ]
            d = _Dim(label, f"param:{path}", pos, ticks)
        if d is not None:
            dims.append(d)
    metrics = [info.metric] + [m for m in SMOOTHNESS if m in info.metrics and m != info.metric]
    for m in metrics:
        vals = {
            r.run_id: r.metrics[m] for r in rows if m in r.metrics and math.isfinite(r.metrics[m])
        }
        d = _numeric_dim(m, f"metric:{m}", vals, False)
        if d is not None:
            dims.append(d)
    return dims


def _color(t: float) -> str:
    """Viridis-like ramp from dark blue (worst) to yellow (best)."""
    stops = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    a, b, f = stops[i], stops[i + 1], t - i
    return "#" + "".join(f"{round(a[k] + (b[k] - a[k]) * f):02x}" for k in range(3))


def parcoords_svg(results: Results) -> str:
    """The SVG element (with its brushing script) for the finished trials of a sweep."""
    info = results.info
    rows = [r for r in results.rows if info.metric in r.metrics]
    dims = _dims(results, rows)
    if len(dims) < 2 or not rows:
        return '<p class="note">No finished trial yet: nothing to draw.</p>'
    step = (WIDTH - LEFT - RIGHT) / (len(dims) - 1)
    xs = [LEFT + i * step for i in range(len(dims))]
    h = HEIGHT - TOP - BOTTOM

    def y(p: float) -> float:
        return TOP + (1 - p) * h

    mdim = next(d for d in dims if d.key == f"metric:{info.metric}")
    better_high = info.metric not in LOWER_IS_BETTER and info.mode == "max"
    parts = [
        f'<svg id="parcoords" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">'
    ]
    for r in sorted(rows, key=lambda r: mdim.pos.get(r.run_id, 0.0)):
        pts = [(x, d.pos.get(r.run_id)) for x, d in zip(xs, dims, strict=True)]
        if any(p is None for _, p in pts):
            continue
        d_attr = " ".join(
            f"{'M' if i == 0 else 'L'}{x:.1f},{y(p or 0):.1f}" for i, (x, p) in enumerate(pts)
        )
        t = mdim.pos[r.run_id] if better_high else 1 - mdim.pos[r.run_id]
        pos = ",".join(f"{p:.4f}" for _, p in pts)
        tip = html.escape(f"{r.name}: {info.metric} = {format_value(r.metrics[info.metric])}")
        parts.append(
            f'<path class="trial" d="{d_attr}" stroke="{_color(t)}" data-pos="{pos}">'
            f"<title>{tip}</title></path>"
        )
    for i, (x, d) in enumerate(zip(xs, dims, strict=True)):
        parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + h}" class="axis"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{TOP - 18}" text-anchor="middle" font-weight="bold">'
            f"{html.escape(d.name)}</text>"
        )
        for p, label in d.ticks:
            parts.append(
                f'<text x="{x - 6:.1f}" y="{y(p) + 4:.1f}" text-anchor="end" class="tick">'
                f"{html.escape(label)}</text>"
            )
        parts.append(
            f'<rect class="brush" data-axis="{i}" x="{x - 9:.1f}" y="{TOP}" width="18" '
            f'height="{h}"/><rect class="sel" data-axis="{i}" x="{x - 7:.1f}" y="0" width="14" '
            'height="0"/>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + _SCRIPT


_SCRIPT = """
<script>
(function () {
  var svg = document.getElementById('parcoords');
  if (!svg) return;
  var top = TOP_PX, h = HEIGHT_PX, ranges = {};
  var lines = Array.prototype.slice.call(svg.querySelectorAll('path.trial'));
  function apply() {
    lines.forEach(function (l) {
      var pos = l.getAttribute('data-pos').split(',').map(Number), keep = true;
      Object.keys(ranges).forEach(function (k) {
        var r = ranges[k]; if (pos[k] < r[0] || pos[k] > r[1]) keep = false;
      });
      l.setAttribute('class', keep ? 'trial' : 'trial dim');
    });
    var shown = lines.filter(function (l) { return l.getAttribute('class') === 'trial'; });
    var c = document.getElementById('parcoords-count');
    if (c) c.textContent = shown.length + ' of ' + lines.length + ' trials shown';
  }
  function frac(evt) {
    var pt = svg.createSVGPoint(); pt.x = evt.clientX; pt.y = evt.clientY;
    var p = pt.matrixTransform(svg.getScreenCTM().inverse());
    return Math.min(1, Math.max(0, 1 - (p.y - top) / h));
  }
  svg.querySelectorAll('rect.brush').forEach(function (b) {
    var k = b.getAttribute('data-axis');
    var sel = svg.querySelector('rect.sel[data-axis="' + k + '"]');
    var start = null;
    b.addEventListener('mousedown', function (e) { start = frac(e); e.preventDefault(); });
    window.addEventListener('mousemove', function (e) {
      if (start === null) return;
      var f = frac(e), lo = Math.min(start, f), hi = Math.max(start, f);
      ranges[k] = [lo, hi];
      sel.setAttribute('y', top + (1 - hi) * h); sel.setAttribute('height', (hi - lo) * h);
      apply();
    });
    window.addEventListener('mouseup', function () { start = null; });
    b.addEventListener('dblclick', function () {
      delete ranges[k]; sel.setAttribute('height', 0); apply();
    });
  });
  apply();
})();
</script>
""".replace("TOP_PX", str(TOP)).replace("HEIGHT_PX", str(HEIGHT - TOP - BOTTOM))
