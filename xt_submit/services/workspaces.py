"""Whole workspaces for `xt list workspaces` and `xt create workspace`: which exist, by the rule
reindex uses too (handlers.reindex.workspaces_in_storage), and making a new one."""
from __future__ import annotations

import json
import time
from typing import List

from xt_submit.domain import layout
from xt_submit.domain.errors import OneLineError
from xt_submit.handlers.reindex import workspaces_in_storage
from xt_submit.ports import Ports


class WorkspaceError(OneLineError):
    pass


def list_workspaces(ports: Ports) -> List[str]:
    """Storage's workspaces (the source of truth: a created one has no job yet) and the index's."""
    return sorted(set(ports.stats.workspaces()) | set(workspaces_in_storage(ports)))


def create_workspace(ports: Ports, name: str) -> None:
    """The workspace's marker in storage, written only if no workspace of that name exists (shares
    filled before it stay its own; `xt delete workspace` deletes the marker with the rest)."""
    try:
        layout.check_name("workspace", name)
    except ValueError as exc:
        raise WorkspaceError(str(exc)) from None
    if workspaces_in_storage(ports, only=name):
        raise WorkspaceError(f"workspace {name!r}: exists in storage (created, or with jobs; xt list workspaces "
                             "shows it)")
    if name in ports.stats.workspaces():
        raise WorkspaceError(f"workspace {name!r}: exists in the index, though storage holds no job of it "
                             "(xt list workspaces shows it; xt delete workspace clears it)")
    marker = json.dumps({"workspace": name, "created": time.time()}).encode()
    if not ports.storage.write(layout.workspace_marker_key(name), marker, overwrite=False):
        raise WorkspaceError(f"workspace {name!r}: exists in storage (created meanwhile)")
