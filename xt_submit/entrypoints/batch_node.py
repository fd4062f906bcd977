"""The entry point of a run's Batch task: `python -m xt_submit.entrypoints.batch_node` (in the node's venv).

Everything it needs is in the task's environment, none of it secret: the RunTask (XT_TASK), the
storage account and Service Bus namespace by address, and the client id of the pool's
user-assigned managed identity it signs in with. The code zip is already here, fetched by Batch
as a read-only SAS resource file.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, Optional

from xt_submit import bootstrap
from xt_submit.domain.batch_node import CODE_FILE, NODE_ENV, TASK_ENV
from xt_submit.domain.messages import decode_task
from xt_submit.runtime.wrapper import RunWrapper


def run_task(env: Dict[str, str], working_dir: Path, storage, publisher) -> int:
    """Drive the run to its end, as entrypoints/node.py does."""
    task = decode_task(env[TASK_ENV].encode())
    node_id = env.get("AZ_BATCH_NODE_ID", "batch")
    storage = bootstrap.prefetched(storage, task.code_key, working_dir / CODE_FILE)
    node = bootstrap.local_node(working_dir.parent, fork_here=True)  # as the run's folder is working_dir/run
    RunWrapper(task, working_dir / "run", storage, publisher, node=node, node_id=node_id).run_to_end()
    return 0


def main(env: Optional[Dict[str, str]] = None) -> int:
    env = dict(os.environ if env is None else env)
    missing = [name for name in (TASK_ENV, *NODE_ENV) if not env.get(name)]
    if missing:
        print(f"xt batch node: missing environment {', '.join(missing)}", file=sys.stderr)
        return 2
    # The runs' `python` is this venv's (xt-pipeline and the setup's packages are installed in it).
    # PATH is in the runs' base environment; the rest of this task's (its settings, the identity's
    # client id, Batch's AZ_BATCH_*) never reaches a run: the reaper gives it its job's variables only.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    storage, publisher, queue = bootstrap.batch_node_parts(env)
    try:
        return run_task(env, Path(env.get("AZ_BATCH_TASK_WORKING_DIR", ".")), storage, publisher)
    finally:
        queue.close()


if __name__ == "__main__":
    sys.exit(main())
