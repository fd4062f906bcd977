"""Rebuild the stats store from storage, the source of truth (`xt admin reindex`).

Everything the index holds is derived from what storage keeps: the manifest and the job log's
plan (job and queued runs, and the runs an adaptive search added), each run log (start, hparams,
metrics, end), the job log's cancels, and run_stats.json for runs that ended without a node's
report (given up as silent),
or whose log lost its end (a torn last line).

What cannot be read (a corrupt manifest, job log, run_stats.json or tags file) is skipped and
reported, never fatal: everything else is still indexed. A run whose run_stats.json is unreadable
did end (the file is written at the end), so it is recorded as an error saying why.
"""
from __future__ import annotations

import itertools
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import msgspec

from xt_submit.domain import layout, records, run_log
from xt_submit.domain.messages import CANCELLED, ERROR, RUNNING, decode_manifest
from xt_submit.ports import NotFound, Ports

from xt_submit.handlers.dispatch import search_record
from xt_submit.handlers.jobs import roll_job


def _jobs_in_storage(ports: Ports, workspace: str) -> List[str]:
    prefix = f"workspaces/{workspace}/jobs/"
    jobs = {key[len(prefix):].split("/", 1)[0] for key in ports.storage.list(prefix)}
    return sorted((j for j in jobs if layout.JOB_PATTERN.match(j)), key=layout.job_number)


def workspaces_in_storage(ports: Ports, only: Optional[str] = None, keys: Optional[List[str]] = None) -> List[str]:
    """The workspaces storage holds, by layout.workspace_shown_by (the one rule of `xt list workspaces`,
    `xt create workspace` and reindex); `only`: that one's keys alone are read. Every key under the
    prefix is listed: the Storage port has no listing by folder (a delimiter) to stop at the names.
    keys: the prefix's listing, when the caller has just made it."""
    prefix = layout.WORKSPACES_PREFIX + (f"{only}/" if only else "")
    listed = ports.storage.list(prefix) if keys is None else keys
    return sorted({name for name in map(layout.workspace_shown_by, listed) if name})


# What a file that cannot be read raises: a contract or JSON error (ValueError), a field missing or of
# the wrong type. A storage outage is none of these: it stops the reindex, to be run again.
UNREADABLE = (ValueError, KeyError, TypeError, IndexError, AttributeError)


def rebuild_workspace(ports: Ports, workspace: str) -> Dict[str, Any]:
    """Forget the workspace's index and re-record every job and run found in storage. Returns the
    counts and `skipped`: (job, run or "<name> tags", reason) for each thing that could not be read."""
    ports.stats.clear_workspace(workspace)
    counts: Dict[str, Any] = {"jobs": 0, "runs": 0, "metric_records": 0}
    skipped: List[Tuple[str, str]] = []
    for job in _jobs_in_storage(ports, workspace):
        try:
            manifest, created, plan, added, search, cancels = _read_job(ports, workspace, job)
        except NotFound:
            continue  # a dispatch that crashed before its first write: nothing was promised
        except UNREADABLE as exc:
            skipped.append((job, _why(exc)))
            continue
        number = layout.job_number(job)
        ports.stats.restore_job_name(workspace, created["data"]["submission_id"], number)
        ports.stats.insert_job(records.new_job(manifest, name=job, number=number,
                                               submission_id=created["data"]["submission_id"],
                                               run_count=len(plan) + len(added), created=created["time"],
                                               search=search))
        ports.stats.insert_runs(records.new_runs(manifest, job=job, number=number, created=created["time"], plan=plan))
        for at, run, retry in added:  # an adaptive search's runs and retries, as they were planned
            [record] = records.new_runs(manifest, job=job, number=number, created=at, plan=[run],
                                        first_index=layout.run_index(run[0]))
            ports.stats.insert_runs([{**record, **retry}])
        plan = plan + [run for _, run, _ in added]
        for name, _, _ in plan:
            try:
                replayed, problem = _replay_run(ports, workspace, name)
            except UNREADABLE as exc:
                replayed, problem = 0, _why(exc)
            counts["metric_records"] += replayed
            if problem:
                skipped.append((name, problem))
            _replay_tags(ports, workspace, name, layout.run_tags_key(workspace, name), ports.stats.update_run, skipped)
        for at, reason, names in cancels:  # runs a cancel ended before their node could report
            ports.stats.update_runs(workspace, names, {"status": CANCELLED, "ended": at, "reason": reason,
                                                       "heartbeat": None}, only_if_status_in=records.LIVE_STATUSES)
        _replay_tags(ports, workspace, job, layout.job_tags_key(workspace, job), ports.stats.update_job, skipped)
        roll_job(ports, workspace, job)
        counts["jobs"] += 1
        counts["runs"] += len(plan)
    counts["skipped"] = skipped
    return counts


