"""`xt export tensorboard` and `xt view tensorboard` through the CLI on a real 4-run sweep: the exported
folders are named by the swept hparams, and a real TensorBoard, started by `xt view tensorboard`,
serves each run's logged values over its HTTP API."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from support.cli_project import Project

pytest.importorskip("tensorboardX")
pytest.importorskip("tensorboard")

READY_SECONDS = 60  # a loaded 2-core machine can take its time to start TensorBoard and load the files


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(port, path, body=None):
    """GET path, or POST body as JSON (TensorBoard wants its XSRF header on a POST)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if body is not None:
        request = urllib.request.Request(request.full_url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for_runs(port, process, expected):
    """TensorBoard's list of runs, once it holds every expected run (it loads the files after it listens)."""
    deadline = time.monotonic() + READY_SECONDS
    runs = None
    while time.monotonic() < deadline:
        assert process.poll() is None, f"xt view tensorboard exited with {process.returncode}"
        try:
            runs = get_json(port, "/data/runs")
            if set(expected) <= set(runs):
                return runs
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"TensorBoard did not list {sorted(expected)} within {READY_SECONDS}s (last: {runs})")


def test_a_sweep_exports_and_tensorboard_serves_its_values(tmp_path):
    project = Project(tmp_path)
    try:
        out = project.json("run", "--wait", "--concurrent", "4", "train.py", "--lr=[0.01,0.1]", "--opt=[sgd,adam]")
        assert out["status"] == "completed" and len(out["runs"]) == 4
        records = {r["name"]: r for r in project.json("list", "runs", "--job", "job1")}
        history = project.json("view", "metrics", "job1")
        folders = {run: f"{run}_lr={r['hparams']['lr']}_opt={r['hparams']['opt']}" for run, r in records.items()}

        dest = tmp_path / "tb"
        exported = project.xt("export", "tensorboard", "--job", "job1", "--dest", str(dest))
        assert sorted(p.name for p in dest.iterdir()) == sorted(folders.values())
        assert f"wrote 4 runs to {dest}" in exported.stdout

        missing = project.xt("export", "tensorboard", "run1.9", "--dest", str(tmp_path / "none"), check=False)
        assert missing.returncode == 2 and missing.stderr == "xt: run run1.9 not found in workspace ws1\n"
        assert not (tmp_path / "none").exists()

        port = free_port()
        viewer = subprocess.Popen([sys.executable, "-m", "xt_submit.cli", "view", "tensorboard", "--job", "job1",
                                   "--dest", str(tmp_path / "viewed"), "--port", str(port)],
                                  cwd=project.code, env=project.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            wait_for_runs(port, viewer, folders.values())
            for run, folder in folders.items():
                query = urllib.parse.urlencode({"run": folder, "tag": "loss"})
                points = get_json(port, f"/data/plugin/scalars/scalars?{query}")  # [[wall time, step, value], ...]
                logged = [m for m in history[run] if m["name"] == "loss"]
                assert [step for _, step, _ in points] == [m["step"] for m in logged] == [1, 2, 3]
                assert [value for _, _, value in points] == pytest.approx([m["value"] for m in logged], rel=1e-6)
                assert [wall for wall, _, _ in points] == pytest.approx([m["time"] for m in logged], abs=1e-3)
                lr = records[run]["hparams"]["lr"]
                assert [value for _, _, value in points] == pytest.approx([lr * 10 / step for step in (1, 2, 3)],
                                                                          rel=1e-6)
            # the HParams plugin: both swept hparams, over the values the sweep had, and the logged metrics
            experiment = get_json(port, "/data/plugin/hparams/experiment", {"experimentName": ""})
            infos = {info["name"]: info for info in experiment["hparamInfos"]}
            assert (infos["lr"]["differs"], infos["lr"]["domainInterval"]) == (True, {"minValue": 0.01, "maxValue": 0.1})
            assert (infos["opt"]["differs"], sorted(infos["opt"]["domainDiscrete"])) == (True, ["adam", "sgd"])
            assert sorted(info["name"]["tag"] for info in experiment["metricInfos"]) == ["acc", "loss"]
        finally:
            os.killpg(viewer.pid, signal.SIGINT)  # as Ctrl-C would: TensorBoard and xt view both stop
            try:
                output, _ = viewer.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(viewer.pid, signal.SIGKILL)
                output, _ = viewer.communicate()
        assert f"TensorBoard on http://localhost:{port}/" in output
    finally:
        project.stop_host()
