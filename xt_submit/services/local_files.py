"""Files the CLI writes for a person (a drop zip, a report, an export, a workspace archive): written
beside the target and renamed into place, so a reader never sees half a file under its name and a
failure leaves none."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Union


@contextlib.contextmanager
def written_aside(path: Union[str, Path]) -> Iterator[Path]:
    """Yields the path to write; on leaving, it becomes `path` (or, on any error, is removed)."""
    target = Path(path)
    aside = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        yield aside
        os.replace(aside, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(aside)
        raise
