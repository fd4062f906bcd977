"""`python -m xt_submit.entrypoints.host XT_HOME [IDLE_EXIT_SECONDS [WARM,...]]`: the local host that
`xt run` starts in the background (runtime/local_host.py). WARM: what to load at once (bootstrap.warm),
and connect:POOL, a registered pool whose boxes to connect to before the job arrives."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

from xt_submit.domain.msgspec_import import import_msgspec

import_msgspec()  # before the imports below load it the slow way
from xt_submit import bootstrap  # noqa: E402
from xt_submit.domain.boxes import CONNECT_AHEAD  # noqa: E402
from xt_submit.runtime.local_host import run_host  # noqa: E402


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    home = Path(argv[0])
    idle_exit = float(argv[1]) if len(argv) > 1 else None
    warm = [name for name in argv[2].split(",") if name] if len(argv) > 2 else []
    if warm:  # while the client is still sending the job: the first run does not wait for it
        threading.Thread(target=bootstrap.warm, args=(warm,), name="xt-warm", daemon=True).start()
    pools = [name[len(CONNECT_AHEAD):] for name in warm if name.startswith(CONNECT_AHEAD)]
    return run_host(home, lambda: bootstrap.embedded(home), idle_exit_seconds=idle_exit, connect_ahead=pools)


if __name__ == "__main__":
    sys.exit(main())
