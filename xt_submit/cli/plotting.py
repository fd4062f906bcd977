"""`xt plot`: a metric against the step (or time), one line per run, or aggregated per hparam value."""
from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional, Sequence

AGGREGATES = {"mean": statistics.fmean, "min": min, "max": max}


def swept_hparams(runs: Sequence[Dict[str, Any]]) -> List[str]:
    """The hparams whose values differ between the runs: what tells the lines apart."""
    names: Dict[str, set] = {}
    for run in runs:
        for name, value in (run.get("hparams") or {}).items():
            names.setdefault(name, set()).add(repr(value))
    return [name for name, values in names.items() if len(values) > 1]


def plot_metric(runs: Sequence[Dict[str, Any]], series: Dict[str, List[Dict[str, Any]]], *, metric: str, x: str,
                out: str, aggregate: Optional[str] = None, group_by: Optional[str] = None) -> int:
    """Write the PNG; returns the number of lines drawn."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on a server or in CI
    import matplotlib.pyplot as plt

    swept = swept_hparams(runs)
    by_name = {run["name"]: run for run in runs}
    lines: List[tuple] = []
    if aggregate:
        groups: Dict[Any, Dict[Any, List[float]]] = {}
        for name, points in series.items():
            key = (by_name[name].get("hparams") or {}).get(group_by)
            for point in points:
                groups.setdefault(key, {}).setdefault(point[x], []).append(point["value"])
        for key, by_x in sorted(groups.items(), key=lambda item: repr(item[0])):
            xs = sorted(v for v in by_x if v is not None)
            lines.append((f"{group_by}={key} ({aggregate} of {sum(1 for n in series if (by_name[n].get('hparams') or {}).get(group_by) == key)} runs)",
                          xs, [AGGREGATES[aggregate](by_x[v]) for v in xs]))
    else:
        for name, points in series.items():
            points = [p for p in points if p[x] is not None]
            label = " ".join([name] + [f"{h}={(by_name[name].get('hparams') or {}).get(h)}" for h in swept])
            lines.append((label, [p[x] for p in points], [p["value"] for p in points]))
    figure, axes = plt.subplots(figsize=(9, 5.5), dpi=100)
    for label, xs, ys in lines:
        if xs:
            axes.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
    axes.set_xlabel(x)
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} by {x}")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)
    return sum(1 for _, xs, _ in lines if xs)
