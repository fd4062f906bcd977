"""The paths `xt list blobs`, `xt view blob`, `xt upload`, `xt download` and `xt delete blob` take,
as storage keys (XT's workspace-relative paths):

    run3.1/output/model.pt     -> workspaces/<ws>/runs/run3.1/output/model.pt
    job3/xt_manifest.json      -> workspaces/<ws>/jobs/job3/xt_manifest.json
    shares/data/train.csv      -> workspaces/<ws>/shares/data/train.csv   (anything else: the workspace)
    //code/<sha>.zip           -> code/<sha>.zip                          (// is the storage's root)

A path never leaves what it names: no `..`, `.` or empty parts, no backslashes.
"""
from __future__ import annotations

from xt_submit.domain import layout
from xt_submit.domain.errors import OneLineError

ROOT_MARK = "//"


class PathError(OneLineError):
    pass


def storage_key(path: str, workspace: str, *, prefix: bool = False) -> str:
    """The storage key (or, with prefix, the key prefix: '' and a trailing '/' allowed) of a path."""
    if path.startswith(ROOT_MARK):
        rooted, rest = True, path[len(ROOT_MARK):]
    else:
        rooted, rest = False, path
    if prefix:
        rest = rest.rstrip("/")
    if "\\" in rest or "\x00" in rest:
        raise PathError(f"path {path!r}: expected '/'-separated names, without backslashes")
    parts = rest.split("/") if rest else []
    if (not parts and not prefix) or any(part in ("", ".", "..") for part in parts):
        raise PathError(f"path {path!r}: expected names separated by single '/', without '.' or '..'")
    if rooted:
        base = ""
    else:
        try:
            layout.check_name("workspace", workspace)
        except ValueError as exc:
            raise PathError(str(exc)) from None
        base = f"workspaces/{workspace}/"
        if parts and layout.RUN_PATTERN.match(parts[0]):
            base, parts = layout.run_prefix(workspace, parts[0]), parts[1:]
        elif parts and layout.JOB_PATTERN.match(parts[0]):
            base, parts = layout.job_prefix(workspace, parts[0]), parts[1:]
    key = base + "/".join(parts)
    if prefix:
        return key if not key or key.endswith("/") else key + "/"
    if key.endswith("/") or not parts:
        raise PathError(f"path {path!r}: expected a file's path, got a folder")
    return key


def display_path(key: str, workspace: str) -> str:
    """A storage key as the path a user would type for it (the inverse of storage_key)."""
    for kind in ("runs", "jobs"):
        base = f"workspaces/{workspace}/{kind}/"
        if key.startswith(base):
            return key[len(base):]
    base = f"workspaces/{workspace}/"
    return key[len(base):] if key.startswith(base) else ROOT_MARK + key
