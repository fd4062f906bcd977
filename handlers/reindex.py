"""Rebuild the stats store from storage, the source of truth (`xt admin reindex`).

Everything the index holds is derived from what storage keeps: the manifest and the job log's
plan (job and queued runs), each run log (start, hparams, metrics, end), and run_stats.json for
runs that ended without a node's report (cancelled before they started, or given up as silent),
or whose log lost its end (a torn last line).

What cannot be read (a corrupt manifest, job log, run_stats.json or tags file) is skipped and
reported, never fatal: everything else is still indexed. A run whose run_stats.json is unreadable
did end (the file is written at the end), so it is recorded as an error saying why.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import msgspec

from xt_submit.domain import layout, records, run_log
from xt_submit.domain.messages import ERROR, RUNNING, decode_manifest
from xt_submit.ports import NotFound, Ports

from xt_submit.handlers.jobs import roll_job


def _jobs_in_storage(ports: Ports, workspace: str) -> List[str]:
    prefix = f"workspaces/{workspace}/jobs/"
    jobs = {key[len(prefix):].split("/", 1)[0] for key in ports.storage.list(prefix)}
    return sorted((j for j in jobs if layout.JOB_PATTERN.match(j)), key=layout.job_number)


def workspaces_in_storage(ports: Ports) -> List[str]:
    return sorted({key.split("/", 2)[1] for key in ports.storage.list("workspaces/")})


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
            manifest, created, plan = _read_job(ports, workspace, job)
        except NotFound:
            continue  # a dispatch that crashed before its first write: nothing was promised
        except UNREADABLE as exc:
            skipped.append((job, _why(exc)))
            continue
        number = layout.job_number(job)
        ports.stats.restore_job_name(workspace, created["data"]["submission_id"], number)
        ports.stats.insert_job(records.new_job(manifest, name=job, number=number,
                                               submission_id=created["data"]["submission_id"], run_count=len(plan),
                                               created=created["time"]))
        ports.stats.insert_runs(records.new_runs(manifest, job=job, number=number, created=created["time"], plan=plan))
        for name, _, _ in plan:
            try:
                replayed, problem = _replay_run(ports, workspace, name)
            except UNREADABLE as exc:
                replayed, problem = 0, _why(exc)
            counts["metric_records"] += replayed
            if problem:
                skipped.append((name, problem))
            _replay_tags(ports, workspace, name, layout.run_tags_key(workspace, name), ports.stats.update_run, skipped)
        _replay_tags(ports, workspace, job, layout.job_tags_key(workspace, job), ports.stats.update_job, skipped)
        roll_job(ports, workspace, job)
        counts["jobs"] += 1
        counts["runs"] += len(plan)
    counts["skipped"] = skipped
    return counts


def _read_job(ports: Ports, workspace: str, job: str):
    """(manifest, created record, plan) of a job, all read before anything is recorded."""
    manifest = decode_manifest(ports.storage.read(layout.manifest_key(workspace, job)))
    blob = ports.storage.read(layout.job_log_key(workspace, job))
    created = next((r for r in run_log.iter_records(blob) if r["event"] == "created"), None)
    if created is None:
        raise ValueError("job_log.jsonl: no readable created record")
    plan = [(run["name"], run["command"], run["hparams"]) for run in created["data"]["runs"]]
    return manifest, created, plan


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


def _replay_run(ports: Ports, workspace: str, run: str) -> Tuple[int, str]:
    """Bring one run from queued to what its storage says; returns its metric records and what could
    not be read ("" if nothing). Its metrics and hparams are whatever its log holds intact, whether or
    not the log's end survived."""
    try:
        blob = ports.storage.read(layout.run_log_key(workspace, run))
    except NotFound:
        blob = b""
    records = run_log.parse(blob)
    started = next((r for r in records if r["event"] == "started"), None)
    ended = next((r for r in reversed(records) if r["event"] == "ended"), None)
    hparams, last_metrics, rows = run_log.summarize(records)
    if started:
        ports.stats.update_run(workspace, run, {"status": RUNNING, "started": started["time"],
                                                "node_id": started["data"].get("node")})
    if rows:
        ports.stats.replace_metrics(workspace, run, rows)
    changes: Dict[str, Any] = {"metrics": last_metrics}
    if hparams:
        changes["hparams"] = hparams
    if ended:
        data = ended["data"]
        changes.update(status=data["status"], exit_code=data.get("exit_code"), ended=ended["time"],
                       duration=round(max(0.0, ended["time"] - started["time"]), 3) if started else 0.0,
                       reason=data.get("reason", ""), heartbeat=None)
        ports.stats.update_run(workspace, run, changes)
        return len(rows), ""
    if rows or hparams:
        ports.stats.update_run(workspace, run, changes)
    try:  # ended without its node's report (cancelled before it started, given up as silent), or its end torn
        final = msgspec.json.decode(ports.storage.read(layout.run_stats_key(workspace, run)))
        ending = {"status": final["status"], "ended": final["ended"], "reason": final.get("reason") or "",
                  "heartbeat": None}
        ending.update({field: final[field] for field in ("exit_code", "duration") if final.get(field) is not None})
    except NotFound:
        return len(rows), ""
    except UNREADABLE as exc:
        why = f"run_stats.json: {_why(exc)}"
        ports.stats.update_run(workspace, run, {"status": ERROR, "reason": f"xt admin reindex: {why}",
                                                "heartbeat": None})
        return len(rows), why
    if not rows and not hparams and final.get("metrics"):  # the log lost: its final record still has them
        ending.update(metrics=final["metrics"], hparams=final.get("hparams") or {})
    ports.stats.update_run(workspace, run, ending)
    return len(rows), ""
