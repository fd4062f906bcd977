"""A report's columns, resolved against what the runs have: a bare name (`lr`, `loss`) is the run
field, else the hparam, else the metric (XT's rule), and a column no run has is an error, not an
empty report. Notes say which was taken when a bare name is both an hparam and a metric."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import msgspec

from xt_submit.domain import layout, records, run_query
from xt_submit.domain.errors import NotFound
from xt_submit.domain.records import JOB_FIELDS
from xt_submit.domain.run_query import QueryError, RunQuery, SortKey
from xt_submit.ports import StatsStore, Storage

# What `--json` and the notebook API give of a run or a job.
RUN_JSON_FIELDS = ("name", "job", "workspace", "experiment", "status", "exit_code", "duration", "hparams", "metrics",
                   "target", "username", "node_id", "reason", "created", "started", "ended", "command", "tags",
                   "retry_of", "attempt")
JOB_JSON_FIELDS = ("name", "workspace", "experiment", "status", "run_count", "counts", "target", "username",
                   "created", "started", "ended", "command", "tags")


JOB_DERIVED = ("runs", "queued", "running", "completed", "error", "cancelled", "stopped")  # a job's counts, as columns


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
                   metrics: Sequence[str] = (), storage: Optional[Storage] = None) -> Dict[str, List[Dict[str, Any]]]:
    """Each selected run's metric records ({run: [{step, name, value, time}...]}), as `xt view metrics --json`."""
    runs, jobs = run_query.parse_run_list(list(names))
    rows = stats.query_runs(RunQuery(workspace=workspace, runs=runs, jobs=jobs))
    if not rows:
        raise QueryError(f"no runs match {' '.join(names)} in workspace {workspace}")
    return {r["name"]: [m for m in run_metrics(stats, storage, r) if not metrics or m["name"] in metrics]
            for r in rows}


def run_metrics(stats: StatsStore, storage: Optional[Storage], run: Dict[str, Any]) -> List[Dict[str, Any]]:
    """A run's metric records: the index's once it ended; while it runs, its log as shipped so far
    (the index gets the rows when it ends), so plots and reports of a live run are live too."""
    if storage is None or not records.is_live(run["status"]):
        return stats.get_metrics(run["workspace"], run["name"])
    from xt_submit.domain import run_log  # here: a report of ended runs never reads a log

    try:
        chunks = storage.read_chunks(layout.run_log_key(run["workspace"], run["name"]))
        rows = run_log.LogSummary(run_log.iter_records_from_chunks(chunks)).metric_rows()
        logged = [{"step": row.step, "name": row.name, "value": row.value, "time": row.time} for row in rows]
    except NotFound:
        logged = []  # its node has not opened the log yet
    return logged or stats.get_metrics(run["workspace"], run["name"])  # (a run requeued after its rows went in)


def resolve(stats: StatsStore, query: RunQuery, *, checked_sort: bool = True) -> Tuple[RunQuery, List[str]]:
    """The query with every bare name given its group, and the notes to show. checked_sort: the sort
    came from the command line (a config's default sort is taken as it is, even where no run has it)."""
    notes: List[str] = []
    filters = tuple(_resolved(stats, query.workspace, "--filter", flt, flt.op != "exists", notes)
                    for flt in query.filters)
    sort: Optional[SortKey] = query.sort
    if sort is not None and checked_sort:
        sort = _resolved(stats, query.workspace, "--sort", sort, True, notes)
    return msgspec.structs.replace(query, filters=filters, sort=sort), notes


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
        return msgspec.structs.replace(item, group="hparams", bare=False)
    if in_metrics or not must_exist:
        return msgspec.structs.replace(item, group="metrics", bare=False)
    raise QueryError(f"{option}: unknown column '{item.name}' (no run has a field, hparam or metric of that name)")


# --- jobs (few per workspace: selected here rather than in the store) --------------------------------
def job_counts(job: Dict[str, Any]) -> Dict[str, int]:
    counts = job.get("counts") or {}
    return {"runs": job.get("run_count") or 0, **{status: counts.get(status, 0) for status in JOB_DERIVED[1:]}}


def lookup(record: Dict[str, Any], column: str) -> Any:
    """`metrics.loss`, `hparams.lr`, a record field, or a bare metric / hparam name (XT style).
    A key the record has as it is wins (a metrics table's `run3.1:loss` is not a group and a key)."""
    if column in record:
        return record[column]
    if "." in column:
        group, _, key = column.partition(".")
        container = record.get(group)
        return container.get(key) if isinstance(container, dict) else None
    if column in record:
        return record[column]
    for group in ("metrics", "hparams"):
        container = record.get(group) or {}
        if column in container:
            return container[column]
    return None


def sort_records(records: List[Dict[str, Any]], column: str, reverse: bool) -> List[Dict[str, Any]]:
    """Stable sort by a column; a missing value orders first (as NULL does in the stats stores)."""
    if records and column not in records[0] and not any(lookup(r, column) is not None for r in records):
        raise QueryError(f"--sort: unknown column {column!r}")

    def key(record):
        value = lookup(record, column)
        if value is None:
            return (0, 0)
        return (1, float(value)) if isinstance(value, (int, float)) else (2, str(value))

    return sorted(records, key=key, reverse=reverse)


def select_jobs(stats: StatsStore, workspace: str, report, *, names: Sequence[str] = (), jobs: Sequence[str] = (),
                filters: Sequence[str] = (), experiment: Optional[str] = None, target: Optional[str] = None,
                username: Optional[str] = None, status: Optional[str] = None, sort: Optional[str] = None,
                reverse: bool = False, first: Optional[int] = None, last: Optional[int] = None,
                everything: bool = False) -> List[Dict[str, Any]]:
    """The jobs `xt list jobs` shows (its options by the same names, falling back to the run-reports
    config), each with its run counts."""
    runs_named, jobs_named = run_query.parse_run_list(list(names) + list(jobs))
    if runs_named:
        raise QueryError("xt list jobs: expected job names (job7), got runs")
    # a bare name is a job's field (run_count, status...) when it is one, as for runs
    parsed = [msgspec.structs.replace(flt, group=None) if flt.bare and flt.name in JOB_FIELDS + JOB_DERIVED else flt
              for flt in map(run_query.parse_filter, filters)]
    wanted = {"experiment": experiment, "target": target, "username": username}
    rows = []
    for job in stats.list_jobs(workspace):
        job.update(job_counts(job))
        if (jobs_named and job["name"] not in jobs_named) or (status and job["status"] != status):
            continue
        if any(value is not None and job.get(field) != value for field, value in wanted.items()):
            continue
        if all(run_query.matches(job, flt) for flt in parsed):
            rows.append(job)
    sort = sort or (report.sort if report.sort != "name" else None)
    if sort:
        rows = sort_records(rows, sort, reverse or report.reverse)
    elif reverse or report.reverse:
        rows.reverse()
    if everything:
        return rows
    return run_query.window(rows, first if first is not None else report.first, last if last is not None else report.last)
