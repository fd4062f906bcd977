"""P7: a 20-run sweep of a trivial script on a pool of two SSH boxes (max-runs 2 each), submit to
all stats recorded, against the limit: the same 20 runs started over SSH exec channels on the same
boxes (paramiko, one connection per box, 2 at a time per box), with nothing shipped or recorded,
the connections already open and the script already on the boxes; and against a second limit that
pays that setup too, once per box, inside its time (connect, authenticate, copy the script), as ours
pays its own. The three run in turn (ours, limit, limit with setup, ...), medians; the peak RSS is
the `xt run` process's own (os.wait4). `--compare-with DIR` times a fourth case in the same turns:
the same sweep with the xt_submit package of another checkout (DIR holds its xt_submit/), so a
change is measured against what it changed, under the same load.

The boxes are real sshd servers on loopback (tests/peers/ssh_boxes.py), so this needs root and
Debian's openssh-server, as the pool tests do.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import emit, interleaved, median, remove_scratch, run_child, sweep_breakdown, user_env

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from peers import ssh_boxes  # noqa: E402  (the test peers: real sshd boxes on loopback)

TRIVIAL = "import sys\nprint('run', sys.argv[1:])\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compare-with", metavar="DIR", help="also time the sweep with DIR's xt_submit package")
    args = parser.parse_args()
    why_not = ssh_boxes.available()
    if why_not:
        emit({"id": "P7", "skipped": why_not})
        return
    boxes = ssh_boxes.SshBoxes()
    root = Path(tempfile.mkdtemp(prefix="xt-bench-p7-"))
    try:
        pool = [boxes.start("box1", "xtbox1"), boxes.start("box2", "xtbox2")]
        project = root / "project"
        project.mkdir()
        (project / "trivial.py").write_text(TRIVIAL)
        (project / "xt_config.yaml").write_text("compute-targets: {pool: {service: pool}}\nboxes:\n" + "".join(
            f'  {b.name}: {{address: "{b.address}", max-runs: 2, key: "{boxes.client_key}", host-key: "{b.host_key}"}}\n'
            for b in pool))
        counter = {"n": 0}

        def ours(code_from: str = ""):
            counter["n"] += 1
            env = user_env(root, XT_HOME=str(root / f"home{counter['n']}"), XT_HOST_IDLE_EXIT="1")
            if code_from:  # its xt_submit first on the path (the project folder, the cwd, has none)
                env["PYTHONPATH"] = code_from
            done = run_child([sys.executable, "-m", "xt_submit.cli", "run", "--wait", "--json", "--target", "pool",
                              "trivial.py", f"--i=[$linspace(1,{args.runs},{args.runs})]"], cwd=project, env=env)
            if not code_from:
                peaks.append(done.peak_rss_mb)
            return done.seconds

        import paramiko

        def connect(box):
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # the bench's own loopback boxes
            client.connect("127.0.0.1", port=box.port, username=box.user, key_filename=str(boxes.client_key),
                           look_for_keys=False, allow_agent=False)
            sftp = client.open_sftp()
            sftp.put(str(project / "trivial.py"), "trivial.py")
            return client

        clients = {b.name: connect(b) for b in pool}
        script = "python3 trivial.py --i={}"

        def limit(setup: bool = False) -> float:
            start = time.perf_counter()
            used = {b.name: connect(b) for b in pool} if setup else clients

            def launch(i):
                client = used[pool[i % 2].name]
                _, out, _ = client.exec_command(script.format(i))
                out.read()
                assert out.channel.recv_exit_status() == 0

            with ThreadPoolExecutor(4) as threads:  # 2 at a time on each box, as max-runs says
                list(threads.map(launch, range(1, args.runs + 1)))
            seconds = time.perf_counter() - start
            if setup:
                for client in used.values():
                    client.close()
            return seconds

        peaks: list = []
        cases = {"ours": ours, "limit": limit, "limit_with_setup": lambda: limit(setup=True)}
        if args.compare_with:
            cases["compared"] = lambda: ours(str(Path(args.compare_with).resolve()))
        samples = interleaved(cases, args.repeat, warmup=0)
        for client in clients.values():
            client.close()
        home = root / "home_breakdown"
        home.mkdir()
        breakdown = sweep_breakdown([sys.executable, "-m", "xt_submit.cli", "run", "--wait", "--json", "--target", "pool",
                                     "trivial.py", f"--i=[$linspace(1,{args.runs},{args.runs})]"], home=str(home),
                                    cwd=project, env=user_env(root, XT_HOME=str(home)), runs=args.runs)
        for local_only in ("runs_cpu_ms_per_run", "agent_cpu_ms_per_run"):  # the runs are the boxes' (sshd's children)
            del breakdown[local_only]
        ours_s, limit_s, setup_s = (median(samples[k]) for k in ("ours", "limit", "limit_with_setup"))
        result = {"id": "P7", "runs": args.runs, "ours_s": ours_s, "limit_s": limit_s, "x_limit": ours_s / limit_s,
                  "limit_with_setup_s": setup_s, "x_limit_with_setup": ours_s / setup_s, "peak_rss_mb": max(peaks),
                  "breakdown": breakdown}
        if args.compare_with:
            compared_s = median(samples["compared"])
            result.update(compared_s=compared_s, compared_x_limit=compared_s / limit_s,
                          compared_x_limit_with_setup=compared_s / setup_s)
        emit(result)
    finally:
        boxes.stop()
        remove_scratch(root)


if __name__ == "__main__":
    main()
