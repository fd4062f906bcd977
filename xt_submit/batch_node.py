"""The entry point of a run's Batch task: `python -m xt_submit.batch_node` (in the node's venv).

Everything it needs is in the task's environment, none of it secret: the RunTask (XT_TASK), the
storage account and Service Bus namespace by address, and the client id of the pool's
user-assigned managed identity it signs in with. The code zip is already here, fetched by Batch
as a read-only SAS resource file.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional

from xt_submit.adapters.batch_compute import CODE_FILE, TASK_ENV
from xt_submit.messages import decode_task
from xt_submit.wrapper import RunWrapper


class PrefetchedCode:
    """The Storage port, except that the run's code zip comes from the resource file Batch fetched."""

    def __init__(self, storage, code_key: str, code_file: Path) -> None:
        self._storage = storage
        self._code_key = code_key
        self._code_file = code_file

    def download_file(self, key: str, path: str) -> None:
        if key == self._code_key and self._code_file.exists():
            shutil.copyfile(self._code_file, path)
        else:
            self._storage.download_file(key, path)

    def __getattr__(self, name):
        return getattr(self._storage, name)


def node_ports(env: Mapping[str, str], credential=None):
    """Storage and the events publisher, signed in with the node's managed identity."""
    from azure.identity import ManagedIdentityCredential

    from xt_submit.adapters.blob_storage import BlobStorage
    from xt_submit.adapters.queue_publisher import QueuePublisher
    from xt_submit.adapters.servicebus_queue import ServiceBusQueue

    credential = credential or ManagedIdentityCredential(client_id=env["XT_IDENTITY_CLIENT_ID"])
    storage = BlobStorage(env["XT_STORAGE_CONTAINER"], account_url=env["XT_STORAGE_ACCOUNT_URL"], credential=credential)
    queue = ServiceBusQueue(namespace=env["XT_SERVICEBUS_NAMESPACE"], credential=credential)
    return storage, QueuePublisher(queue, events_queue=env["XT_EVENTS_QUEUE"])


def run_task(env: Dict[str, str], working_dir: Path, storage, publisher) -> int:
    """Drive the run to its end, as wrapper.main does."""
    task = decode_task(env[TASK_ENV].encode())
    node_id = env.get("AZ_BATCH_NODE_ID", "batch")
    storage = PrefetchedCode(storage, task.code_key, working_dir / CODE_FILE)
    RunWrapper(task, working_dir / "run", storage, publisher, node_id=node_id).run_to_end()
    return 0


def main(env: Optional[Dict[str, str]] = None) -> int:
    env = dict(os.environ if env is None else env)
    missing = [name for name in (TASK_ENV, "XT_STORAGE_ACCOUNT_URL", "XT_STORAGE_CONTAINER", "XT_SERVICEBUS_NAMESPACE",
                                 "XT_EVENTS_QUEUE", "XT_IDENTITY_CLIENT_ID") if not env.get(name)]
    if missing:
        print(f"xt batch node: missing environment {', '.join(missing)}", file=sys.stderr)
        return 2
    # The runs' `python` is this venv's (xt-pipeline and the setup's packages are installed in it).
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    storage, publisher = node_ports(env)
    try:
        return run_task(env, Path(env.get("AZ_BATCH_TASK_WORKING_DIR", ".")), storage, publisher)
    finally:
        publisher.queue.close()


if __name__ == "__main__":
    sys.exit(main())
