"""msgspec, imported the way XT's own processes (the CLI, the local host) start fastest.

msgspec imports typing_extensions when it is installed (azure-core pulls it in), only to read class
annotations, and typing_extensions imports inspect: ~15 ms of a 30 ms `python -c pass`
(bench/startup.py). On Python 3.11+ typing reads the same annotations (Required/NotRequired
included), and XT's structs use typing's own forms, so those processes hide typing_extensions from
that one import. A user's training script is never touched: the Run API imports msgspec plainly."""
from __future__ import annotations

import sys


def import_msgspec() -> None:
    """Import msgspec now, without typing_extensions; later imports of typing_extensions (an SDK's)
    load it as usual. A no-op once either is loaded, and before Python 3.11."""
    if sys.version_info < (3, 11) or "msgspec" in sys.modules or "typing_extensions" in sys.modules:
        return
    sys.modules["typing_extensions"] = None  # type: ignore[assignment]  # makes its import raise ImportError
    try:
        import msgspec  # noqa: F401
    finally:
        if sys.modules.get("typing_extensions", ...) is None:
            del sys.modules["typing_extensions"]
