"""P5: snapshot + upload of a code tree (default 200 MB in 5,000 files), then an unchanged
resubmit, against the limit: `zip -r -1` of the same tree plus a copy of the zip."""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import emit, interleaved, median, remove_scratch, run_child, user_env

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


def child(root: Path) -> dict:
    """One measurement in a process of its own (its peak RSS is the upload's): the first snapshot
    and upload into a fresh home, then an unchanged resubmit from the same home."""
    home = root / f"home-{uuid.uuid4().hex[:8]}"
    storage = DirectoryStorage(home / "storage")
    start = time.perf_counter()
    result = upload_code(storage, home, ["."], str(root / "tree"), [], max_bytes=10**12)
    first = time.perf_counter() - start
    start = time.perf_counter()
    upload_code(storage, home, ["."], str(root / "tree"), [], max_bytes=10**12)
    resubmit = time.perf_counter() - start
    zip_mb = (storage.root / result[0]).stat().st_size / 2**20
    shutil.rmtree(home, ignore_errors=True)
    return {"seconds": first, "resubmit_s": resubmit, "zip_mb": zip_mb}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=5_000)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child))))
        return
    root = Path(tempfile.mkdtemp(prefix="xt-bench-p5-"))
    tree = root / "tree"
    make_tree(tree, args.files, args.mb)
    env = user_env(root)
    peaks: list = []
    resubmits: list = []
    last: dict = {}

    def ours() -> float:
        done = run_child([sys.executable, __file__, "--child", str(root)], env=env)
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        peaks.append(done.peak_rss_mb)
        resubmits.append(measured["resubmit_s"])
        last.update(measured)
        return measured["seconds"]

    def limit() -> float:
        target = root / f"limit-{uuid.uuid4().hex[:8]}.zip"
        start = time.perf_counter()
        subprocess.run(["zip", "-r", "-1", "-q", str(target), "."], cwd=tree, check=True)
        shutil.copyfile(target, root / "copy.zip")
        seconds = time.perf_counter() - start
        os.unlink(target)
        return seconds

    samples = interleaved({"ours": ours, "limit": limit}, args.repeat, warmup=0)
    first_s, limit_s = median(samples["ours"]), median(samples["limit"])
    result = {"id": "P5", "files": args.files, "mb": args.mb, "ours_s": first_s, "limit_s": limit_s,
              "x_limit": first_s / limit_s, "resubmit_s": median(resubmits), "zip_mb": last["zip_mb"],
              "peak_rss_mb": max(peaks)}
    remove_scratch(root)
    emit(result)


if __name__ == "__main__":
    main()
