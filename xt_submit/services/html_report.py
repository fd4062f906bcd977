"""`xt report`: one self-contained HTML file of a selection of runs, that needs no server and no network.

The runs are the ones `xt list runs` selects (services/run_reports: the same selectors, filters and
bare-name rules); their records, metric histories, console tails and output names are embedded as
JSON in a `<script type="application/json">` element, and the page's own script (html_report.js,
next to this module, with html_report.css) draws the table from it, and the curves, the bands and
the parallel coordinates as Vega-Lite charts, with Vega, Vega-Lite and vega-embed inlined in the page
from report_vendor/ (see its ORIGIN.md). A Content-Security-Policy forbids every request, so the
page is the same from a disk, a mail attachment or a SAS link. Sizes are bounded: each curve keeps at most
`max_points` points (evenly subsampled, and the page says so) and each console its last
`console_bytes` bytes.
"""
from __future__ import annotations

import functools
import html
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from xt_submit import config as xt_config
from xt_submit.services.local_files import written_aside
from xt_submit.domain import layout
from xt_submit.domain.errors import NotFound, OneLineError
from xt_submit.domain.messages import TERMINAL_STATUSES, CancelRequested, RunFinished, RunPreempted
from xt_submit.domain.run_query import QueryError, RunQuery
from xt_submit.ports import StatsStore, Storage
from xt_submit.services import run_reports

FORMAT = 1  # of the embedded data; a reader of old reports can tell
MAX_POINTS = 500  # per run and metric
CONSOLE_BYTES = 8192  # the tail of each run's console
DATA_ELEMENT = "xt-report-data"  # the id of the JSON element the page's script reads
# No 'unsafe-eval' although vega compiles expressions with `new Function`: the page has vega-embed use
# vega's expression interpreter instead (its `ast` option).
CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
_ASSETS = Path(__file__).resolve().parent
VENDOR = _ASSETS / "report_vendor"
VENDOR_SCRIPTS = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")  # in the order they load


class ReportError(OneLineError):
    pass


@dataclass(frozen=True)
class Limits:
    max_points: int = MAX_POINTS
    console_bytes: int = CONSOLE_BYTES


# --- options ----------------------------------------------------------------------------------
def check_options(out: str, limits: Limits, *, names: Sequence[str] = (), jobs: Sequence[str] = (),
                  experiment: Optional[str] = None) -> Path:
    """The checks made before anything is read or written; returns the file to write."""
    if not (names or jobs or experiment):
        raise ReportError("xt report: name runs (run7.1 run7.2, run7.*), --job JOB or --experiment EXP")
    if limits.max_points < 2:
        raise ReportError(f"--max-points: expected 2 or more, got {limits.max_points}")
    if limits.console_bytes < 0:
        raise ReportError(f"--console-tail: expected 0 or more bytes, got {limits.console_bytes}")
    path = Path(out)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ReportError(f"--out: expected an .html file, got {out!r}")
    if path.is_dir():
        raise ReportError(f"--out: {out!r} is a folder")
    if not path.parent.is_dir():
        raise ReportError(f"--out: folder {str(path.parent)!r} does not exist")
    return path


