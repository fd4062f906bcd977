"""`xt export workspace` / `xt import workspace` / `xt delete workspace` through the CLI: a workspace
moves to another XT home (another storage and index) with `xt list runs` unchanged."""
import json
import zipfile


def test_a_workspace_round_trips_into_another_home_unchanged(project, tmp_path):
    project.xt("run", "--wait", "train.py", "--lr=[0.1,0.2]", "--opt=[sgd,adam]")
    project.xt("set", "tags", "run1.2", "best=yes")
    before = project.json("list", "runs")
    archive = tmp_path / "ws1.zip"
    out = project.xt("export", "workspace", "--out", str(archive)).stdout
    assert out.startswith("workspace ws1: ") and "1 code snapshots" in out
    project.stop_host()
    project.env["XT_HOME"] = str(tmp_path / "elsewhere")
    assert project.json("list", "runs") == []
    out = project.xt("import", "workspace", str(archive)).stdout
    assert out.strip() == "workspace ws1: imported and indexed 1 jobs, 4 runs, 24 metric records"
    assert project.json("list", "runs") == before
    assert project.json("list", "runs", "--tags-all", "best") == [r for r in before if r["name"] == "run1.2"]
    again = project.xt("import", "workspace", str(archive), check=False)
    assert again.returncode == 2 and "already in storage" in again.stderr
    refused = project.xt("delete", "workspace", "ws1", check=False)  # no terminal, no --yes
    assert refused.returncode == 2 and "expected --yes" in refused.stderr and project.json("list", "runs") == before
    project.xt("delete", "workspace", "ws1", "--yes")
    assert project.json("list", "runs") == [] and project.json("list", "blobs", "--json") == []
    project.xt("import", "workspace", str(archive))
    assert project.json("list", "runs") == before


def test_an_archive_that_is_not_ours_or_reaches_outside_is_refused(project, tmp_path):
    cases = {"not-a-zip.zip": None,
             "no-marker.zip": {"workspaces/ws1/x": "1"},
             "outside.zip": {"xt_workspace.json": json.dumps({"format": "xt-workspace", "version": 1,
                                                              "workspace": "ws1"}), "uploads/evil.zip": "x"},
             "escape.zip": {"xt_workspace.json": json.dumps({"format": "xt-workspace", "version": 1,
                                                             "workspace": "ws1"}), "workspaces/ws1/../../x": "x"}}
    for name, entries in cases.items():
        path = tmp_path / name
        if entries is None:
            path.write_text("plain text")
        else:
            with zipfile.ZipFile(path, "w") as archive:
                for entry, data in entries.items():
                    archive.writestr(entry, data)
        result = project.xt("import", "workspace", str(path), check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (name, result.stderr)
        assert str(path) in result.stderr, name
    assert project.json("list", "blobs", "//", "--json") == []  # nothing written
