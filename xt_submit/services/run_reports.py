"""A report's columns, resolved against what the runs have: a bare name (`lr`, `loss`) is the run
field, else the hparam, else the metric (XT's rule), and a column no run has is an error, not an
empty report. Notes say which was taken when a bare name is both an hparam and a metric."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

from xt_submit.domain import layout, run_query
from xt_submit.domain.run_query import QueryError, RunQuery, SortKey
from xt_submit.ports import StatsStore

# What `--json` and the notebook API give of a run or a job.
RUN_JSON_FIELDS = ("name", "job", "workspace", "experiment", "status", "exit_code", "duration", "hparams", "metrics",
                   "target", "username", "node_id", "reason", "created", "started", "ended", "command", "tags")
JOB_JSON_FIELDS = ("name", "workspace", "experiment", "status", "run_count", "counts", "target", "username",
                   "created", "started", "ended", "command", "tags")


def run_json(run: Dict[str, Any]) -> Dict[str, Any]:
    return {field: run.get(field) for field in RUN_JSON_FIELDS}


def job_json(job: Dict[str, Any]) -> Dict[str, Any]:
    return {field: job.get(field) for field in JOB_JSON_FIELDS}


def query_from(workspace: str, report, *, names: Sequence[str] = (), jobs: Sequence[str] = (),
               filters: Sequence[str] = (), experiment: Optional[str] = None, target: Optional[str] = None,
               username: Optional[str] = None, status: Optional[str] = None, tags_all: Optional[str] = None,
               tags_any: Optional[str] = None, sort: Optional[str] = None, reverse: bool = False,
               first: Optional[int] = None, last: Optional[int] = None, everything: bool = False) -> RunQuery:
    """`xt list runs` options (falling back to the run-reports config) as a store-neutral query."""
    runs, job_names = run_query.parse_run_list(list(names) + list(jobs))
    parsed = [run_query.parse_filter(text) for text in filters]
    for field, value in (("experiment", experiment), ("target", target), ("username", username)):
        if value is not None:
            parsed.append(run_query.Filter(None, field, "==", value))
    parsed += [run_query.Filter("tags", tag, "exists", True) for tag in layout.parse_tags([tags_all], "--tags-all")]
    sort = sort or (report.sort if report.sort != "name" else None)
    return RunQuery(workspace=workspace, status=status, filters=tuple(parsed),
                    sort=run_query.parse_sort(sort) if sort else None, reverse=reverse or report.reverse,
                    first=None if everything else first if first is not None else report.first,
                    last=None if everything else last if last is not None else report.last,
                    runs=runs, jobs=job_names, any_tags=tuple(layout.parse_tags([tags_any], "--tags-any")))


def select_runs(stats: StatsStore, query: RunQuery, *, sort_given: bool) -> Tuple[List[Dict[str, Any]], List[str]]:
    """The runs the query selects, with its bare names resolved; and the notes to show."""
    resolved, notes = resolve(stats, query, checked_sort=sort_given)
    return stats.query_runs(resolved), notes


def metric_history(stats: StatsStore, workspace: str, names: Sequence[str],
                   metrics: Sequence[str] = ()) -> Dict[str, List[Dict[str, Any]]]:
    """Each selected run's metric records ({run: [{step, name, value, time}...]}), as `xt view metrics --json`."""
    runs, jobs = run_query.parse_run_list(list(names))
    rows = stats.query_runs(RunQuery(workspace=workspace, runs=runs, jobs=jobs))
    if not rows:
        raise QueryError(f"no runs match {' '.join(names)} in workspace {workspace}")
    return {r["name"]: [m for m in stats.get_metrics(workspace, r["name"]) if not metrics or m["name"] in metrics]
            for r in rows}


def resolve(stats: StatsStore, query: RunQuery, *, checked_sort: bool = True) -> Tuple[RunQuery, List[str]]:
    """The query with every bare name given its group, and the notes to show. checked_sort: the sort
    came from the command line (a config's default sort is taken as it is, even where no run has it)."""
    notes: List[str] = []
    filters = tuple(_resolved(stats, query.workspace, "--filter", flt, flt.op != "exists", notes)
                    for flt in query.filters)
    sort: Optional[SortKey] = query.sort
    if sort is not None and checked_sort:
        sort = _resolved(stats, query.workspace, "--sort", sort, True, notes)
    return dataclasses.replace(query, filters=filters, sort=sort), notes


def _resolved(stats: StatsStore, workspace: str, option: str, item, must_exist: bool, notes: List[str]):
    """item: a Filter or a SortKey."""
    if item.group is None:
        return item  # a run field: always there
    if not item.bare:
        if must_exist and not stats.has_key(workspace, item.group, item.name):
            raise QueryError(f"{option}: unknown column '{item.group}.{item.name}' (no run has it)")
        return item
    in_hparams = stats.has_key(workspace, "hparams", item.name)
    in_metrics = stats.has_key(workspace, "metrics", item.name)
    if in_hparams and in_metrics:
        notes.append(f"{option} {item.name}: runs have both hparams.{item.name} and metrics.{item.name}; "
                     f"using hparams.{item.name} (write metrics.{item.name} for the metric)")
    if in_hparams:
        return dataclasses.replace(item, group="hparams", bare=False)
    if in_metrics or not must_exist:
        return dataclasses.replace(item, group="metrics", bare=False)
    raise QueryError(f"{option}: unknown column '{item.name}' (no run has a field, hparam or metric of that name)")

