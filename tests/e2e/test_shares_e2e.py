"""Data and model shares through the real CLI, host and runs on the embedded default: `xt upload
--share`, `xt list blobs --share`, a sweep that reads XT_DATA_DIR (downloaded once per node and
content, or the share's own folder when mounted), and bad values refused before any job exists."""
import json
import os
import time

import pytest

READER = (
    "import os, sys\n"
    "from xt_submit import Run\n"
    "lr = float(sys.argv[1].split('=')[1])\n"
    "root = os.environ['XT_DATA_DIR']\n"
    "total = sum(float(open(os.path.join(d, f)).read()) for d, _, fs in os.walk(root) for f in fs)\n"
    "run = Run()\n"
    "run.log_metrics({'data_sum': total, 'loss': total * lr, 'has_model': int('XT_MODEL_DIR' in os.environ)})\n"
    "print('DATA_DIR=' + root, flush=True)\n"
    "run.close()\n"
)


@pytest.fixture
def reader(project, tmp_path):
    (project.code / "train.py").write_text(READER)
    data = tmp_path / "mnist"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("1")
    (data / "sub" / "b.txt").write_text("2")
    return project, data


def share_cache(project):
    root = project.home / "nodes" / "local" / "share_cache"
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def consoles(project, runs):
    return [project.xt("view", "console", run).stdout for run in runs]


def finished(project, job):
    assert project.wait_job(job)["status"] == "completed", project.json("list", "runs", "--job", job)
    return {r["hparams"]["lr"]: r for r in project.json("list", "runs", "--job", job)}


def test_a_sweep_reads_the_data_share_downloaded_once_per_node_and_content(reader):
    project, data = reader
    assert project.xt("upload", "--share", "data", str(data), "mnist").stdout.strip() == \
        "uploaded 2 files to shares/data/mnist"
    assert project.json("list", "blobs", "--share", "data", "mnist") == \
        ["shares/data/mnist/a.txt", "shares/data/mnist/sub/b.txt"]

    job = project.json("run", "--data-action", "download", "--data-share-path", "mnist", "train.py",
                       "--lr=[0.5,2]")["job"]
    runs = finished(project, job)
    assert {lr: r["metrics"]["data_sum"] for lr, r in runs.items()} == {0.5: 3.0, 2: 3.0}
    assert runs[0.5]["metrics"]["loss"] == 1.5 and runs[2]["metrics"]["loss"] == 6.0
    assert runs[2]["metrics"]["has_model"] == 0  # model-action none: no XT_MODEL_DIR
    (first_key,) = share_cache(project)
    texts = consoles(project, [r["name"] for r in runs.values()])
    # two runs at once on one node: one downloaded, the other found it in the cache
    assert sum("downloaded 2 files" in t for t in texts) == 1, texts
    assert sum("in the node's cache already" in t for t in texts) == 1, texts
    cache_dir = project.home / "nodes" / "local" / "share_cache" / first_key
    assert all(f"DATA_DIR={cache_dir}" in t for t in texts)

    # the same content again: nothing downloaded
    again = project.json("run", "--data-action", "download", "--data-share-path", "mnist", "train.py", "--lr=[1]")["job"]
    (rerun,) = finished(project, again).values()
    assert rerun["metrics"]["data_sum"] == 3.0 and share_cache(project) == [first_key]
    assert "in the node's cache already" in consoles(project, [rerun["name"]])[0]

    # one file changed in the share: the next job gets the new content, in a new cache entry
    (data / "sub" / "b.txt").write_text("40")
    project.xt("upload", "--share", "data", str(data / "sub" / "b.txt"), "mnist/sub/b.txt")
    changed = project.json("run", "--data-action", "download", "--data-share-path", "mnist", "train.py", "--lr=[1]")["job"]
    (new,) = finished(project, changed).values()
    assert new["metrics"]["data_sum"] == 41.0
    assert len(share_cache(project)) == 2 and first_key in share_cache(project)
    assert "downloaded 2 files" in consoles(project, [new["name"]])[0]
    # the old entry is untouched (a run still reading it is not disturbed)
    assert (cache_dir / "sub" / "b.txt").read_text() == "2"


def test_a_mount_on_the_local_target_is_the_share_folder_in_storage(reader):
    project, data = reader
    project.xt("upload", "--share", "data", str(data), "mnist")
    project.xt("upload", "--share", "model", str(data / "a.txt"), "ckpt/a.txt")
    (project.code / "xt_config.yaml").write_text(
        "data: {data-share-path: mnist, data-action: mount}\nmodel: {model-share-path: ckpt, model-action: mount}\n")
    job = project.json("run", "train.py", "--lr=[1]")["job"]
    (run,) = finished(project, job).values()
    assert run["metrics"]["data_sum"] == 3.0 and run["metrics"]["has_model"] == 1
    share_folder = project.home / "storage" / "workspaces" / "ws1" / "shares" / "data" / "mnist"
    assert f"DATA_DIR={share_folder}" in consoles(project, [run["name"]])[0]
    assert share_cache(project) == []  # nothing was copied
    manifest = json.loads(project.xt("view", "blob", f"{job}/xt_manifest.json").stdout)
    assert manifest["data"] == {"path": "mnist", "action": "mount", "writable": False}
    assert manifest["model"]["path"] == "ckpt"


