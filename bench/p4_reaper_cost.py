"""P4's per-run gap, isolated: the CPU of `python -c pass` run under a forked reaper
(node_kit/reaper.fork_reaper, what a local node does per run) against the same command started
bare (subprocess, vfork), from a process of the host's size and from a small one (only the reaper
imported: what a fork server would fork from). Medians of interleaved rounds; CPU from
RUSAGE_CHILDREN, so a loaded machine changes wall time more than these."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from common import emit

MEASURE = r"""
import os, resource, subprocess, sys, tempfile
if sys.argv[1] == "host":
    import xt_submit.runtime.local_host, xt_submit.bootstrap, xt_submit.handlers  # noqa: F401  (a host-sized image)
from xt_submit.node_kit import reaper
def cpu():
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime
folder, n = tempfile.mkdtemp(), int(sys.argv[2])
argv = [sys.executable, "-c", "pass"]
bare, forked = [], []
for i in range(n):
    c = cpu(); subprocess.run(argv); bare.append(cpu() - c)
    c = cpu()
    pid = reaper.fork_reaper(argv, folder, dict(os.environ), os.path.join(folder, "console"), os.path.join(folder, f"exit{i}"))
    os.waitpid(pid, 0); forked.append(cpu() - c)
bare.sort(); forked.sort()
print(bare[n // 2], forked[n // 2], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=41)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    result = {"id": "P4-reaper"}
    for image in ("host", "small"):
        out = subprocess.run([sys.executable, "-c", MEASURE, image, str(args.runs)], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        bare, forked, rss = (float(x) for x in out)
        result[image] = {"rss_mb": rss, "bare_cpu_ms": 1000 * bare, "under_reaper_cpu_ms": 1000 * forked,
                         "added_ms": 1000 * (forked - bare), "x_bare": forked / bare}
    emit(result)


if __name__ == "__main__":
    main()
