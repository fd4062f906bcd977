"""P5: snapshot + upload of a code tree (default 200 MB in 5,000 files), then an unchanged
resubmit, against the limit: `zip -r -1` of the same tree plus a copy of the zip."""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from common import emit, median_seconds

from xt_submit.adapters.storage.directory import DirectoryStorage
from xt_submit.services.code_upload import upload_code

SOURCE_LINE = b"def step(model, batch, lr=0.01):  # a line of ordinary source code\n"


def make_tree(root: Path, files: int, total_mb: int, seed: int = 11) -> None:
    """Half the bytes incompressible (weights, data), half source-like text, in nested folders."""
    rng = random.Random(seed)
    size = total_mb * 1024 * 1024 // files
    for i in range(files):
        path = root / f"pkg{i % 50}" / f"mod{i // 50 % 10}" / f"file{i}.{'bin' if i % 2 else 'py'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size) if i % 2 else (SOURCE_LINE * (size // len(SOURCE_LINE) + 1))[:size])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=5_000)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="xt-bench-p5-"))
    tree = root / "tree"
    make_tree(tree, args.files, args.mb)
    state = {}

    def fresh():
        state["home"] = root / f"home-{uuid.uuid4().hex[:8]}"
        state["storage"] = DirectoryStorage(state["home"] / "storage")

    def ours():
        state["result"] = upload_code(state["storage"], state["home"], ["."], str(tree), [], max_bytes=10**12)

    first_s, _ = median_seconds(ours, args.repeat, fresh)
    resubmit_s, _ = median_seconds(ours, args.repeat)  # same home: the tree is unchanged
    stored = state["storage"].root / state["result"][0]

    def limit():
        target = root / f"limit-{uuid.uuid4().hex[:8]}.zip"
        subprocess.run(["zip", "-r", "-1", "-q", str(target), "."], cwd=tree, check=True)
        shutil.copyfile(target, root / "copy.zip")
        os.unlink(target)

    limit_s, _ = median_seconds(limit, args.repeat)
    result = {"id": "P5", "files": args.files, "mb": args.mb, "ours_s": first_s, "limit_s": limit_s,
              "x_limit": first_s / limit_s, "resubmit_s": resubmit_s, "zip_mb": stored.stat().st_size / 2**20}
    shutil.rmtree(root, ignore_errors=True)
    emit(result)


if __name__ == "__main__":
    main()
