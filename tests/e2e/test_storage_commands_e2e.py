"""`xt list blobs`, `xt view blob`, `xt upload`, `xt download PATH LOCAL`, `xt delete blob` and
`xt extract` through the CLI, on the embedded directory storage and on Blob Storage (Azurite)."""
import json
import subprocess
import sys

import pytest


@pytest.fixture(params=["directory", "azurite"])
def storage_project(request, project):
    if request.param == "azurite":
        azurite = request.getfixturevalue("azurite_connection_string")
        (project.code / "xt_config.yaml").write_text(
            "external-services:\n"
            f"  team-store: {{type: blob, connection-string: \"{azurite}\", container: xt-storage-cmds}}\n"
            "xt-services: {storage: team-store}\n")
    return project


def test_files_go_up_come_back_and_are_listed_by_their_paths(storage_project, tmp_path):
    project = storage_project
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "train.csv").write_text("a,b\n1,2\n")
    (data / "sub" / "labels.txt").write_text("cat\n")
    out = project.xt("upload", str(data), "shares/data/").stdout
    assert out.strip() == "uploaded 2 files to shares/data/"
    assert project.json("list", "blobs", "shares/", "--json") == ["shares/data/sub/labels.txt", "shares/data/train.csv"]
    assert project.xt("view", "blob", "shares/data/train.csv").stdout == "a,b\n1,2\n"
    back = tmp_path / "back"
    back.mkdir()
    project.xt("download", "shares/data/", str(back))
    assert (back / "train.csv").read_text() == "a,b\n1,2\n" and (back / "sub" / "labels.txt").read_text() == "cat\n"
    refused = project.xt("delete", "blob", "shares/data/train.csv", check=False)  # no terminal, no --yes
    assert refused.returncode == 2 and "expected --yes" in refused.stderr
    assert "shares/data/train.csv" in project.json("list", "blobs", "shares/", "--json")
    project.xt("delete", "blob", "shares/data/train.csv", "--yes")
    assert project.json("list", "blobs", "shares/", "--json") == ["shares/data/sub/labels.txt"]
    for args, expected in ((("view", "blob", "shares/data/train.csv"), "no such blob"),
                           (("view", "blob", "../other/x"), "without '.' or '..'"),
                           (("upload", str(tmp_path / "missing"), "x"), "expected a file or a folder")):
        result = project.xt(*args, check=False)
        assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr


def test_extract_rebuilds_a_run_that_runs_again_the_same(project, tmp_path):
    (project.code / "train.py").write_text(
        "import os, sys\nfrom xt_submit import Run\nrun = Run()\nlr = float(sys.argv[1].split('=')[1])\n"
        "os.makedirs('outputs', exist_ok=True)\nopen('outputs/result.txt', 'w').write(str(lr * 2))\n"
        "run.log_metrics({'loss': lr * 2})\n")
    job = project.json("run", "--wait", "train.py", "--lr=0.25")
    (run,) = job["runs"]
    where = tmp_path / "rebuilt"
    out = project.xt("extract", run, str(where)).stdout
    assert out.strip().endswith("rerun with: python train.py --lr=0.25")
    assert (where / "train.py").read_text() == (project.code / "train.py").read_text()
    stats = json.loads((where / "run_stats.json").read_text())
    assert stats["status"] == "completed" and stats["metrics"]["loss"] == 0.5
    rerun = subprocess.run([sys.executable, "train.py", "--lr=0.25"], cwd=where, env=dict(project.env, XT_RUN_NAME=""),
                           capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    assert (where / "outputs" / "result.txt").read_text() == "0.5"
    again = project.xt("extract", run, str(where), check=False)
    assert again.returncode == 2 and "expected a new or empty folder" in again.stderr


def test_upload_and_list_by_share(storage_project, tmp_path):
    project = storage_project
    config = project.code / "xt_config.yaml"
    if config.exists():  # a container of its own: the other tests' blobs stay out of the listings
        config.write_text(config.read_text().replace("xt-storage-cmds", "xt-share-cmds"))
    data = tmp_path / "mnist"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("1")
    (data / "sub" / "b.txt").write_text("2")
    assert project.xt("upload", "--share", "data", str(data), "mnist").stdout.strip() == \
        "uploaded 2 files to shares/data/mnist"
    assert project.xt("upload", "--share", "model", str(data / "a.txt"), "ckpt/").stdout.strip() == \
        "uploaded 1 file to shares/model/ckpt/a.txt"
    assert project.json("list", "blobs", "--share", "data", "--json") == ["shares/data/mnist/a.txt",
                                                                          "shares/data/mnist/sub/b.txt"]
    assert project.json("list", "blobs", "--share", "data", "mnist/sub", "--json") == ["shares/data/mnist/sub/b.txt"]
    assert project.json("list", "blobs", "--share", "model", "--json") == ["shares/model/ckpt/a.txt"]
    # a share is the workspace's: another workspace has its own
    assert project.xt("list", "blobs", "--share", "data", "--workspace", "other").stdout.strip() == \
        "no blobs under shares/data/"
    for args, expected in ((("list", "blobs", "--share", "data", "../model"), "without '.' or '..'"),
                           (("list", "blobs", "--share", "data", "//code/"), "expected a path in the share"),
                           (("upload", "--share", "weights", str(data), "x"), "invalid choice: 'weights'")):
        result = project.xt(*args, check=False)
        assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr
