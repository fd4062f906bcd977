"""The ports the Functions app runs on, built once per worker from its app settings by the
composition root (`xt_submit.bootstrap.app_ports`, which names every setting)."""
from __future__ import annotations

import functools
import os

from xt_submit import bootstrap
from xt_submit.ports import Ports


@functools.lru_cache(maxsize=1)
def ports() -> Ports:
    return bootstrap.app_ports(os.environ)
