"""Submitting, rerunning and cancelling jobs: the steps `xt run`, `xt rerun` and `xt cancel` take,
for any caller (the CLI, a notebook, a test) with the parts `bootstrap` built.

`keep_served` is the caller's way to make sure something serves the queue (the CLI starts a
local host for the embedded default; with a team's services the Functions app does): a
submission calls it after sending and while it waits for the dispatch.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import msgspec

from xt_submit.config import Config
from xt_submit.domain import layout, run_log, sweep
from xt_submit.domain.errors import NotFound, OneLineError
from xt_submit.domain.manifest import MANIFEST_NAME, compile_manifest
from xt_submit.domain.messages import (QUEUED, TERMINAL_STATUSES, CancelRequested, ContractError, JobManifest,
                                       JobSubmitted, decode_event, decode_manifest, encode)
from xt_submit.ports import Parts
from xt_submit.services.local_files import written_aside
from xt_submit.services import targets

DISPATCH_TIMEOUT_SECONDS = 120.0


class SubmitError(OneLineError):
    pass


class Submission(NamedTuple):
    job: str
    runs: List[str]


def plan(manifest: JobManifest, cfg: Config, source: str = "xt run") -> List[Dict[str, Any]]:
    """The runs a manifest asks for, checked and compiled once: [{index, hparams, command}]. A target
    of this config is asked, too, whether it can make the job's share mounts (before any upload)."""
    planned = [{"index": k, "hparams": hp, "command": manifest.command + sweep.format_hparam_args(hp)}
               for k, hp in enumerate(compile_manifest(manifest, source), start=1)]
    if manifest.target in cfg.compute_targets:
        check_shares(cfg, manifest)
    return planned


def submit(parts: Parts, manifest: JobManifest, cfg: Config, keep_served: Callable[[], None], *,
           where_to_look: str = "", timeout: float = DISPATCH_TIMEOUT_SECONDS,
           target_registered: bool = False) -> Submission:
    """Queue the job (JobSubmitted) and wait until it is dispatched; returns its name and runs.
    `manifest` has passed `plan` (which checks it and its share mounts). target_registered: the
    caller registered the job's target already (`xt run`, before it started the host)."""
    if manifest.target in cfg.compute_targets and not target_registered:
        targets.register(parts.compute, cfg, manifest.target)  # the host learns the boxes from here, never from a message
    submission_id = uuid.uuid4().hex
    parts.ports.publisher.send_job(JobSubmitted(submission_id=submission_id, manifest=manifest, submitted_at=time.time()))
    keep_served()
    return await_dispatch(parts, manifest.workspace, submission_id, keep_served, where_to_look=where_to_look,
                          timeout=timeout)


def check_shares(cfg: Config, manifest: JobManifest) -> None:
    """Refuse, as one line naming the target, a share mount the target's kind cannot make."""
    kind = targets.kind_of(cfg, manifest.target)
    for share in layout.SHARES:
        spec = getattr(manifest, share)
        if spec is not None and spec.action == "mount":
            problem = kind.mount_problem(cfg, manifest.target, share, spec.writable)
            if problem:
                raise SubmitError(problem)


def check_shares_filled(storage, manifest: JobManifest) -> None:
    """A share folder with nothing in it is a typo or a missing upload: refused before anything is sent."""
    for share in layout.SHARES:
        spec = getattr(manifest, share)
        if spec is not None and not storage.list(layout.share_prefix(manifest.workspace, share, spec.path)):
            raise SubmitError(f"{share}-share-path {spec.path}: nothing in the {share} share of workspace "
                              f"{manifest.workspace} there; fill it with xt upload --share {share} LOCAL {spec.path}")


