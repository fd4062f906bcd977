"""services/workspaces.py: one rule says which workspaces storage holds, for `xt list workspaces`,
`xt create workspace` and reindex alike (handlers.reindex.workspaces_in_storage)."""
import pytest

from support.pipeline import make_manifest
from xt_submit.adapters.stats.sqlite import SqliteStats
from xt_submit.adapters.storage.directory import DirectoryStorage
from xt_submit.domain import layout, records
from xt_submit.handlers.reindex import workspaces_in_storage
from xt_submit.ports import Ports
from xt_submit.services.workspaces import WorkspaceError, create_workspace, list_workspaces


@pytest.fixture
def ports(tmp_path):
    return Ports(storage=DirectoryStorage(tmp_path / "storage"), stats=SqliteStats(str(tmp_path / "stats.db")),
                 compute=None, publisher=None)


def test_a_marker_or_a_job_makes_a_workspace_and_a_share_or_a_run_alone_does_not(ports):
    storage = ports.storage
    storage.write(layout.share_prefix("shared", "data", "mnist") + "x.txt", b"1")
    storage.write(layout.run_log_key("runsonly", "run1.1"), b"")
    storage.write(layout.manifest_key("withjob", "job1"), b"{}")
    create_workspace(ports, "made")
    assert workspaces_in_storage(ports) == ["made", "withjob"] == list_workspaces(ports)
    assert workspaces_in_storage(ports, only="shared") == [] and workspaces_in_storage(ports, only="made") == ["made"]


def test_create_keeps_shares_filled_first_and_refuses_what_list_shows(ports):
    ports.storage.write(layout.share_prefix("ws2", "data", "mnist") + "x.txt", b"1")
    create_workspace(ports, "ws2")
    assert list_workspaces(ports) == ["ws2"] and ports.storage.exists(layout.share_prefix("ws2", "data", "mnist") + "x.txt")
    with pytest.raises(WorkspaceError, match=r"^workspace 'ws2': exists in storage \(created, or with jobs; "
                                             r"xt list workspaces shows it\)$"):
        create_workspace(ports, "ws2")
    ports.storage.write(layout.job_log_key("ws3", "job4"), b"")
    with pytest.raises(WorkspaceError, match=r"^workspace 'ws3': exists in storage"):
        create_workspace(ports, "ws3")
    with pytest.raises(WorkspaceError, match=r"^workspace: expected a name"):
        create_workspace(ports, "a/b")


def test_a_workspace_only_the_index_knows_is_listed_and_refused_saying_so(ports):
    manifest = make_manifest("code/x.zip", "x", workspace="indexed")
    ports.stats.insert_job(records.new_job(manifest, name="job1", number=1, submission_id="s", run_count=0,
                                           created=1.0))
    assert list_workspaces(ports) == ["indexed"] and workspaces_in_storage(ports) == []
    with pytest.raises(WorkspaceError, match=r"^workspace 'indexed': exists in the index, though storage holds no "
                                             r"job of it \(xt list workspaces shows it; xt delete workspace clears it\)$"):
        create_workspace(ports, "indexed")
