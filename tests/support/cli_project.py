"""A throwaway project and XT_HOME, driven through the real `xt` CLI (subprocesses)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

SCRIPT = textwrap.dedent('''
    import argparse, os, sys, time
    from xt_submit import Run

    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--opt", default="sgd")
    parser.add_argument("--exit", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with open(os.environ["INVOCATIONS"], "a") as f:
        f.write(os.environ.get("XT_RUN_NAME", "?") + "\\n")
    run = Run()
    run.log_hparams({"lr": args.lr, "opt": args.opt})
    for step in range(1, 4):
        run.log_metrics({"step": step, "loss": args.lr * 10 / step, "acc": 1 - args.lr / step})
    print(f"training lr={args.lr} opt={args.opt}", flush=True)
    time.sleep(args.sleep)
    os.makedirs(os.environ["XT_OUTPUT_DIR"], exist_ok=True)
    with open(os.path.join(os.environ["XT_OUTPUT_DIR"], "result.txt"), "w") as f:
        f.write(f"{args.lr}\\n")
    sys.exit(args.exit)
''')


class Project:
    def __init__(self, root: Path):
        self.root = root
        self.home = root / "xt_home"
        self.invocations = root / "invocations.txt"
        self.code = root / "proj"
        self.code.mkdir()
        (self.code / "train.py").write_text(SCRIPT)
        # the training script counts its invocations in INVOCATIONS, which a run sees only when the
        # host passes it on (a run's environment is its job's, not the host's)
        self.env = dict(os.environ, XT_HOME=str(self.home), INVOCATIONS=str(self.invocations),
                        XT_RUN_PASS_ENV="INVOCATIONS", XT_HOST_IDLE_EXIT="2", XT_SYNC_SECONDS="0.2")
        self.env.pop("XT_CONFIG", None)

    def xt(self, *args, check=True, timeout=120):
        result = subprocess.run([sys.executable, "-m", "xt_submit.cli", *args], cwd=self.code, env=self.env,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"xt {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def json(self, *args):
        """Run with --json (placed before the script args of `run`) and decode the output."""
        args = list(args)
        args.insert(1 if args[0] == "run" else 2, "--json")
        return json.loads(self.xt(*args).stdout)

    def wait_job(self, job, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            record = self.json("view", "job", job)
            if record["status"] in ("completed", "error", "cancelled"):
                return record
            time.sleep(0.2)
        raise AssertionError(f"{job} did not end within {timeout}s")

    def host_pid(self):
        try:
            return int((self.home / "host.lock").read_text() or 0) or None
        except (OSError, ValueError):
            return None

    def host_pids(self):
        """Every host process serving this home (host.lock may name a client that checked it
        rather than the host: issue 16, class 7), found by its command line."""
        pids = {self.host_pid()} - {None}
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"xt_submit.entrypoints.host" in argv and str(self.home).encode() in argv:
                pids.add(int(proc.name))
        return pids

    def stop_host(self):
        """SIGKILL the host, and wait until it is gone (a dying host must not touch the home after)."""
        pids = self.host_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while pids and time.monotonic() < deadline:
            pids = {pid for pid in pids if _alive(pid)}
            time.sleep(0.02)

    def invoked(self):
        return sorted(self.invocations.read_text().split()) if self.invocations.exists() else []


def _alive(pid):
    """Running (not gone, not a zombie waiting for its parent)."""
    try:
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1].startswith("Z")
    except OSError:
        return False
