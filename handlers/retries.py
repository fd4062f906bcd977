"""A job's automatic retries: a run that ends in error runs again as a new run of the job (same
command and hparams, `retry_of` its first attempt), up to the job's `retries` times.

Runs can fail at once on several instances, so the new run's number is claimed in storage: its
plan is written create-if-absent as the job's added run of that number (the source of truth, as
dispatch claims a job name); a number another run holds is skipped, and a redelivered failure
finds its own plan again.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import msgspec

from xt_submit.domain import layout, records
from xt_submit.domain.messages import ERROR, decode_manifest
from xt_submit.handlers.dispatch import run_task
from xt_submit.ports import Ports


def retry_if_failed(ports: Ports, run: Dict[str, Any]) -> Optional[str]:
    """The retry of `run` (an ended run's record) if it failed with retries left: its name, else None."""
    if run["status"] != ERROR:
        return None
    ws, job_name = run["workspace"], run["job"]
    job = ports.stats.get_job(ws, job_name, hp_space=False)
    attempt = (run.get("attempt") or 1) + 1
    if attempt > (job.get("retries") or 0) + 1:
        return None
    first = run.get("retry_of") or run["name"]
    plan = {"command": run["command"], "hparams": run["hparams"], "created": run["ended"] or 0,
            "retry_of": first, "attempt": attempt}
    index = _claimed(ports, job, plan)  # this failure's own plan, from an earlier delivery
    if index is None:
        index = job["run_count"] + 1
        while not ports.storage.write(layout.added_run_key(ws, job_name, index), _plan_of(job, index, plan),
                                      overwrite=False):
            if ports.storage.read(layout.added_run_key(ws, job_name, index)) == _plan_of(job, index, plan):
                break  # claimed by this failure on another instance at the same moment
            index += 1
    name = layout.run_name(job["number"], index)
    manifest = decode_manifest(ports.storage.read(layout.manifest_key(ws, job_name)))
    [record] = records.new_runs(manifest, job=job_name, number=job["number"], first_index=index,
                                plan=[(name, run["command"], run["hparams"])], created=run["ended"] or 0)
    ports.stats.insert_runs([{**record, "retry_of": first, "attempt": attempt}])
    ports.compute.submit([run_task(manifest, job_name, name, run["command"], run["hparams"], run["ended"] or 0)])
    if index > job["run_count"]:
        ports.stats.update_job(ws, job_name, {"run_count": index})
    return name


def _plan_of(job: Dict[str, Any], index: int, plan: Dict[str, Any]) -> bytes:
    return msgspec.json.encode({"name": layout.run_name(job["number"], index), **plan})


def _claimed(ports: Ports, job: Dict[str, Any], plan: Dict[str, Any]) -> Optional[int]:
    """The run number already holding this retry's plan, if any (the job's added runs: its retries)."""
    for key in ports.storage.list(layout.added_runs_prefix(job["workspace"], job["name"])):
        number = int(key.rsplit("/", 1)[1].split(".")[0])
        if ports.storage.read(key) == _plan_of(job, number, plan):
            return number
    return None
