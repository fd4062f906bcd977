"""JobSubmitted -> the job and its runs recorded, and the runs queued on compute."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

from xt_submit.domain import layout, records, run_log, sweep
from xt_submit.domain.manifest import compile_manifest
from xt_submit.domain.messages import (UPLOAD_REFUSED, UPLOAD_SUBMITTED, ContractError, JobSubmitted, RunTask,
                                       UploadResult, encode)
from xt_submit.domain.delivery import PERMANENT_ERRORS
from xt_submit.handlers.upload import write_result
from xt_submit.ports import Ports


@dataclass(frozen=True)
class Dispatched:
    job: str
    runs: List[str]


def dispatch_job(event: JobSubmitted, ports: Ports) -> Dispatched:
    manifest = event.manifest
    try:
        hparam_sets = compile_manifest(manifest)
        if not manifest.code_key or not ports.storage.exists(manifest.code_key):
            raise ContractError(f"xt_manifest.json: code_key: {manifest.code_key or '(empty)'} not found in storage")
    except PERMANENT_ERRORS as exc:
        if event.upload_key:  # the dropping system learns why, before the message is dead-lettered
            write_result(ports.storage, UploadResult(upload=event.upload_key, status=UPLOAD_REFUSED, reason=str(exc)))
        raise

    ws = manifest.workspace
    job = ports.stats.assign_job_name(ws, event.submission_id)  # the same name on a redelivery
    number = layout.job_number(job)
    now = event.submitted_at  # not the clock: a redelivery must record the very same times
    run_names = [layout.run_name(number, k) for k in range(1, len(hparam_sets) + 1)]
    commands = [manifest.command + sweep.format_hparam_args(hp) for hp in hparam_sets]

    # Storage first (the source of truth), then the index, then compute: a crash between steps
    # is repaired by the redelivery, and every write below is create-if-absent or identical.
    # The plan goes into the job log as one record (a 10,000-run sweep is one write, not 10,000);
    # each run's own log is opened by its node when it starts.
    ports.storage.write(layout.manifest_key(ws, job), encode(manifest))
    ports.storage.create_log(layout.job_log_key(ws, job), run_log.record(now, "created", {
        "job": job, "submission_id": event.submission_id,
        "runs": [{"name": n, "command": c, "hparams": hp} for n, c, hp in zip(run_names, commands, hparam_sets)],
    }))

    ports.stats.insert_job(records.new_job(manifest, name=job, number=number, submission_id=event.submission_id,
                                           run_count=len(run_names), created=now))
    ports.stats.insert_runs(records.new_runs(manifest, job=job, number=number,
                                             plan=zip(run_names, commands, hparam_sets), created=now))
    ports.compute.submit([
        RunTask(workspace=ws, experiment=manifest.experiment, job=job, run=name, command=command,
                code_key=manifest.code_key, hparams=hparams, setup=manifest.setup, after_dirs=manifest.after_dirs,
                after_omit=manifest.after_omit, max_time=manifest.max_time, concurrent=manifest.concurrent,
                step_name=manifest.step_name, target=manifest.target, created_at=now)
        for name, command, hparams in zip(run_names, commands, hparam_sets)
    ])
    if event.upload_key:  # last: "submitted" means the runs are queued
        write_result(ports.storage, UploadResult(upload=event.upload_key, status=UPLOAD_SUBMITTED, job=job,
                                                 runs=run_names, workspace=ws, submission_id=event.submission_id))
    return Dispatched(job, run_names)