# --- the data ---------------------------------------------------------------------------------
def report_data(stats: StatsStore, storage: Storage, query: RunQuery, *, sort_given: bool,
                primary_metric: str, maximize_metric: bool, limits: Limits = Limits(),
                selection: str = "", title: Optional[str] = None, now: Optional[float] = None) -> Dict[str, Any]:
    """Everything the page shows, as JSON-able data. primary_metric / maximize_metric: the config's
    (general.primary-metric, general.maximize-metric), used unless the runs' jobs all recorded another."""
    rows, notes = run_reports.select_runs(stats, query, sort_given=sort_given)
    if not rows:
        raise QueryError(f"no runs match {selection or 'the selection'} in workspace {query.workspace}")
    workspace = query.workspace
    history = run_reports.metric_history(stats, workspace, [row["name"] for row in rows], storage=storage)
    runs = []
    subsampled = []
    for row in rows:
        record = run_reports.run_json(row)
        record["curves"] = curves(history.get(row["name"], []), row.get("started"), limits.max_points)
        subsampled += [{"run": row["name"], "metric": metric, "points": series["points"], "shown": len(series["value"])}
                       for metric, series in record["curves"].items() if series["points"] > len(series["value"])]
        record["console"] = console_tail(storage, workspace, row["name"], limits.console_bytes)
        prefix = layout.output_prefix(workspace, row["name"])
        record["outputs"] = [key[len(prefix):] for key in storage.list(prefix)]
        runs.append(record)
    groups = hparam_groups(runs)
    curve_metrics = _names(run["curves"] for run in runs)
    primary = _primary(stats, workspace, rows, primary_metric, maximize_metric)
    return {
        "format": FORMAT, "title": title or f"XT report: {selection or workspace}", "workspace": workspace,
        "selection": selection, "generated": time.time() if now is None else now, "primary": primary,
        "columns": {"hparams": list(groups), "metrics": _names(run["metrics"] or {} for run in runs)},
        "swept": [name for name, values in groups.items() if len(values) > 1], "groups": groups,
        "curve_metrics": curve_metrics,
        "x_axes": ["step", "time"] + (["epoch"] if any("epoch" in series for run in runs
                                                          for series in run["curves"].values()) else []),
        "live": [run["name"] for run in runs if run["status"] not in TERMINAL_STATUSES],
        "limits": {"max_points": limits.max_points, "console_bytes": limits.console_bytes},
        "subsampled": subsampled, "notes": notes, "runs": runs,
    }


def curves(records: Sequence[Dict[str, Any]], started: Optional[float],
           max_points: int = MAX_POINTS) -> Dict[str, Dict[str, Any]]:
    """A run's metric records ({step, name, value, time}, in logged order) as one series per numeric
    metric: {metric: {points, step: [...], time: [...], epoch: [...], value: [...]}}, where `points` is
    the length of the whole history and the lists hold at most max_points of it, evenly spread (the
    first and the last kept). The time is in seconds since the run started (else since its first
    record); the epoch is the last `epoch` metric logged with or before the point (kept only when the
    run logs one); a step that is not an integer becomes the point's place in the log (1, 2, ...)."""
    raw: Dict[str, List[list]] = {}  # metric -> [steps, times, epochs, values]
    epoch = None
    # the records of one log_metrics call share their step and time: one point of each metric
    for index, (_, group) in enumerate(itertools.groupby(records, key=lambda r: (r["step"], r["time"])), start=1):
        call = list(group)
        epoch = next((r["value"] for r in call if r["name"] == "epoch" and _number(r["value"])), epoch)
        for r in call:
            if _number(r["value"]):  # text and flags are in the table, not on a curve
                steps, times, epochs, values = raw.setdefault(r["name"], [[], [], [], []])
                steps.append(r["step"] if type(r["step"]) is int else index)
                times.append(r["time"])
                epochs.append(epoch)
                values.append(r["value"])
    known = [t for _, times, _, _ in raw.values() for t in (times[0], times[-1]) if _number(t)]
    origin = started if _number(started) and known and started <= min(known) else min(known, default=0.0)
    series = {}
    for name, (steps, times, epochs, values) in raw.items():
        count = len(values)
        picks = (range(count) if count <= max_points
                 else [round(i * (count - 1) / (max_points - 1)) for i in range(max_points)])
        one: Dict[str, Any] = {"points": count, "step": [steps[i] for i in picks],
                               "time": [round(times[i] - origin, 3) if _number(times[i]) else None for i in picks],
                               "value": [values[i] for i in picks]}
        if any(value is not None for value in epochs):
            one["epoch"] = [epochs[i] for i in picks]
        series[name] = one
    return series


def console_tail(storage: Storage, workspace: str, run: str, max_bytes: int) -> Dict[str, Any]:
    """The last max_bytes of a run's console (from a line's start when cut), and its whole size."""
    key = layout.console_key(workspace, run)
    try:
        data = storage.read(key) if storage.exists(key) else b""
    except NotFound:
        data = b""
    tail = data[-max_bytes:] if max_bytes else b""
    if len(tail) < len(data) and b"\n" in tail:
        tail = tail[tail.index(b"\n") + 1:]
    return {"text": tail.decode("utf-8", "replace"), "bytes": len(data), "truncated": len(tail) < len(data)}


