"""Code snapshots: a deterministic zip of the code dirs, and safe unpacking on the node.

The zip is reproducible (sorted entries, fixed timestamps), so its sha256 names the content and
an unchanged tree is never uploaded twice. Unpacking refuses anything that could escape the
target dir or exhaust the disk; a data folder (a share's files, extract_data) has no size or count
limits, but escapes are refused all the same.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterator, List, NamedTuple, Sequence, Tuple
from xt_submit.domain.errors import OneLineError

ALWAYS_OMITTED_DIRS = frozenset({".git", "__pycache__", ".hg", ".svn", ".venv", "node_modules"})
# xt_config.yaml may hold service settings: the manifest carries what a run needs, never the file.
ALWAYS_OMITTED_FILES = frozenset({"xt_config.yaml", "xt_run_log.jsonl", "xt_checkpoint.json"})
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
MAX_UNPACKED_BYTES = 2 * 1024**3
MAX_ENTRIES = 100_000
MAX_RATIO = 200  # a higher compression ratio is a zip bomb, not source code


class ArchiveError(OneLineError):
    pass


class Snapshot(NamedTuple):
    data: bytes
    sha256: str
    files: int


def iter_code_files(code_dir: Path, omit: Sequence[str] = (), exclude: Sequence[Path] = ()) -> Iterator[Tuple[Path, str]]:
    """(absolute path, archive name) of each file to ship, skipping VCS dirs, caches,
    .gitignore'd files, `omit` globs, symlinks (a link's target never travels) and the
    `exclude` dirs (XT's own state, when XT_HOME sits inside the code)."""
    excluded = {str(Path(p).resolve()) for p in exclude}
    import pathspec  # only the submitting side needs it; the node only unpacks

    omit_spec = pathspec.GitIgnoreSpec.from_lines(list(omit))
    ignore_specs: List[Tuple[str, pathspec.PathSpec]] = []
    for dirpath, dirnames, filenames in os.walk(code_dir):
        rel_dir = os.path.relpath(dirpath, code_dir).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        if ".gitignore" in filenames:
            with open(os.path.join(dirpath, ".gitignore"), encoding="utf-8", errors="replace") as f:
                ignore_specs.append((rel_dir, pathspec.GitIgnoreSpec.from_lines(f.read().splitlines())))

        def ignored(rel: str, is_dir: bool) -> bool:
            probe = rel + "/" if is_dir else rel
            if omit_spec.match_file(probe):
                return True
            return any(probe.startswith(base) and spec.match_file(probe[len(base):]) for base, spec in ignore_specs)

        dirnames[:] = sorted(d for d in dirnames
                             if d not in ALWAYS_OMITTED_DIRS and not os.path.islink(os.path.join(dirpath, d))
                             and os.path.join(dirpath, d) not in excluded and not ignored(rel_dir + d, True))
        for name in sorted(filenames):
            path = Path(dirpath, name)
            rel = rel_dir + name
            if name in ALWAYS_OMITTED_FILES or path.is_symlink() or ignored(rel, False):
                continue
            yield path, rel


def snapshot_code(code_dirs: Sequence[str], base: str, omit: Sequence[str] = (), max_bytes: int = 500 * 1024**2,
                  exclude: Sequence[Path] = ()) -> Snapshot:
    """Zip the code dirs (relative to `base`) into a reproducible, content-hashed archive."""
    entries = []
    total = 0
    for code_dir in code_dirs:
        root = (Path(base) / code_dir).resolve()
        if not root.is_dir():
            raise ArchiveError(f"code.code-dirs: {code_dir}: not a directory")
        prefix = "" if code_dir in (".", "") else PurePosixPath(code_dir.replace(os.sep, "/")).name + "/"
        for path, rel in iter_code_files(root, omit, exclude):
            size = path.stat().st_size
            total += size
            if total > max_bytes:
                raise ArchiveError(f"code.max-size-mb: the code dirs exceed {max_bytes // 1024**2} MB (at {prefix + rel}); "
                                   f"add big files to code-omit or .gitignore")
            entries.append((prefix + rel, path, path.stat().st_mode))
    entries.sort()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, path, mode in entries:
            info = zipfile.ZipInfo(name, FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = ((0o755 if mode & stat.S_IXUSR else 0o644) | stat.S_IFREG) << 16
            with open(path, "rb") as f:
                archive.writestr(info, f.read(), compresslevel=1)
    data = buffer.getvalue()
    return Snapshot(data, hashlib.sha256(data).hexdigest(), len(entries))


def check_zip(archive: zipfile.ZipFile, source: str, *, max_bytes: int = MAX_UNPACKED_BYTES,
              code_limits: bool = True) -> List[zipfile.ZipInfo]:
    """The archive's file entries, or ArchiveError naming the first dangerous one. code_limits=False
    (a data folder): no size, count or ratio limits, which are there for code; escapes still refused."""
    infos = archive.infolist()
    if code_limits and len(infos) > MAX_ENTRIES:
        raise ArchiveError(f"{source}: {len(infos)} entries, more than the limit of {MAX_ENTRIES}")
    total = 0
    files = []
    for info in infos:
        name = info.filename
        path = PurePosixPath(name)
        if name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":") or ".." in path.parts or "\x00" in name:
            raise ArchiveError(f"{source}: {name!r}: path escapes the target directory")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ArchiveError(f"{source}: {name!r}: symbolic links are not allowed")
        if info.is_dir():
            continue
        total += info.file_size
        if code_limits and total > max_bytes:
            raise ArchiveError(f"{source}: unpacks to more than {max_bytes // 1024**2} MB")
        if code_limits and info.file_size > 1024 * 1024 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise ArchiveError(f"{source}: {name!r}: compression ratio above {MAX_RATIO}:1 (zip bomb?)")
        files.append(info)
    return files


def open_zip(path_or_file, source: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path_or_file)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{source}: not a zip file ({exc})") from None


def safe_extract(zip_path: str, dest: str, source: str = "code zip", *, code_limits: bool = True) -> int:
    """Unpack after check_zip; sizes are enforced again while writing (headers can lie)."""
    dest_root = Path(dest).resolve()
    dest_root.mkdir(parents=True, exist_ok=True)
    with open_zip(zip_path, source) as archive:
        files = check_zip(archive, source, code_limits=code_limits)
        for info in files:
            target = (dest_root / info.filename).resolve()
            if dest_root != target and dest_root not in target.parents:
                raise ArchiveError(f"{source}: {info.filename!r}: path escapes the target directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            with archive.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > info.file_size:
                        raise ArchiveError(f"{source}: {info.filename!r}: larger than its header says")
                    out.write(chunk)
            if (info.external_attr >> 16) & stat.S_IXUSR:
                os.chmod(target, 0o755)
    return len(files)


def extract_data(zip_path: str, dest: str, source: str) -> int:
    """A data folder's zip (a share: any size, any number of files) unpacked into dest, as safely as
    code (no absolute or `..` names, no links, no file larger than its header says)."""
    return safe_extract(zip_path, dest, source, code_limits=False)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unpack_into_cache(zip_path: str, cache_root: str, expected_sha256: str, source: str, url: str = "") -> str:
    """A box's cache of snapshots: the zip (fetched from url first, when given) checked against its
    expected sha256 (when given), unpacked once into cache_root/<its sha256>, and removed. Returns
    the cached tree. Two unpacks of one snapshot at once both succeed: one wins the rename."""
    import shutil
    import uuid

    try:
        if url:
            import urllib.request

            try:
                urllib.request.urlretrieve(url, zip_path)
            except Exception as exc:  # the URL (a read-only link) is never told: it names a blob
                raise ArchiveError(f"cannot fetch the code from storage: {type(exc).__name__}: "
                                   f"{getattr(exc, 'reason', '')}") from None
        try:
            sha256 = file_sha256(zip_path)
        except OSError as exc:
            raise ArchiveError(f"{source}: cannot read the zip on the box: {exc.strerror or exc}") from None
        if expected_sha256 and sha256 != expected_sha256:
            raise ArchiveError(f"{source}: the code zip's sha256 is {sha256}, not the {expected_sha256} it was sent as")
        final = os.path.join(cache_root, sha256)
        if not os.path.isdir(final):
            temp = f"{final}.tmp-{uuid.uuid4().hex}"
            try:
                safe_extract(zip_path, temp, source)
                os.rename(temp, final)
            except OSError:
                if not os.path.isdir(final):  # not another unpack that won the rename
                    raise
            finally:
                shutil.rmtree(temp, ignore_errors=True)
        return final
    finally:
        try:
            os.unlink(zip_path)
        except FileNotFoundError:
            pass
