"""`xt plot`: a metric against the step (or time), one line per run, or aggregated per hparam value."""
from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

AGGREGATES = {"mean": statistics.fmean, "min": min, "max": max}


def swept_hparams(runs: Sequence[Dict[str, Any]]) -> List[str]:
    """The hparams whose values differ between the runs: what tells the lines apart."""
    names: Dict[str, set] = {}
    for run in runs:
        for name, value in (run.get("hparams") or {}).items():
            names.setdefault(name, set()).add(repr(value))
    return [name for name, values in names.items() if len(values) > 1]


MAX_LEGEND_LINES = 10  # more lines than this and a legend is a wall of text: a colormap and a colorbar instead
Line = Tuple[str, Any, List[float], List[float]]  # label, what colours it (run order or an hparam), xs, ys


def moving_average(values: Sequence[float], window: int) -> List[float]:
    """Each value averaged with the window-1 before it (fewer at the start): the curve keeps its
    length and its first point, and never looks ahead."""
    averaged, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        averaged.append(total / min(index + 1, window))
    return averaged


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _run_lines(runs: Sequence[Dict[str, Any]], series: Dict[str, List[Dict[str, Any]]], x: str) -> List[Line]:
    swept = swept_hparams(runs)
    by_name = {run["name"]: run for run in runs}
    lines: List[Line] = []
    for order, (name, points) in enumerate(series.items()):
        points = [p for p in points if p[x] is not None and p["value"] is not None]
        hparams = by_name[name].get("hparams") or {}
        label = " ".join([name] + [f"{h}={_shown(hparams.get(h))}" for h in swept])
        colour_by = hparams.get(swept[0]) if len(swept) == 1 else order
        xs = [p[x] for p in points]
        if x == "time" and xs:  # seconds since the run's first point: runs started at different times align
            xs = [t - xs[0] for t in xs]
        lines.append((label, colour_by, xs, [p["value"] for p in points]))
    return lines


def _aggregate_lines(runs: Sequence[Dict[str, Any]], series: Dict[str, List[Dict[str, Any]]], x: str,
                     aggregate: str, group_by: Optional[str]) -> List[Line]:
    by_name = {run["name"]: run for run in runs}
    groups: Dict[Any, Dict[Any, List[float]]] = {}
    members: Dict[Any, int] = {}
    for name, points in series.items():
        key = (by_name[name].get("hparams") or {}).get(group_by)
        members[key] = members.get(key, 0) + 1
        for point in points:
            if point[x] is not None and point["value"] is not None:
                groups.setdefault(key, {}).setdefault(point[x], []).append(point["value"])
    lines: List[Line] = []
    for key, by_x in sorted(groups.items(), key=lambda item: repr(item[0])):
        xs = sorted(by_x)
        lines.append((f"{group_by}={_shown(key)} ({aggregate} of {members[key]} runs)", key, xs,
                      [AGGREGATES[aggregate](by_x[v]) for v in xs]))
    return lines


def _colours(lines: List[Line]):
    """(a colour per line, the colorbar's mappable and label or None): the default cycle while a
    legend can tell the lines apart, else a colormap over the swept hparam's values (or run order)."""
    import matplotlib
    from matplotlib.colors import LogNorm, Normalize

    if len(lines) <= MAX_LEGEND_LINES:
        cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        return [cycle[i % len(cycle)] for i in range(len(lines))], None, None
    values = [line[1] for line in lines]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not numeric:
        values = list(range(len(lines)))
    low, high = min(values), max(values)
    norm = (LogNorm(low, high) if numeric and low > 0 and high / low >= 100
            else Normalize(low, high if high > low else low + 1))
    cmap = matplotlib.colormaps["viridis"]
    mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    return [cmap(norm(v)) for v in values], mappable, numeric


def metric_figure(runs: Sequence[Dict[str, Any]], series_by_metric: Dict[str, Dict[str, List[Dict[str, Any]]]], *,
                  x: str, aggregate: Optional[str] = None, group_by: Optional[str] = None, smooth: int = 1,
                  step_name: str = "step"):
    """A matplotlib Figure: one subplot per metric, one line per run (or per group with `aggregate`);
    with `smooth` > 1 each line is its moving average over that many points, the raw curve faint behind.
    step_name: what the scripts call their step (general.step-name), the x axis's name for `x="step"`."""
    # a Figure on the Agg canvas, not pyplot: headless (no display on a server or in CI), no global state
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metrics = list(series_by_metric)
    figure = Figure(figsize=(10, 1.5 + 3.5 * len(metrics)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes_list = figure.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    legend: Dict[str, Any] = {}
    mappable = numeric = None
    for axes, metric in zip(axes_list, metrics):
        series = series_by_metric[metric]
        lines = (_aggregate_lines(runs, series, x, aggregate, group_by) if aggregate
                 else _run_lines(runs, series, x))
        colours, mappable, numeric = _colours(lines)
        integer_steps = True
        for (label, _, xs, ys), colour in zip(lines, colours):
            if not xs:
                continue
            integer_steps = integer_steps and all(isinstance(v, int) or float(v).is_integer() for v in xs)
            marker = "o" if len(xs) < 30 and len(lines) <= MAX_LEGEND_LINES else None
            if smooth > 1:
                axes.plot(xs, ys, color=colour, alpha=0.25, linewidth=0.8)
                ys = moving_average(ys, smooth)
            legend.setdefault(label, axes.plot(xs, ys, color=colour, marker=marker, markersize=3, label=label)[0])
        if x == "step" and integer_steps:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(metric + (f" (moving average of {smooth})" if smooth > 1 else ""))
        axes.set_title(f"{metric} by {step_name if x == 'step' else x}")
        axes.grid(True, alpha=0.3)
    axes_list[-1].set_xlabel("seconds since the run's first point" if x == "time" else step_name)
    if mappable is not None:
        swept = swept_hparams(runs)
        name = group_by if aggregate else (swept[0] if len(swept) == 1 else None)  # as _run_lines colours
        label = name if numeric and name else "run (in order)"
        figure.colorbar(mappable, ax=list(axes_list), label=label)
    elif legend:
        figure.legend(list(legend.values()), list(legend), loc="outside right upper", fontsize=8)
    return figure


def plot_metric(runs: Sequence[Dict[str, Any]], series_by_metric: Dict[str, Dict[str, List[Dict[str, Any]]]], *,
                x: str, out: str, aggregate: Optional[str] = None, group_by: Optional[str] = None,
                smooth: int = 1, step_name: str = "step") -> int:
    """Write the PNG; returns the number of curves drawn (over every metric's subplot)."""
    figure = metric_figure(runs, series_by_metric, x=x, aggregate=aggregate, group_by=group_by, smooth=smooth,
                           step_name=step_name)
    figure.savefig(out)
    return sum(1 for axes in figure.axes for line in axes.get_lines() if line.get_label()[:1] != "_")
