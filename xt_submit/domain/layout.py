"""Where things live in experiment storage (one place, so every adapter and handler agrees).

    code/<sha256>.zip                                  content-hashed code snapshot (shared by jobs)
    uploads/<name>.zip                                 zips dropped by other systems
    uploads/<name>.result.json                         what became of each (accepted, submitted as a job, refused)
    workspaces/<ws>/jobs/<job>/xt_manifest.json        the job's manifest
    workspaces/<ws>/jobs/<job>/job_log.jsonl           job events
    workspaces/<ws>/runs/<run>/run_log.jsonl           run events: created, queued, started, hparams, metrics, ended
    workspaces/<ws>/runs/<run>/console.txt             the run's stdout and stderr
    workspaces/<ws>/runs/<run>/live/...                the output dir, synced while the run is alive
    workspaces/<ws>/runs/<run>/output/...              final outputs (after-dirs), captured at the end
    workspaces/<ws>/runs/<run>/checkpoint.json         the last Run.set_checkpoint()
    workspaces/<ws>/runs/<run>/run_stats.json          final status, hparams, last metrics, output list
    workspaces/<ws>/{jobs,runs}/<name>/tags.json       tags set after submission (xt set tags)
    workspaces/<ws>/shares/data/<path>/...             the data share (xt upload --share data; a job's
    workspaces/<ws>/shares/model/<path>/...            data-share-path / model-share-path names a folder of it)
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, Iterator, Literal, Mapping, Optional, Tuple, get_args

from xt_submit.domain.errors import OneLineError

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")


class TagError(OneLineError):
    pass


def parse_tags(items: Iterable[Optional[str]], option: str) -> Dict[str, str]:
    """`name[=value]` items (each may be a comma-separated text) as {name: value}."""
    tags: Dict[str, str] = {}
    for item in filter(None, (t.strip() for text in items for t in (text or "").split(","))):
        name, _, value = item.partition("=")
        if not NAME_PATTERN.match(name):
            raise TagError(f"{option}: expected name[=value], got {item!r}")
        tags[name] = value
    return tags
JOB_PATTERN = re.compile(r"^job[1-9][0-9]*$")
RUN_PATTERN = re.compile(r"^run[1-9][0-9]*\.[1-9][0-9]*$")
UPLOADS_PREFIX = "uploads/"
UPLOAD_RESULT_SUFFIX = ".result.json"


def upload_result_key(upload_key: str) -> str:
    """uploads/<name>.zip -> uploads/<name>.result.json, the outcome written back beside a drop."""
    stem = upload_key[:-len(".zip")] if upload_key.endswith(".zip") else upload_key
    return stem + UPLOAD_RESULT_SUFFIX


def code_key(sha256: str) -> str:
    return f"code/{sha256}.zip"


def job_prefix(workspace: str, job: str) -> str:
    return f"workspaces/{workspace}/jobs/{job}/"


def manifest_key(workspace: str, job: str) -> str:
    return job_prefix(workspace, job) + "xt_manifest.json"


def job_log_key(workspace: str, job: str) -> str:
    return job_prefix(workspace, job) + "job_log.jsonl"


# What happens to a job after its dispatch is written once, each to its own file (create-if-absent,
# so a redelivered event writes nothing new): runs added later (an adaptive search's, retries),
# the end of its search, and its cancels. Reindex reads them back.
def added_runs_prefix(workspace: str, job: str) -> str:
    return job_prefix(workspace, job) + "added_runs/"


def added_run_key(workspace: str, job: str, index: int) -> str:
    return added_runs_prefix(workspace, job) + f"{index}.json"


def job_report_key(workspace: str, job: str) -> str:
    """The job's `xt report` page, re-rendered by a team's Functions app when the job ends."""
    return job_prefix(workspace, job) + "report.html"


def search_ended_key(workspace: str, job: str) -> str:
    return job_prefix(workspace, job) + "search_ended.json"


def cancels_prefix(workspace: str, job: str) -> str:
    return job_prefix(workspace, job) + "cancels/"


def cancel_key(workspace: str, job: str, requested_at: float) -> str:
    return cancels_prefix(workspace, job) + f"{requested_at:.6f}.json"


def run_prefix(workspace: str, run: str) -> str:
    return f"workspaces/{workspace}/runs/{run}/"


def run_log_key(workspace: str, run: str) -> str:
    return run_prefix(workspace, run) + "run_log.jsonl"


def console_key(workspace: str, run: str) -> str:
    return run_prefix(workspace, run) + "console.txt"


def live_prefix(workspace: str, run: str) -> str:
    return run_prefix(workspace, run) + "live/"


def output_prefix(workspace: str, run: str) -> str:
    return run_prefix(workspace, run) + "output/"


def checkpoint_key(workspace: str, run: str) -> str:
    return run_prefix(workspace, run) + "checkpoint.json"


def run_stats_key(workspace: str, run: str) -> str:
    return run_prefix(workspace, run) + "run_stats.json"


def job_tags_key(workspace: str, job: str) -> str:
    return job_prefix(workspace, job) + "tags.json"


def run_tags_key(workspace: str, run: str) -> str:
    return run_prefix(workspace, run) + "tags.json"


def job_name(number: int) -> str:
    return f"job{number}"


def job_number(job: str) -> int:
    """job42 -> 42"""
    return int(job[3:])


def run_name(job_number: int, index: int) -> str:
    return f"run{job_number}.{index}"


def run_index(run: str) -> int:
    """run42.3 -> 3"""
    return int(run.rsplit(".", 1)[1])


def job_of_run(run: str) -> str:
    """run42.3 -> job42"""
    return "job" + run[3:].split(".", 1)[0]


def check_name(kind: str, value: str) -> str:
    """Workspace and experiment names become path segments: letters, digits, '_' and '-' only."""
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise ValueError(f"{kind}: expected a name of letters, digits, '_' or '-' starting with a letter, got {value!r}")
    return value


# The data and model shares (XT's): folders of the workspace that runs see as XT_DATA_DIR and
# XT_MODEL_DIR. Per workspace, so a workspace's export, import and delete carry its shares too.
SHARES = ("data", "model")
ShareAction = Literal["none", "download", "mount"]  # config's data-action / model-action
SHARE_ACTIONS: Tuple[str, ...] = get_args(ShareAction)
NO_SHARE = "none"  # the config's way to say no share; a manifest leaves the field out instead
SHARE_DIR_ENV = {"data": "XT_DATA_DIR", "model": "XT_MODEL_DIR"}


def share_prefix(workspace: str, share: str, path: str = "") -> str:
    """workspaces/<ws>/shares/<share>/<path>/ (path: '/'-separated names, '' for the whole share)."""
    inner = path.strip("/")
    return f"workspaces/{workspace}/shares/{share}/" + (inner + "/" if inner else "")


def check_share_path(field: str, path: str) -> str:
    """A share path is '/'-separated names inside the share: no '..', '.', empty parts or backslashes."""
    parts = path.strip("/").split("/") if isinstance(path, str) else []
    if not parts or not path.strip("/") or "\\" in path or "\x00" in path \
            or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{field}: expected a folder of the share as names separated by '/' "
                         f"(e.g. mnist or images/train), without '.' or '..', got {path!r}")
    return path.strip("/")


def share_problems(share: str, action: str, path: Optional[str], writable: bool,
                   fields: Mapping[str, str]) -> Iterator[str]:
    """The rules of a share runs will see, for the config's data:/model: sections and a manifest's
    data/model alike: one line each, naming the field as `fields` spells it (keys action, path, writable)."""
    used = [a for a in SHARE_ACTIONS if a != NO_SHARE]
    action_field = fields["action"]
    if action not in used:
        yield f"{action_field}: expected one of {', '.join(used)}, got {action!r}"
        return
    said = action_field.rsplit(".", 1)[-1]  # data-action (config), action (manifest)
    if path is None:
        yield f"{fields['path']}: required with {said} {action} (the folder of the {share} share)"
        return
    try:
        check_share_path(fields["path"], path)
    except ValueError as exc:
        yield str(exc)
    if writable and action == "download":
        # Uploading a run's changes back would race the job's other runs over the same files.
        yield (f"{fields['writable']}: true is not supported with {said} download (the copy is shared by the "
               f"node's runs and nothing is uploaded back); expected false, or {said} mount")


WORKSPACES_PREFIX = "workspaces/"


def workspace_marker_key(workspace: str) -> str:
    """Written by `xt create workspace`: a workspace exists in storage before its first job."""
    return f"{WORKSPACES_PREFIX}{workspace}/workspace.json"


def workspace_shown_by(key: str) -> Optional[str]:
    """The workspace a storage key shows to exist: its `xt create workspace` marker or a job's file.
    A share or a run alone makes none (shares may be filled before the workspace is created)."""
    if not key.startswith(WORKSPACES_PREFIX):
        return None
    name, _, rest = key[len(WORKSPACES_PREFIX):].partition("/")
    return name if rest == "workspace.json" or rest.startswith("jobs/") else None
