"""XT's storage paths as keys: a run or job first part goes to its folder, // to the root, nothing escapes."""
import pytest

from xt_submit.domain.storage_paths import PathError, display_path, storage_key


@pytest.mark.parametrize("path, key", [
    ("run3.1/output/model.pt", "workspaces/ws1/runs/run3.1/output/model.pt"),
    ("job3/xt_manifest.json", "workspaces/ws1/jobs/job3/xt_manifest.json"),
    ("shares/data/train.csv", "workspaces/ws1/shares/data/train.csv"),
    ("//code/abc.zip", "code/abc.zip"),
    ("run3x/a", "workspaces/ws1/run3x/a"),  # not a run's name: an ordinary folder
])
def test_a_path_names_one_key_and_display_path_gives_it_back(path, key):
    assert storage_key(path, "ws1") == key
    assert display_path(key, "ws1") == path


@pytest.mark.parametrize("path, prefix", [
    ("", "workspaces/ws1/"), ("run3.1", "workspaces/ws1/runs/run3.1/"), ("run3.1/", "workspaces/ws1/runs/run3.1/"),
    ("//", ""), ("//uploads/", "uploads/"), ("job3/output", "workspaces/ws1/jobs/job3/output/"),
])
def test_a_folder_path_is_a_prefix(path, prefix):
    assert storage_key(path, "ws1", prefix=True) == prefix


@pytest.mark.parametrize("path, expected", [
    ("../x", "without '.' or '..'"), ("run3.1/../../ws2/x", "without '.' or '..'"), ("a//b", "single '/'"),
    ("./a", "without '.' or '..'"), ("a\\b", "without backslashes"), ("", "expected names"),
    ("run3.1", "a file's path, got a folder"), ("//", "expected names"),
])
def test_a_path_that_escapes_or_names_nothing_is_refused(path, expected):
    with pytest.raises(PathError) as caught:
        storage_key(path, "ws1")
    assert expected in str(caught.value) and repr(path) in str(caught.value)


def test_a_bad_workspace_is_refused():
    with pytest.raises(PathError, match="workspace"):
        storage_key("a", "../ws")