@pytest.mark.parametrize("args, expected", [
    (("--data-action", "copy", "--data-share-path", "mnist"),
     "data.data-action: expected one of none, download, mount, got 'copy'"),
    (("--model-action", "download"), "model.model-share-path: required with model-action download"),
    (("--data-action", "download", "--data-share-path", "../etc"), "data.data-share-path: expected a folder"),
    (("--data-action", "download", "--data-share-path", "nothing-here"),
     "data-share-path nothing-here: nothing in the data share of workspace ws1 there"),
    (("--target", "lab", "--data-action", "mount", "--data-share-path", "mnist"),
     "data-action mount: target lab (pool) cannot mount the data share (its boxes cannot mount this storage); "
     "use data-action download"),
])
def test_bad_share_values_are_one_line_and_create_no_job(reader, args, expected):
    project, data = reader
    (project.code / "xt_config.yaml").write_text(
        "boxes: {here: {address: localhost}}\ncompute-targets: {lab: {service: pool, boxes: [here]}}\n")
    project.xt("upload", "--share", "data", str(data), "mnist")
    result = project.xt("run", *args, "train.py", "--lr=1", check=False)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert project.json("list", "jobs") == []


def test_a_config_file_with_a_writable_download_is_refused(reader):
    project, data = reader
    (project.code / "xt_config.yaml").write_text(
        "data: {data-share-path: mnist, data-action: download, data-writable: true}\n")
    result = project.xt("run", "train.py", "--lr=1", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "xt: xt_config.yaml: data.data-writable: true is not supported with data-action download (the copy is "
        "shared by the node's runs and nothing is uploaded back); expected false, or data-action mount")
    assert not (project.home / "storage" / "workspaces").exists() or project.json("list", "jobs") == []


def test_create_workspace_then_list_run_on_and_delete_it(project):
    project.xt("upload", "--share", "data", str(project.code / "train.py"), "x/train.py", "--workspace", "wsdata")
    assert project.json("list", "workspaces") == []  # a share alone makes no workspace
    assert project.xt("create", "workspace", "fresh").stdout.strip() == "created workspace fresh"
    for name, expected in (("fresh", "xt: workspace 'fresh': exists"), ("9bad", "xt: workspace: expected a name"),
                           ("a/b", "xt: workspace: expected a name")):
        refused = project.xt("create", "workspace", name, check=False)
        assert refused.returncode == 2 and refused.stderr.startswith(expected), refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert project.json("list", "workspaces") == ["fresh"]
    job = project.json("run", "--workspace", "fresh", "train.py", "--lr=[1]")["job"]
    deadline = time.time() + 120
    while project.json("view", "job", job, "--workspace", "fresh")["status"] != "completed":
        assert time.time() < deadline
        time.sleep(0.2)
    assert project.json("list", "workspaces") == ["fresh"]
    assert project.xt("create", "workspace", "fresh", check=False).returncode == 2
    project.xt("delete", "workspace", "fresh", "--yes")
    assert project.json("list", "workspaces") == []
    project.xt("create", "workspace", "fresh")  # deleted: the name is free again
    assert project.json("list", "workspaces") == ["fresh"]
    project.xt("create", "workspace", "wsdata")  # a share filled first stays the new workspace's
    assert project.json("list", "workspaces") == ["fresh", "wsdata"]
    (shared,) = project.json("list", "blobs", "--share", "data", "--workspace", "wsdata")
    assert shared.endswith("x/train.py")


def test_a_pool_box_downloads_the_share_once_into_its_own_cache(reader, ssh_boxes):
    """A real OpenSSH box (tests/peers/ssh_boxes.py): the host fetches the share and unpacks it on the
    box through the Node port; the box's two runs at once and the next job share one copy there."""
    project, data = reader
    box = ssh_boxes.boxes["box1"]
    (project.code / "xt_config.yaml").write_text(
        "compute-targets: {lab: {service: pool, boxes: [box1]}}\n"
        f"boxes: {{box1: {{address: \"{box.address}\", max-runs: 2, key: \"{ssh_boxes.client_key}\", "
        f"host-key: \"{box.host_key}\"}}}}\n")
    project.xt("upload", "--share", "data", str(data), "mnist")
    cache, code_cache = box.home / ".xt" / "share_cache", box.home / ".xt" / "code"
    before = set(os.listdir(cache)) if cache.is_dir() else set()
    code_before = set(os.listdir(code_cache)) if code_cache.is_dir() else set()
    job = project.json("run", "--target", "lab", "--data-action", "download", "--data-share-path", "mnist",
                       "train.py", "--lr=[0.5,2]")["job"]
    runs = finished(project, job)
    assert {lr: r["metrics"]["loss"] for lr, r in runs.items()} == {0.5: 1.5, 2: 6.0}
    (key,) = set(os.listdir(cache)) - before
    ready = (cache / key / "ready").read_text().splitlines()
    assert len(ready) == 1 and sorted(p.name for p in (cache / key / ready[0]).rglob("*")) == ["a.txt", "b.txt", "sub"]
    assert sorted(os.listdir(cache / key)) == sorted([ready[0], "ready"])  # placed as data: no marker, no zip
    assert not [name for name in set(os.listdir(code_cache)) - code_before if (code_cache / name / "a.txt").exists()]
    texts = consoles(project, [r["name"] for r in runs.values()])
    assert sum("downloaded 2 files" in t for t in texts) == 1 and all(str(cache / key / ready[0]) in t for t in texts)
    again = project.json("run", "--target", "lab", "--data-action", "download", "--data-share-path", "mnist",
                         "train.py", "--lr=[1]")["job"]
    (rerun,) = finished(project, again).values()
    assert rerun["metrics"]["data_sum"] == 3.0 and set(os.listdir(cache)) - before == {key}
    assert "in the node's cache already" in consoles(project, [rerun["name"]])[0]
