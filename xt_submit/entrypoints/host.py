"""`python -m xt_submit.entrypoints.host XT_HOME [IDLE_EXIT_SECONDS]`: the local host that `xt run`
starts in the background (runtime/local_host.py)."""
from __future__ import annotations

import sys
from pathlib import Path

from xt_submit import bootstrap
from xt_submit.runtime.local_host import run_host


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    home = Path(argv[0])
    idle_exit = float(argv[1]) if len(argv) > 1 else None
    return run_host(home, lambda: bootstrap.embedded(home), idle_exit_seconds=idle_exit)


if __name__ == "__main__":
    sys.exit(main())
