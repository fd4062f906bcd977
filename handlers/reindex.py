"""Rebuild the stats store from storage, the source of truth (`xt admin reindex`).

Everything the index holds is derived from what storage keeps: the manifest and the job log's
plan (job and queued runs), each run log (start, hparams, metrics, end), and run_stats.json for
runs that ended without a node's report (cancelled before they started, or given up as silent).
"""
from __future__ import annotations

from typing import Dict, List

import msgspec

from xt_submit.domain import layout, records, run_log
from xt_submit.domain.messages import RUNNING, decode_manifest
from xt_submit.ports import NotFound, Ports

from xt_submit.handlers.jobs import roll_job


def _jobs_in_storage(ports: Ports, workspace: str) -> List[str]:
    prefix = f"workspaces/{workspace}/jobs/"
    jobs = {key[len(prefix):].split("/", 1)[0] for key in ports.storage.list(prefix)}
    return sorted((j for j in jobs if layout.JOB_PATTERN.match(j)), key=layout.job_number)


def workspaces_in_storage(ports: Ports) -> List[str]:
    return sorted({key.split("/", 2)[1] for key in ports.storage.list("workspaces/")})


def rebuild_workspace(ports: Ports, workspace: str) -> Dict[str, int]:
    """Forget the workspace's index and re-record every job and run found in storage."""
    ports.stats.clear_workspace(workspace)
    counts = {"jobs": 0, "runs": 0, "metric_records": 0}
    for job in _jobs_in_storage(ports, workspace):
        try:
            manifest = decode_manifest(ports.storage.read(layout.manifest_key(workspace, job)))
            created = run_log.parse(ports.storage.read(layout.job_log_key(workspace, job)))[0]
        except (NotFound, IndexError):
            continue  # a dispatch that crashed before its first write: nothing was promised
        number = layout.job_number(job)
        plan = created["data"]["runs"]
        ports.stats.restore_job_name(workspace, created["data"]["submission_id"], number)
        ports.stats.insert_job(records.new_job(manifest, name=job, number=number,
                                               submission_id=created["data"]["submission_id"], run_count=len(plan),
                                               created=created["time"]))
        ports.stats.insert_runs(records.new_runs(manifest, job=job, number=number, created=created["time"],
                                                 plan=[(run["name"], run["command"], run["hparams"]) for run in plan]))
        for run in plan:
            counts["metric_records"] += _replay_run(ports, workspace, run["name"])
            _replay_tags(ports, workspace, run["name"], layout.run_tags_key(workspace, run["name"]), ports.stats.update_run)
        _replay_tags(ports, workspace, job, layout.job_tags_key(workspace, job), ports.stats.update_job)
        roll_job(ports, workspace, job)
        counts["jobs"] += 1
        counts["runs"] += len(plan)
    return counts


def _replay_tags(ports: Ports, workspace: str, name: str, key: str, update) -> None:
    try:
        update(workspace, name, {"tags": msgspec.json.decode(ports.storage.read(key))})
    except NotFound:
        pass


def _replay_run(ports: Ports, workspace: str, run: str) -> int:
    """Bring one run from queued to what its storage says; returns its metric records."""
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
    if ended:
        data = ended["data"]
        ports.stats.replace_metrics(workspace, run, rows)
        changes = {"status": data["status"], "exit_code": data.get("exit_code"), "ended": ended["time"],
                   "duration": round(max(0.0, ended["time"] - started["time"]), 3) if started else 0.0,
                   "reason": data.get("reason", ""), "metrics": last_metrics, "heartbeat": None}
        if hparams:
            changes["hparams"] = hparams
        ports.stats.update_run(workspace, run, changes)
        return len(rows)
    try:  # ended without its node's report: cancelled before it started, or given up as silent
        final = msgspec.json.decode(ports.storage.read(layout.run_stats_key(workspace, run)))
    except NotFound:
        return 0
    ports.stats.update_run(workspace, run, {"status": final["status"], "ended": final["ended"],
                                            "reason": final.get("reason") or "", "heartbeat": None})
    return 0
