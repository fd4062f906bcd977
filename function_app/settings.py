"""What the Functions app runs on, built once per worker from its app settings by the composition
root (`xt_submit.bootstrap`, which names every setting). The queues come first and alone: if a
store is down when the ports are built, the app still has the queue to back off on."""
from __future__ import annotations

import functools
import os

from xt_submit import bootstrap
from xt_submit.ports import Ports


@functools.lru_cache(maxsize=1)
def queues() -> bootstrap.AppQueues:
    return bootstrap.app_queues(os.environ)


@functools.lru_cache(maxsize=1)
def ports() -> Ports:
    return bootstrap.app_ports(os.environ, queues().bus)


def reset() -> None:
    """Build afresh on next use (the tests change the settings between deployments)."""
    ports.cache_clear()
    queues.cache_clear()