def write_drop_zip(path: Path, manifest: JobManifest, cfg: Config, base: str, exclude: Sequence[Path] = ()) -> int:
    """`xt run --to-zip`: the code snapshot `xt run` would upload, with the manifest it would send
    as xt_manifest.json at the top, written to `path` whole or not at all; its size in bytes.
    Dropped as uploads/<name>.zip, it becomes the same job (its code_key is the drop's own)."""
    import io  # here: the snapshot's modules (zipfile and what it loads) are not on `xt run`'s way to its host
    import stat
    import zipfile

    from xt_submit.node_kit import code_archive

    folder = path.parent
    if not folder.is_dir():
        raise SubmitError(f"{path}: no folder {folder} to write it in")
    if path.is_dir():
        raise SubmitError(f"{path}: a folder, not a file name")
    # An earlier drop written into the code never ships inside the next one.
    target = path.resolve()
    roots = [(Path(base) / code_dir).resolve() for code_dir in cfg.code.code_dirs]
    omit = [*cfg.code.code_omit, *(f"/{target.relative_to(root).as_posix()}" for root in roots
                                   if target.is_relative_to(root))]
    snapshot = code_archive.snapshot_code(cfg.code.code_dirs, base, omit, max_bytes=cfg.code.max_size_mb * 1024**2,
                                          exclude=exclude)
    buffer = io.BytesIO(snapshot.data)
    with zipfile.ZipFile(buffer, "a") as archive:
        if MANIFEST_NAME in archive.namelist():
            raise SubmitError(f"{MANIFEST_NAME}: the code dirs hold one at their top, where the drop's own goes")
        info = zipfile.ZipInfo(MANIFEST_NAME, code_archive.FIXED_ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = (0o644 | stat.S_IFREG) << 16
        drop_manifest = msgspec.structs.replace(manifest, code_key="", code_sha256="")
        archive.writestr(info, msgspec.json.format(encode(drop_manifest), indent=2) + b"\n")
    data = buffer.getvalue()
    try:
        with written_aside(path) as aside:  # no partial file, whatever stopped it
            aside.write_bytes(data)
    except OSError as exc:
        raise SubmitError(f"{path}: {exc.strerror or exc}") from None
    return len(data)


def await_dispatch(parts: Parts, workspace: str, submission_id: str, keep_served: Callable[[], None], *,
                   where_to_look: str = "", timeout: float = DISPATCH_TIMEOUT_SECONDS) -> Submission:
    """The job and all its runs once dispatched; SubmitError with the reason if the submission was
    dead-lettered. The dispatch records the job, then its runs: a job whose runs are not all there
    yet (the index has fewer than the job's run_count) is not dispatched yet."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        job = parts.ports.stats.find_job_by_submission(workspace, submission_id)
        runs = _all_runs(parts, workspace, job) if job else None
        if job and runs is not None:
            return Submission(job, runs)
        reason = _rejection(parts, submission_id)
        if reason is not None:
            raise SubmitError(f"job rejected: {reason}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
        keep_served()
    look = f"; see {where_to_look}" if where_to_look else ""
    raise SubmitError(f"submission {submission_id} was not dispatched within {timeout:.0f}s{look}")


def _all_runs(parts: Parts, workspace: str, job: str) -> Optional[List[str]]:
    """The job's runs, once the index holds as many as the job says it has (else None)."""
    try:
        expected = parts.ports.stats.get_job(workspace, job)["run_count"]
    except NotFound:
        return None
    runs = [r["name"] for r in parts.ports.stats.list_runs(workspace, job=job)]
    return runs if len(runs) >= expected else None


def _rejection(parts: Parts, submission_id: str):
    """Why the submission was dead-lettered, or None if it was not."""
    for entry in parts.queue.peek(parts.ports.publisher.jobs_queue + "/$DeadLetterQueue", limit=1000):
        if submission_id.encode() not in entry["body"]:
            continue  # cheap: most dead letters are someone else's
        try:
            event = decode_event(entry["body"])
        except ContractError:
            continue
        if isinstance(event, JobSubmitted) and event.submission_id == submission_id:
            return entry["reason"]
    return None


def follow(parts: Parts, workspace: str, job: str, on_progress: Callable[[Dict[str, Any]], None],
           keep_served: Callable[[], None], poll_seconds: float = 0.1,
           closing_poll_seconds: float = 0.01) -> Dict[str, Any]:
    """Wait for the job to end, calling on_progress with its record each time round; returns the last.
    Once no run is waiting to start, the end may be near: it looks again closing_poll_seconds after a
    run ended, doubling the pause up to poll_seconds while none does (a job of short runs is seen to
    end ~10 ms after it does, not ~50 ms on average; one of long runs costs a few looks per run), and
    where the queue can tell (the embedded one), each message its host handles then ends the pause."""
    pause, finished = poll_seconds, -1
    with parts.queue.followed() as until_handled:
        while True:
            record = parts.ports.stats.get_job(workspace, job)
            on_progress(record)
            if record["status"] in TERMINAL_STATUSES:
                return record
            keep_served()
            now_finished = finished_runs(record)
            closing = not record["counts"].get(QUEUED)
            if not closing:
                pause = poll_seconds
            elif now_finished != finished:
                pause = closing_poll_seconds
            else:
                pause = min(poll_seconds, pause * 2)
            finished = now_finished
            if closing:
                until_handled(pause)  # cut short by the next message the host handles
            else:  # far from the end, every message handled (a big sweep's thousands) is not worth a look
                time.sleep(pause)


def finished_runs(record: Dict[str, Any]) -> int:
    return sum(n for status, n in record["counts"].items() if status in TERMINAL_STATUSES)


def rerun_manifest(parts: Parts, cfg: Config, workspace: str, runs: Sequence[str],
                   changes: Optional[Dict[str, Any]] = None) -> Tuple[JobManifest, List[str]]:
    """A manifest for these runs of one job again: the same code snapshot and base command, each
    run's own hparams (with `changes` applied to every run), one new run per old one in order; and
    the commands they will run."""
    if not runs:
        raise NotFound("rerun: no runs to rerun")
    records = [parts.ports.stats.get_run(workspace, run) for run in runs]  # NotFound names the first missing
    jobs = {record["job"] for record in records}
    if len(jobs) != 1:
        raise ContractError(f"rerun: expected runs of one job, got runs of {', '.join(sorted(jobs))}")
    (job,) = jobs
    storage = parts.ports.storage
    manifest = decode_manifest(storage.read(layout.manifest_key(workspace, job)))
    planned = {entry["name"]: entry for entry in
               run_log.parse(storage.read(layout.job_log_key(workspace, job)))[0]["data"]["runs"]}
    points = [{**planned[run]["hparams"], **(changes or {})} for run in runs]
    rerun_of = runs[0] if len(runs) == 1 else job
    manifest = msgspec.structs.replace(manifest, hp_space={}, hp_points=points, search_type="grid", runs=None,
                                       max_runs=None, tags={**manifest.tags, "rerun_of": rerun_of})
    return manifest, [entry["command"] for entry in plan(manifest, cfg, "rerun")]


def failed_runs(parts: Parts, workspace: str, job: str, statuses: Sequence[str]) -> List[str]:
    """The job's runs that ended with one of `statuses`, in run order (what `xt rerun --failed` reruns)."""
    parts.ports.stats.get_job(workspace, job)
    return [run["name"] for run in parts.ports.stats.list_runs(workspace, job=job) if run["status"] in statuses]


def unfinished_jobs(parts: Parts, workspace: str, target: Optional[str] = None) -> List[str]:
    """The workspace's jobs not yet ended (on `target` only, when given): what `xt cancel all` stops."""
    return [job["name"] for job in parts.ports.stats.list_jobs(workspace)
            if job["status"] not in TERMINAL_STATUSES and (target is None or job["target"] == target)]


def request_cancel(parts: Parts, workspace: str, kind: str, names: Sequence[str]) -> None:
    """CancelRequested per job for the named runs (kind "run") or whole jobs (kind "job"); each
    name must exist (NotFound otherwise) before anything is sent."""
    by_job: Dict[str, List[str]] = {}
    for name in names:
        if kind == "run":
            parts.ports.stats.get_run(workspace, name)
            by_job.setdefault(layout.job_of_run(name), []).append(name)
        else:
            parts.ports.stats.get_job(workspace, name)
            by_job[name] = []
    now = time.time()
    parts.ports.publisher.send_events([CancelRequested(workspace=workspace, job=job, runs=runs, requested_at=now)
                                       for job, runs in by_job.items()])
