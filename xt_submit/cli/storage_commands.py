"""Experiment storage by XT's paths, on whichever storage the config selects (a directory or Blob
Storage): `xt list blobs [PATH]`, `xt view blob PATH`, `xt upload LOCAL PATH`, `xt download PATH
LOCAL` (see report_commands.cmd_download for a run's outputs), `xt delete blob PATH`, `xt extract
RUN DIR`, and whole workspaces: `xt create workspace`, `xt list workspaces`, `xt export workspace`,
`xt import workspace`, `xt delete workspace`. Paths: domain/storage_paths.py; `--share data|model`
puts a path in that share (workspaces/<ws>/shares/<share>/...)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Tuple

from xt_submit.cli.common import CliError, check_name, embedded_parts, load, print_json
from xt_submit.domain import layout
from xt_submit.domain.storage_paths import ROOT_MARK, display_path, storage_key

LIST_KINDS = ("blobs", "workspaces")  # report_commands registers `workspaces`' parser and hands it here
VIEW_KINDS = ("blob",)
EXPORT_KINDS = ("workspace",)
VIEW_MAX_BYTES = 1024**2  # `xt view blob` prints text; anything bigger is for `xt download`


def add_list_kinds(kinds) -> None:
    sub = kinds.add_parser("blobs", help="the blobs under a path (run3.1/, job3/, //code/, ...)")
    sub.add_argument("path", nargs="?", default="", help="a path in the workspace (default: all of it); //: the root")
    sub.add_argument("--share", choices=layout.SHARES, help="PATH is in this share (default: all of it)")
    sub.add_argument("--workspace")
    sub.add_argument("--json", action="store_true")


def add_view_kinds(kinds) -> None:
    sub = kinds.add_parser("blob", help="print one text blob")
    sub.add_argument("path", help="a path in the workspace (run3.1/output/x.txt, shares/data/...) or //...")
    sub.add_argument("--workspace")
    sub.add_argument("--json", action="store_true")


def add_export_kinds(kinds) -> None:
    """`xt export workspace` (the `export` command is report_commands', which also exports runs)."""
    sub = kinds.add_parser("workspace", help="a workspace as one portable zip (its blobs and code snapshots)")
    sub.add_argument("name", nargs="?", metavar="WORKSPACE", help="default: general.workspace")
    sub.add_argument("--out", required=True, metavar="FILE.zip", help="the zip to write")


def add_parsers(commands) -> None:
    upload = commands.add_parser("upload", help="copy a local file or folder into storage at PATH")
    upload.add_argument("local", help="the local file or folder")
    upload.add_argument("path", help="where: a path in the workspace (run3.1/..., shares/data/...) or //...; "
                                     "with --share, in that share")
    upload.add_argument("--share", choices=layout.SHARES, help="PATH is in the data or model share (what a job's "
                                                                "data-share-path / model-share-path names)")
    upload.add_argument("--workspace")
    delete = commands.add_parser("delete", help="delete a blob, or a whole workspace (asks first)")
    delete.add_argument("kind", choices=["blob", "workspace"], help="blob: one blob; workspace: all of one")
    delete.add_argument("path", metavar="PATH|WORKSPACE", help="the blob's path, or the workspace's name")
    delete.add_argument("--workspace")
    delete.add_argument("--yes", action="store_true", help="do not ask (needed when not at a terminal)")
    imported = commands.add_parser("import", help="put an exported workspace into storage and index it")
    imported.add_argument("kind", choices=["workspace"], help="workspace")
    imported.add_argument("archive", metavar="FILE.zip", help="a zip written by xt export workspace")
    extract = commands.add_parser("extract", help="a run's code and outputs in DIR, to rebuild it locally")
    extract.add_argument("run", metavar="RUN", help="run7.2")
    extract.add_argument("dir", metavar="DIR", help="a new (or empty) folder")
    extract.add_argument("--workspace")


def _storage(args: argparse.Namespace):
    cfg = load(args)
    parts = embedded_parts(cfg)
    return cfg.general.workspace, parts.ports


def inside(root: Path, relative: str, key: str) -> Path:
    """root/relative, refused when a stored key's name would climb out of root."""
    target = (root / relative).resolve()
    if target != root.resolve() and root.resolve() not in target.parents:
        raise CliError(f"{key}: its path escapes {root}")
    return target


def _in_share(args: argparse.Namespace) -> str:
    """PATH as a workspace path: with --share, inside that share (never climbing out of it)."""
    if not args.share:
        return args.path
    if args.path.startswith(ROOT_MARK):
        raise CliError(f"--share {args.share}: expected a path in the share, got {args.path!r}")
    return f"shares/{args.share}/{args.path}"


def cmd_list(args: argparse.Namespace) -> int:
    if args.kind == "workspaces":
        return cmd_list_workspaces(args)
    ws, ports = _storage(args)
    args.path = _in_share(args)
    prefix = storage_key(args.path, ws, prefix=True)
    keys = ports.storage.list(prefix)
    if args.json:
        print_json([display_path(key, ws) for key in keys])
    else:
        print("\n".join(display_path(key, ws) for key in keys) or f"no blobs under {args.path or 'the workspace'}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from xt_submit.domain.errors import NotFound

    ws, ports = _storage(args)
    key = storage_key(args.path, ws)
    try:
        data = ports.storage.read(key)
    except NotFound:
        raise CliError(f"{args.path}: no such blob (xt list blobs shows what there is)") from None
    if len(data) > VIEW_MAX_BYTES:
        raise CliError(f"{args.path}: {len(data):,} bytes, more than view prints ({VIEW_MAX_BYTES:,}); "
                       f"use xt download {args.path} LOCAL")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{args.path}: not text; use xt download {args.path} LOCAL") from None
    if args.json:
        print_json({"path": display_path(key, ws), "bytes": len(data), "text": text})
    else:
        sys.stdout.write(text)
    return 0


def _local_files(local: Path) -> List[Tuple[Path, str]]:
    """(file, its path below `local`) for a file or every file of a folder."""
    if local.is_file():
        return [(local, local.name)]
    if not local.is_dir():
        raise CliError(f"{local}: expected a file or a folder to upload")
    return [(path, path.relative_to(local).as_posix()) for path in sorted(local.rglob("*")) if path.is_file()]


def cmd_upload(args: argparse.Namespace) -> int:
    ws, ports = _storage(args)
    args.path = _in_share(args)
    local = Path(args.local)
    files = _local_files(local)
    if local.is_file() and not args.path.endswith("/"):
        targets = [(local, storage_key(args.path, ws))]  # PATH names the blob
    else:
        prefix = storage_key(args.path, ws, prefix=True)
        targets = [(path, prefix + relative) for path, relative in files]
    for path, key in targets:
        ports.storage.upload_file(key, str(path))
    print(f"uploaded {len(targets)} file{'s' * (len(targets) != 1)} to {display_path(targets[0][1], ws) if len(targets) == 1 else args.path}")
    return 0


def download_path(args: argparse.Namespace) -> int:
    """`xt download PATH LOCAL` for a path that is not a run's name: one blob, or all under a prefix."""
    ws, ports = _storage(args)
    dest = Path(args.local)
    prefix = storage_key(args.name, ws, prefix=True)
    keys = ports.storage.list(prefix)
    if not keys:
        key = storage_key(args.name, ws)
        if not ports.storage.exists(key):
            raise CliError(f"{args.name}: no such blob or folder (xt list blobs shows what there is)")
        target = dest / key.rsplit("/", 1)[-1] if dest.is_dir() else dest
        ports.storage.download_file(key, str(target))
        print(f"{args.name}: downloaded to {target}")
        return 0
    for key in keys:
        ports.storage.download_file(key, str(inside(dest, key[len(prefix):], key)))
    print(f"{args.name}: {len(keys)} files in {dest}")
    return 0


def _confirm(args: argparse.Namespace, what: str) -> bool:
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise CliError(f"delete {args.kind} {args.path}: expected --yes (no terminal to ask at)")
    return input(f"delete {what}? [y/N] ").strip().lower() in ("y", "yes")


def cmd_delete(args: argparse.Namespace) -> int:
    from xt_submit.services import workspace_archive

    ws, ports = _storage(args)
    if args.kind == "workspace":
        if not ports.storage.list(f"workspaces/{args.path}/") and args.path not in ports.stats.workspaces():
            raise CliError(f"workspace {args.path!r}: not in storage")
        if not _confirm(args, f"workspace {args.path}: every job, run, output and log in it"):
            print("not deleted")
            return 1
        print(f"deleted workspace {args.path}: {workspace_archive.delete_workspace(ports, args.path)} blobs")
        return 0
    key = storage_key(args.path, ws)
    if not ports.storage.exists(key):
        raise CliError(f"{args.path}: no such blob")
    if not _confirm(args, f"{args.path} ({key})"):
        print("not deleted")
        return 1
    ports.storage.delete(key)
    print(f"deleted {args.path}")
    return 0


def cmd_list_workspaces(args: argparse.Namespace) -> int:
    from xt_submit.services.workspaces import list_workspaces

    names = list_workspaces(embedded_parts(load(args)).ports)
    print_json(names) if args.json else print("\n".join(names) or "no workspaces")
    return 0


def cmd_create_workspace(args: argparse.Namespace) -> int:
    """`xt create workspace NAME` (its parser is admin_commands' `create`)."""
    from xt_submit.services.workspaces import create_workspace

    _, ports = _storage(args)
    create_workspace(ports, args.name)
    print(f"created workspace {args.name}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from xt_submit.services import workspace_archive

    ws, ports = _storage(args)
    name = args.name or ws
    counts = workspace_archive.export_workspace(ports, name, args.out)
    print(f"workspace {name}: {counts['blobs']} blobs and {counts['code']} code snapshots in {args.out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from xt_submit.services import workspace_archive

    _, ports = _storage(args)
    counts = workspace_archive.import_workspace(ports, args.archive)
    for name, reason in counts["skipped"]:
        print(f"xt: skipped {name}: {reason}", file=sys.stderr)
    print(f"workspace {counts['workspace']}: imported and indexed {counts['jobs']} jobs, {counts['runs']} runs, "
          f"{counts['metric_records']} metric records")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    """The run's code as it ran (its job's snapshot), its outputs under output/, and its
    run_stats.json: what rebuilding the run here needs."""
    from xt_submit.domain.messages import decode_manifest
    from xt_submit.node_kit import code_archive

    ws, ports = _storage(args)
    run = check_name("run", args.run, layout.RUN_PATTERN)
    record = ports.stats.get_run(ws, run)
    dest = Path(args.dir)
    if dest.exists() and any(dest.iterdir()):
        raise CliError(f"{dest}: expected a new or empty folder to extract {run} into")
    manifest = decode_manifest(ports.storage.read(layout.manifest_key(ws, record["job"])))
    dest.mkdir(parents=True, exist_ok=True)
    zip_path = dest / f".{run}_code.zip"
    ports.storage.download_file(manifest.code_key, str(zip_path))
    try:
        files = code_archive.safe_extract(str(zip_path), str(dest), source=manifest.code_key)
    finally:
        os.unlink(zip_path)
    prefix = layout.output_prefix(ws, run)
    outputs = ports.storage.list(prefix)
    for key in outputs:
        ports.storage.download_file(key, str(inside(dest / "output", key[len(prefix):], key)))
    if ports.storage.exists(layout.run_stats_key(ws, run)):
        ports.storage.download_file(layout.run_stats_key(ws, run), str(dest / "run_stats.json"))
    print(f"{run}: {files} files of code and {len(outputs)} outputs in {dest}; rerun with: {record['command']}")
    return 0


COMMANDS = {"upload": cmd_upload, "delete": cmd_delete, "extract": cmd_extract,
            "import": cmd_import}  # `export`: report_commands.cmd_export hands `export workspace` to cmd_export
