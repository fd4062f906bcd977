"""Pool targets: sweeps on the team's own machines over SSH, against real OpenSSH servers on
loopback (tests/peers/ssh_boxes.py), driven through the real `xt` CLI."""
import json
import os
import textwrap
import time
from pathlib import Path

import pytest

from peers.ssh_boxes import free_port

POOL_SCRIPT = textwrap.dedent('''
    import argparse, getpass, json, os, sys, time
    from xt_submit import Run

    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--sleep", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    started = time.time()
    run = Run(flush_seconds=0.1)
    for step in range(1, args.steps + 1):
        run.log_metrics({"step": step, "loss": args.lr * 10 / step})
        time.sleep(args.sleep / args.steps)
    os.makedirs(os.environ["XT_OUTPUT_DIR"], exist_ok=True)
    with open(os.path.join(os.environ["XT_OUTPUT_DIR"], "where.json"), "w") as f:
        json.dump({"user": getpass.getuser(), "started": started, "ended": time.time(), "lr": args.lr,
                   "activated": os.environ.get("XT_ACTIVATED", ""), "pid": os.getpid()}, f)
    print(f"done lr={args.lr} on {getpass.getuser()}", flush=True)
''')


def pool_config(ssh_boxes, tmp_path, extra_boxes="", box_settings="", setups=""):
    key = ssh_boxes.client_key
    box1, box2 = ssh_boxes.boxes["box1"], ssh_boxes.boxes["box2"]
    return textwrap.dedent(f'''
        compute-targets:
          pool:
            service: pool
            boxes: [box1, box2{extra_boxes and ", " + ", ".join(extra_boxes)}]
        {textwrap.indent(setups, "        ").strip()}
        boxes:
          box1: {{address: "{box1.address}", max-runs: 2, key: "{key}", host-key: "{box1.host_key}"{box_settings}}}
          box2: {{address: "{box2.address}", max-runs: 2, key: "{key}", host-key: "{box2.host_key}"{box_settings}}}
    ''') + "".join(f'  {name}: {{address: "{address}", max-runs: 2, key: "{key}"}}\n'
                   for name, address in (extra_boxes or {}).items())


@pytest.fixture
def pool_project(project, ssh_boxes):
    (project.code / "train.py").write_text(POOL_SCRIPT)
    return project


def outputs(project, run, tmp_path):
    dest = tmp_path / "dl" / run
    project.xt("download", run, "--dest", str(dest))
    return json.loads((dest / run / "where.json").read_text())


def test_sweep_spreads_over_two_boxes_and_skips_an_unreachable_one(pool_project, ssh_boxes, tmp_path):
    dead = f"nobody@127.0.0.1:{free_port()}"
    (pool_project.code / "xt_config.yaml").write_text(pool_config(ssh_boxes, tmp_path, extra_boxes={"box3": dead}))
    result = pool_project.json("run", "--target", "pool", "--wait", "train.py", "--lr=[0.1,0.2,0.3,0.4,0.5,0.6]")
    assert result["status"] == "completed", result
    runs = pool_project.json("list", "runs", "--job", result["job"], "--all")
    assert len(runs) == 6 and {r["status"] for r in runs} == {"completed"}
    where = {r["name"]: outputs(pool_project, r["name"], tmp_path) for r in runs}
    assert {w["user"] for w in where.values()} == {"xtbox1", "xtbox2"}  # both boxes worked
    for run in runs:
        assert run["metrics"]["loss"] == pytest.approx(where[run["name"]]["lr"] * 10 / 3)
        assert run["node_id"] == {"xtbox1": "box1", "xtbox2": "box2"}[where[run["name"]]["user"]]
    for user in ("xtbox1", "xtbox2"):  # never more than max-runs at once on a box
        spans = [(w["started"], w["ended"]) for w in where.values() if w["user"] == user]
        for start, _ in spans:
            assert sum(1 for s, e in spans if s <= start < e) <= 2
    status = pool_project.xt("view", "status", "pool").stdout
    assert "box3" in status and "unreachable" in status, status
    log_text = (pool_project.home / "storage").rglob("job_log.jsonl")
    assert any("box-unreachable" in p.read_text() and "box3" in p.read_text() for p in log_text)
