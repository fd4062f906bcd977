"""The Python API for notebooks: the same selections as `xt list runs`, `xt list jobs` and
`xt view metrics`, returning what their `--json` prints (or a pandas DataFrame).

    import xt_submit
    runs = xt_submit.list_runs(job="job3", filter=["metrics.acc>0.9"], sort="metrics.loss", last=5)
    frame = xt_submit.list_runs("run3.*", as_frame=True)       # pandas, when installed
    history = xt_submit.metrics(["run3.1", "run3.2"], metric=["loss"])
    xt_submit.api.report(job="job3", out="job3.html")          # the page `xt report --job job3` writes
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

from xt_submit import bootstrap
from xt_submit import config as xt_config
from xt_submit.domain.errors import OneLineError
from xt_submit.services import html_report, run_reports


def list_runs(*runs: str, job: Union[str, Sequence[str], None] = None, experiment: Optional[str] = None,
              status: Optional[str] = None, target: Optional[str] = None, username: Optional[str] = None,
              filter: Union[str, Sequence[str]] = (), tags_all: Optional[str] = None, tags_any: Optional[str] = None,
              sort: Optional[str] = None, reverse: bool = False, first: Optional[int] = None,
              last: Optional[int] = None, all: bool = False, workspace: Optional[str] = None,
              config: Optional[str] = None, as_frame: bool = False) -> Any:
    """The runs `xt list runs` would show (its options by the same names), as its --json records."""
    cfg = _config(config, workspace)
    stats = bootstrap.from_config(cfg).ports.stats
    query = run_reports.query_from(cfg.general.workspace, cfg.run_reports, names=runs, jobs=_many(job),
                                   filters=_many(filter), experiment=experiment, target=target, username=username,
                                   status=status, tags_all=tags_all, tags_any=tags_any, sort=sort, reverse=reverse,
                                   first=first, last=last, everything=all)
    rows, _ = run_reports.select_runs(stats, query, sort_given=sort is not None)
    records = [run_reports.run_json(row) for row in rows]
    return _frame(records) if as_frame else records


def list_jobs(*jobs: str, experiment: Optional[str] = None, status: Optional[str] = None,
              target: Optional[str] = None, username: Optional[str] = None, filter: Union[str, Sequence[str]] = (),
              sort: Optional[str] = None, reverse: bool = False, first: Optional[int] = None,
              last: Optional[int] = None, all: bool = False, workspace: Optional[str] = None,
              config: Optional[str] = None, as_frame: bool = False) -> Any:
    """The jobs `xt list jobs` would show (its options by the same names), as its --json records."""
    cfg = _config(config, workspace)
    stats = bootstrap.from_config(cfg).ports.stats
    rows = run_reports.select_jobs(stats, cfg.general.workspace, cfg.job_reports, jobs=jobs, filters=_many(filter),
                                   experiment=experiment, target=target, username=username, status=status, sort=sort,
                                   reverse=reverse, first=first, last=last, everything=all)
    records = [run_reports.job_json(row) for row in rows]
    return _frame(records) if as_frame else records


def metrics(runs: Union[str, Sequence[str]], *, metric: Union[str, Sequence[str]] = (),
            workspace: Optional[str] = None, config: Optional[str] = None,
            as_frame: bool = False) -> Any:
    """Each run's metric history, as `xt view metrics --json`: {run: [{step, name, value, time}, ...]};
    as_frame: one row per run, step and metric."""
    cfg = _config(config, workspace)
    ports = bootstrap.from_config(cfg).ports
    history = run_reports.metric_history(ports.stats, cfg.general.workspace, _many(runs), _many(metric),
                                         storage=ports.storage)
    if not as_frame:
        return history
    return _frame([{"run": run, **row} for run, rows in history.items() for row in rows])


def report(*runs: str, out: str = "report.html", job: Union[str, Sequence[str], None] = None,
           experiment: Optional[str] = None, status: Optional[str] = None, filter: Union[str, Sequence[str]] = (),
           first: Optional[int] = None, last: Optional[int] = None, all: bool = False, title: Optional[str] = None,
           max_points: int = html_report.MAX_POINTS, console_tail: int = html_report.CONSOLE_BYTES,
           workspace: Optional[str] = None, config: Optional[str] = None) -> str:
    """`xt report` (its options by the same names): one self-contained HTML page of the runs; returns its path."""
    cfg = _config(config, workspace)
    parts = bootstrap.from_config(cfg)
    written = html_report.make_report(cfg, parts.ports.stats, parts.ports.storage, out, names=runs, jobs=_many(job),
                                      experiment=experiment, status=status, filters=_many(filter), first=first,
                                      last=last, everything=all, title=title,
                                      limits=html_report.Limits(max_points=max_points, console_bytes=console_tail))
    return written["out"]


def _config(path: Optional[str], workspace: Optional[str]):
    return xt_config.load_config(path, {"general.workspace": workspace} if workspace else None)


def _many(value: Union[str, Sequence[str], None]) -> List[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _frame(records: List[Dict[str, Any]]):
    try:
        import pandas
    except ImportError:
        raise OneLineError("as_frame=True: expected pandas to be installed (pip install pandas)") from None
    return pandas.DataFrame.from_records(records)
