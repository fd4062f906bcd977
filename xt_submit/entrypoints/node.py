"""`python -m xt_submit.entrypoints.node TASK_JSON`: drive one run to its end on this node, with the
embedded default's storage and queue (a node that runs one wrapper per process)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

from xt_submit import bootstrap
from xt_submit.domain.messages import decode_task
from xt_submit.runtime.wrapper import RunWrapper


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m xt_submit.entrypoints.node TASK_JSON", file=sys.stderr)
        return 2
    task_path = Path(argv[0]).resolve()
    task = decode_task(task_path.read_bytes())
    storage, publisher = bootstrap.node_parts(bootstrap.xt_home())
    # node dirs are <home>/nodes/<node>/<workspace>/<run>: the node's own folder is two up
    node = bootstrap.local_node(task_path.parent.parent.parent, fork_here=True)
    RunWrapper(task, task_path.parent, storage, publisher, node=node).run_to_end()
    return 0


if __name__ == "__main__":
    sys.exit(main())
