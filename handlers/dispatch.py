"""JobSubmitted -> the job and its runs recorded, and the runs queued on compute."""
from __future__ import annotations

from typing import List, NamedTuple, Optional

from xt_submit.domain import adaptive_search, layout, records, run_log, sweep
from xt_submit.domain.manifest import compile_manifest, search_budget
from xt_submit.domain.messages import (UPLOAD_REFUSED, UPLOAD_SUBMITTED, ContractError, JobManifest, JobSubmitted,
                                       RunTask, UploadResult, encode)
from xt_submit.domain.delivery import PERMANENT_ERRORS
from xt_submit.handlers.upload import write_result
from xt_submit.ports import NotFound, Ports, Storage


class Dispatched(NamedTuple):
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
    now = event.submitted_at  # not the clock: a redelivery must record the very same times
    commands = [manifest.command + sweep.format_hparam_args(hp) for hp in hparam_sets]
    manifest_blob = encode(manifest)

    # Storage first (the source of truth), then the index, then compute: a crash between steps
    # is repaired by the redelivery, and every write below is create-if-absent or identical.
    # The plan goes into the job log as one record (a 10,000-run sweep is one write, not 10,000);
    # each run's own log is opened by its node when it starts.
    # The name is the index's, but storage has the last word: a name storage holds for another
    # submission (the index lost it: a deleted or restored stats store) is recorded as that one's
    # and the next is tried, so a job is never written over. The key of each next try follows from
    # the name skipped, so a redelivery takes the very same steps to the very same name.
    name_key = event.submission_id
    while True:
        job = ports.stats.assign_job_name(ws, name_key)  # the same name on a redelivery
        number = layout.job_number(job)
        run_names = [layout.run_name(number, k) for k in range(1, len(hparam_sets) + 1)]
        created = run_log.record(now, "created", {
            "job": job, "submission_id": event.submission_id,
            "runs": [{"name": n, "command": c, "hparams": hp} for n, c, hp in zip(run_names, commands, hparam_sets)],
        })
        owner = _claim(ports.storage, ws, job, event.submission_id, manifest_blob, created)
        if owner is None:
            break
        if owner:
            ports.stats.restore_job_name(ws, owner, number)
        name_key = f"{event.submission_id}#{number}"

    ports.stats.insert_job(records.new_job(manifest, name=job, number=number, submission_id=event.submission_id,
                                           run_count=len(run_names), created=now, search=search_record(manifest)))
    ports.stats.insert_runs(records.new_runs(manifest, job=job, number=number,
                                             plan=zip(run_names, commands, hparam_sets), created=now))
    ports.compute.submit([run_task(manifest, job, name, command, hparams, now)
                          for name, command, hparams in zip(run_names, commands, hparam_sets)])
    if event.upload_key:  # last: "submitted" means the runs are queued
        write_result(ports.storage, UploadResult(upload=event.upload_key, status=UPLOAD_SUBMITTED, job=job,
                                                 runs=run_names, workspace=ws, submission_id=event.submission_id))
    return Dispatched(job, run_names)


def run_task(manifest: JobManifest, job: str, run: str, command: str, hparams: dict, created: float) -> RunTask:
    """What compute gets for one run of the job (dispatch's and an adaptive search's alike)."""
    return RunTask(workspace=manifest.workspace, experiment=manifest.experiment, job=job, run=run, command=command,
                   code_key=manifest.code_key, hparams=hparams, setup=manifest.setup, after_dirs=manifest.after_dirs,
                   after_omit=manifest.after_omit, max_time=manifest.max_time, concurrent=manifest.concurrent,
                   step_name=manifest.step_name, target=manifest.target, created_at=created,
                   primary_metric=manifest.primary_metric if manifest.early_stopping else "",
                   maximize_metric=manifest.maximize_metric, resume_from=manifest.resume_from,
                   data=manifest.data, model=manifest.model)


def search_record(manifest: JobManifest) -> dict:
    """An adaptive job's search, as its record starts ({} for grid and random: their plan is whole)."""
    if not adaptive_search.is_adaptive(manifest.search_type) or manifest.hp_points is not None:
        return {}
    return {"type": manifest.search_type, "budget": search_budget(manifest), "concurrent": manifest.concurrent,
            "ended": "", "best": None}


def _claim(storage: Storage, ws: str, job: str, submission_id: str, manifest_blob: bytes, created: bytes) -> Optional[str]:
    """Write the job's manifest and log, each only if absent. None when the name is this
    submission's (written now, or by an earlier delivery of it); else the submission storage holds
    it for ('' when that is unknown), with nothing written over it."""
    manifest_key, log_key = layout.manifest_key(ws, job), layout.job_log_key(ws, job)
    if not storage.write(manifest_key, manifest_blob, overwrite=False):
        owner = _log_owner(storage, log_key)
        if owner is None and storage.read(manifest_key) != manifest_blob:
            return ""  # another dispatch's manifest, that crashed before writing its log
        if owner not in (None, submission_id):
            return owner
    if not storage.create_log(log_key, created):
        owner = _log_owner(storage, log_key)
        if owner != submission_id:
            return owner or ""
    return None


def _log_owner(storage: Storage, log_key: str) -> Optional[str]:
    """The submission a job log was created for; None without a log."""
    try:
        opening = run_log.parse(storage.read(log_key))
    except NotFound:
        return None
    return str(opening[0].get("data", {}).get("submission_id") or "") if opening else None
