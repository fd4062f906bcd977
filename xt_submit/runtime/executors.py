"""The executors that run this machine's task table: local runs here, pool runs on their boxes."""
from __future__ import annotations

from typing import Tuple

from xt_submit.runtime.local_executor import LocalExecutor
from xt_submit.ports import Parts
from xt_submit.runtime.pool_executor import PoolExecutor


def executors_for(parts: Parts) -> Tuple[LocalExecutor, PoolExecutor]:
    storage, publisher = parts.ports.storage, parts.ports.publisher
    return (LocalExecutor(parts.compute, parts.home, storage, publisher, parts.local_node),
            PoolExecutor(parts.compute, parts.home, storage, publisher, parts.make_node))
