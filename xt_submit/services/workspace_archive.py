"""`xt export workspace` / `xt import workspace`: a workspace as one portable zip — every blob under
workspaces/<ws>/ and the code snapshots its jobs ran — that imports into any storage, after which
the stats index is rebuilt from it (storage is the source of truth)."""
from __future__ import annotations

import json
import os
import time
import zipfile
from typing import Any, Dict, Set

from xt_submit.domain import layout
from xt_submit.domain.errors import OneLineError
from xt_submit.domain.messages import decode_manifest
from xt_submit.handlers.reindex import rebuild_workspace
from xt_submit.node_kit import code_archive
from xt_submit.ports import Ports
from xt_submit.services.local_files import written_aside

MARKER = "xt_workspace.json"
FORMAT = "xt-workspace"
VERSION = 1


class ArchiveError(OneLineError):
    pass


def _workspace_prefix(workspace: str) -> str:
    try:
        return f"workspaces/{layout.check_name('workspace', workspace)}/"
    except ValueError as exc:
        raise ArchiveError(str(exc)) from None


def export_workspace(ports: Ports, workspace: str, path: str) -> Dict[str, int]:
    """Write the archive (aside, then renamed: never half an archive under the name)."""
    prefix = _workspace_prefix(workspace)
    keys = ports.storage.list(prefix)
    if not keys:
        raise ArchiveError(f"workspace {workspace!r}: nothing in storage to export")
    code: Set[str] = set()
    for key in keys:
        if key.endswith("/xt_manifest.json") and key.startswith(prefix + "jobs/"):
            manifest = decode_manifest(ports.storage.read(key), key)
            if manifest.code_key:
                code.add(manifest.code_key)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ArchiveError(f"{path}: expected an existing folder, {folder!r} is not one")
    with written_aside(path) as aside:
        with zipfile.ZipFile(aside, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MARKER, json.dumps({"format": FORMAT, "version": VERSION, "workspace": workspace,
                                                 "exported_at": time.time(), "blobs": len(keys), "code": len(code)}))
            for key in keys + sorted(code):
                archive.writestr(key, ports.storage.read(key))
    return {"blobs": len(keys), "code": len(code)}


def import_workspace(ports: Ports, path: str) -> Dict[str, Any]:
    """Put the archive's blobs into storage and rebuild the workspace's index. Refused when the
    workspace already has anything in storage (an import never mixes into or overwrites one)."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ArchiveError(f"{path}: expected a workspace archive from xt export workspace ({exc})") from None
    with archive:
        try:
            marker = json.loads(archive.read(MARKER))
            workspace = marker["workspace"]
            ok = marker.get("format") == FORMAT and marker.get("version") == VERSION
        except (KeyError, ValueError, TypeError):
            ok = False
        if not ok:
            raise ArchiveError(f"{path}: expected a workspace archive from xt export workspace (no valid {MARKER})")
        prefix = _workspace_prefix(workspace)
        infos = [info for info in code_archive.check_zip(archive, path) if info.filename != MARKER]
        for info in infos:
            if not (info.filename.startswith(prefix) or info.filename.startswith("code/")):
                raise ArchiveError(f"{path}: {info.filename}: expected only {prefix}... and code/... entries")
        if ports.storage.list(prefix):
            raise ArchiveError(f"workspace {workspace!r}: already in storage; delete it first "
                               f"(xt delete workspace {workspace}) or import elsewhere")
        for info in infos:
            ports.storage.write(info.filename, archive.read(info), overwrite=not info.filename.startswith("code/"))
    counts = rebuild_workspace(ports, workspace)
    return {"workspace": workspace, **counts}


def delete_workspace(ports: Ports, workspace: str) -> int:
    """Every blob of the workspace and its index (code snapshots stay: other workspaces may share them)."""
    keys = ports.storage.list(_workspace_prefix(workspace))
    for key in keys:
        ports.storage.delete(key)
    ports.stats.clear_workspace(workspace)
    return len(keys)