def _read_job(ports: Ports, workspace: str, job: str):
    """(manifest, created record, plan, the runs added later (an adaptive search's, retries) as
    (time, run, retry fields), its search record, and its cancels as (time, reason, runs)) of a
    job, all read before anything is recorded."""
    manifest = decode_manifest(ports.storage.read(layout.manifest_key(workspace, job)))
    blob = ports.storage.read(layout.job_log_key(workspace, job))
    created = next((r for r in run_log.iter_records(blob) if r["event"] == "created"), None)
    if created is None:
        raise ValueError("job_log.jsonl: no readable created record")
    plan = [(run["name"], run["command"], run["hparams"]) for run in created["data"]["runs"]]
    added = []
    for key in ports.storage.list(layout.added_runs_prefix(workspace, job)):
        run = msgspec.json.decode(ports.storage.read(key))
        retry = {field: run[field] for field in ("retry_of", "attempt") if field in run}
        added.append((run["created"], (run["name"], run["command"], run["hparams"]), retry))
    added.sort(key=lambda entry: layout.run_index(entry[1][0]))
    search = search_record(manifest)
    if search:
        try:
            search["ended"] = str(msgspec.json.decode(ports.storage.read(layout.search_ended_key(workspace, job)))["reason"])
        except NotFound:
            pass
    cancels = []
    for key in ports.storage.list(layout.cancels_prefix(workspace, job)):
        cancel = msgspec.json.decode(ports.storage.read(key))
        cancels.append((cancel["at"], str(cancel["reason"]), [str(name) for name in cancel["runs"]]))
    return manifest, created, plan, added, search, cancels


def _why(exc: Exception) -> str:
    """One line: a KeyError says which field was missing; the rest say what they say."""
    if isinstance(exc, KeyError):
        return f"no {exc} field"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _replay_tags(ports: Ports, workspace: str, name: str, key: str, update, skipped: List[Tuple[str, str]]) -> None:
    try:
        update(workspace, name, {"tags": msgspec.json.decode(ports.storage.read(key))})
    except NotFound:
        pass
    except UNREADABLE as exc:
        skipped.append((f"{name} tags", f"tags.json: {_why(exc)}"))


class _Ends:
    """Records passing through, noting the first start and the last end on the way."""

    def __init__(self, records: Iterable[Dict[str, Any]]) -> None:
        self._records = records
        self.started: Optional[Dict[str, Any]] = None
        self.ended: Optional[Dict[str, Any]] = None

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for record in self._records:
            if record["event"] == "started" and self.started is None:
                self.started = record
            elif record["event"] == "ended":
                self.ended = record
            yield record


class _Counted:
    """An iterator that counts what it has handed out."""

    def __init__(self, items: Iterator[Any]) -> None:
        self._items = items
        self.count = 0

    def __iter__(self) -> "_Counted":
        return self

    def __next__(self) -> Any:
        item = next(self._items)
        self.count += 1
        return item


def _replay_run(ports: Ports, workspace: str, run: str) -> Tuple[int, str]:
    """Bring one run from queued to what its storage says; returns its metric records and what could
    not be read ("" if nothing). Its metrics and hparams are whatever its log holds intact, whether or
    not the log's end survived."""
    try:
        chunks = ports.storage.read_chunks(layout.run_log_key(workspace, run))
    except NotFound:
        chunks = iter(())
    # one streamed pass: the rows go to the store as they are parsed, the log is never whole in memory
    ends = _Ends(run_log.iter_records_from_chunks(chunks))
    summary = run_log.LogSummary(ends)
    rows = _Counted(summary.metric_rows())
    first = next(rows, None)
    if first is not None:  # a run without metrics costs the store nothing
        ports.stats.replace_metrics(workspace, run, itertools.chain((first,), rows))
    hparams, last_metrics, started, ended = summary.hparams, summary.last_metrics, ends.started, ends.ended
    if started:
        ports.stats.update_run(workspace, run, {"status": RUNNING, "started": started["time"],
                                                "node_id": started["data"].get("node")})
    metric_count = rows.count
    changes: Dict[str, Any] = {"metrics": last_metrics}
    if hparams:
        changes["hparams"] = hparams
    if ended:
        data = ended["data"]
        changes.update(status=data["status"], exit_code=data.get("exit_code"), ended=ended["time"],
                       duration=round(max(0.0, ended["time"] - started["time"]), 3) if started else 0.0,
                       reason=data.get("reason", ""), heartbeat=None)
        ports.stats.update_run(workspace, run, changes)
        return metric_count, ""
    if metric_count or hparams:
        ports.stats.update_run(workspace, run, changes)
    try:  # ended without its node's report (cancelled before it started, given up as silent), or its end torn
        final = msgspec.json.decode(ports.storage.read(layout.run_stats_key(workspace, run)))
        ending = {"status": final["status"], "ended": final["ended"], "reason": final.get("reason") or "",
                  "heartbeat": None}
        ending.update({field: final[field] for field in ("exit_code", "duration") if final.get(field) is not None})
    except NotFound:
        return metric_count, ""
    except UNREADABLE as exc:
        why = f"run_stats.json: {_why(exc)}"
        ports.stats.update_run(workspace, run, {"status": ERROR, "reason": f"xt admin reindex: {why}",
                                                "heartbeat": None})
        return metric_count, why
    if not metric_count and not hparams and final.get("metrics"):  # the log lost: its final record still has them
        ending.update(metrics=final["metrics"], hparams=final.get("hparams") or {})
    ports.stats.update_run(workspace, run, ending)
    return metric_count, ""