def hparam_groups(runs: Sequence[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """Per hparam, the runs of each of its values: {lr: [{value, label, runs: [...]}, ...]}; every run
    is in one group of each hparam (a run without it in the group of None). Numbers order first."""
    names = _names(run["hparams"] or {} for run in runs)
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for name in names:
        by_label: Dict[str, Dict[str, Any]] = {}
        for run in runs:
            value = (run["hparams"] or {}).get(name)
            label = _label(value)
            by_label.setdefault(label, {"value": value, "label": label, "runs": []})["runs"].append(run["name"])
        groups[name] = sorted(by_label.values(), key=lambda group: (0, group["value"], "") if _number(group["value"])
                              else (1, 0, group["label"]))
    return groups


def _primary(stats: StatsStore, workspace: str, rows: Sequence[Dict[str, Any]], metric: str,
             maximize: bool) -> Dict[str, Any]:
    """The metric that ranks the runs: what their jobs recorded when they all agree, else the config's."""
    recorded = set()
    for job in sorted({row["job"] for row in rows if row.get("job")}):
        try:
            record = stats.get_job(workspace, job)
        except NotFound:
            continue
        if record.get("primary_metric"):
            recorded.add((record["primary_metric"], bool(record.get("maximize_metric"))))
    if len(recorded) == 1:
        metric, maximize = recorded.pop()
        source = "the runs' jobs"
    else:
        source = "the config (general.primary-metric)"
    best = _best(rows, metric, maximize)
    return {"metric": metric, "maximize": maximize, "source": source, "best": best}


def _best(rows: Sequence[Dict[str, Any]], metric: str, maximize: bool) -> Optional[str]:
    scored = [row for row in rows if _number((row.get("metrics") or {}).get(metric))]
    if not scored:
        return None
    pick = max if maximize else min
    return pick(scored, key=lambda row: row["metrics"][metric])["name"]


def _names(mappings: Iterable[Dict[str, Any]]) -> List[str]:
    seen: Dict[str, None] = {}
    for mapping in mappings:
        seen.update(dict.fromkeys(mapping))
    return list(seen)


def _label(value: Any) -> str:
    if value is None:
        return "(none)"
    return value if isinstance(value, str) else json.dumps(_json_safe(value))


def _number(value: Any) -> bool:
    """A finite int or float (not a bool): the stores give back plain JSON types."""
    return (type(value) is float or type(value) is int) and math.isfinite(value)


# --- the page ---------------------------------------------------------------------------------
def embed_json(data: Any) -> str:
    """JSON that can sit inside a <script> element whatever the runs logged: `<`, `>` and `&` are
    escaped (so a console's `</script>` or `<!--` stays text), NaN and infinities become null."""
    text = json.dumps(_json_safe(data), ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def _asset(name: str) -> str:
    text = (_ASSETS / name).read_text(encoding="utf-8")
    if "</" in text:  # would end the <script> or <style> element it is inlined in
        raise AssertionError(f"{name}: holds '</', which would end its element in the page")
    return text


@functools.cache  # read once per process: the Functions app renders a page at every job's end
def _vendor_script(name: str) -> str:
    """A library's build as it came: its `</` are in strings and regular expressions, and only an
    `</script` (any case) would end its element, or an `<!--` change how the rest is parsed."""
    text = (VENDOR / name).read_text(encoding="utf-8")
    # its source map is not shipped: a browser's devtools would ask for it in vain
    body, _, last = text.rstrip("\n").rpartition("\n")
    if last.startswith("//# sourceMappingURL="):
        text = body
    lowered = text.lower()
    if "</script" in lowered or "<!--" in lowered:
        raise RuntimeError(f"report_vendor/{name}: holds '</script' or '<!--', which would break the page "
                           "(scripts/update_report_vendor.sh checks a new build)")
    return text


def render(data: Dict[str, Any]) -> str:
    """The whole page: the data, the stylesheet, the chart libraries and the script inline; nothing to fetch."""
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="xt report">',
        f"<title>{html.escape(str(data.get('title', 'XT report')))}</title>",
        '<link rel="icon" href="data:,">',
        f"<style>\n{_asset('html_report.css')}</style>",
        "</head>",
        "<body>",
        '<noscript><p class="note">This report draws its tables and charts with JavaScript; '
        "allow scripts for this file to see them.</p></noscript>",
        '<main id="report"></main>',
        f'<script type="application/json" id="{DATA_ELEMENT}">{embed_json(data)}</script>',
        *(f"<script>\n{_vendor_script(name)}\n</script>" for name in VENDOR_SCRIPTS),
        f"<script>\n{_asset('html_report.js')}</script>",
        "</body>",
        "</html>",
        "",
    ])


def write_page(path: Path, page: str) -> None:
    """Write beside the target, then rename: a reader never sees half a report, a failure leaves none."""
    with written_aside(path) as aside:
        aside.write_text(page, encoding="utf-8")


def make_report(cfg: xt_config.Config, stats: StatsStore, storage: Storage, out: str, *, names: Sequence[str] = (),
                jobs: Sequence[str] = (), experiment: Optional[str] = None, status: Optional[str] = None,
                filters: Sequence[str] = (), first: Optional[int] = None, last: Optional[int] = None,
                everything: bool = False, title: Optional[str] = None, limits: Limits = Limits(),
                now: Optional[float] = None) -> Dict[str, Any]:
    """`xt report` and `xt_submit.report()`: the runs `xt list runs` would select with these options,
    written to `out` as one page; returns what was written. Nothing is written on bad input."""
    path = check_options(out, limits, names=names, jobs=jobs, experiment=experiment)
    query = run_reports.query_from(cfg.general.workspace, cfg.run_reports, names=names, jobs=jobs, filters=filters,
                                   experiment=experiment, status=status, first=first, last=last, everything=everything)
    selection = " ".join([*names, *jobs] + ([f"experiment {experiment}"] if experiment else [])
                         + ([f"status {status}"] if status else []) + [f"where {text}" for text in filters])
    data = report_data(stats, storage, query, sort_given=False, primary_metric=cfg.general.primary_metric,
                       maximize_metric=cfg.general.maximize_metric, limits=limits, selection=selection,
                       title=title, now=now)
    page = render(data)
    write_page(path, page)
    return {"out": str(path), "runs": len(data["runs"]), "bytes": len(page.encode("utf-8")),
            "subsampled": len(data["subsampled"]), "notes": data["notes"]}


def publish_job_report(stats: StatsStore, storage: Storage, workspace: str, job: str,
                       limits: Limits = Limits(), now: Optional[float] = None) -> str:
    """The job's page (all its runs, its own primary metric) written to storage beside the job;
    returns its key. A team's Functions app calls it when a job ends; `xt report --link` when the
    page is not there yet."""
    record = stats.get_job(workspace, job)
    query = RunQuery(workspace=workspace, jobs=(job,))
    data = report_data(stats, storage, query, sort_given=False, primary_metric=record.get("primary_metric") or "loss",
                       maximize_metric=bool(record.get("maximize_metric")), limits=limits, selection=job,
                       title=f"{job} ({record.get('experiment') or workspace})", now=now)
    key = layout.job_report_key(workspace, job)
    storage.write(key, render(data).encode("utf-8"))
    return key


def job_report_link(stats: StatsStore, storage: Storage, workspace: str, job: str, hours: float) -> str:
    """`xt report --job J --link`: a read-only link to the job's page in storage, valid `hours`
    (a file:// URL on storage that is a folder here). The page is rendered now unless the job
    ended and its page is there already (a team's Functions app wrote it at the end)."""
    key = layout.job_report_key(workspace, job)
    if stats.get_job(workspace, job, hp_space=False)["status"] not in TERMINAL_STATUSES or not storage.exists(key):
        publish_job_report(stats, storage, workspace, job)
    url = storage.read_url(key, hours * 3600)
    if url is None:
        path = storage.local_path(key)
        if path is None:
            raise ReportError(f"--link: {type(storage).__name__} gives no links to its files")
        url = Path(path).resolve().as_uri()
    return url


def publish_if_ended(stats: StatsStore, storage: Storage, event: Any) -> Optional[str]:
    """After an event that can end a job (a run's end, a cancel): the job's page, if the job ended."""
    if not isinstance(event, (RunFinished, CancelRequested, RunPreempted)):
        return None
    if stats.get_job(event.workspace, event.job, hp_space=False)["status"] not in TERMINAL_STATUSES:
        return None
    return publish_job_report(stats, storage, event.workspace, event.job)
