"""The `xt` command line (and `xt-submit`, which is `xt run`)."""
from __future__ import annotations

import argparse
import getpass
import os
import random
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import msgspec

from xt_submit import config as xt_config
from xt_submit.domain import layout, sweep
from xt_submit.cli import report_commands
from xt_submit.services import targets
from xt_submit.cli.common import (EXIT_USAGE, CliError, check_name, embedded_parts, ensure_local_host, load,
                                   parse_tag_items, print_json, transfer_progress)
from xt_submit.domain.errors import OneLineError


# --- argument parsing -------------------------------------------------------------------------
def _run_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", help="compute target (config compute-targets)")
    parser.add_argument("--workspace")
    parser.add_argument("--experiment")
    parser.add_argument("--runs", type=int, help="exactly this many runs")
    parser.add_argument("--max-runs", type=int, help="at most this many runs")
    parser.add_argument("--search-type", help="grid or random")
    parser.add_argument("--hp-config", help="YAML file with hyperparameter-distributions")
    parser.add_argument("--seed", type=int, help="seed for sampled hyperparameters")
    parser.add_argument("--concurrent", type=int, help="runs at once on the target")
    parser.add_argument("--max-time", type=float, help="seconds a run may take before it is stopped")
    parser.add_argument("--tags", help="name[=value],... attached to the job and its runs")
    parser.add_argument("--dry-run", action="store_true", help="print the planned runs, submit nothing")
    parser.add_argument("--wait", action="store_true", help="follow the job until it ends; non-zero exit if a run fails")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("script", help="the script to run (a .py file, or a command)")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="its arguments; --name=[a,b] sweeps")


class _Parser(argparse.ArgumentParser):
    """Every (sub)command accepts --config, so `xt run --config F` and `xt --config F run` both work."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--config", default=argparse.SUPPRESS if self.prog != "xt" else None,
                          help="config file (default: ./xt_config.yaml, or $XT_CONFIG)")

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\n")  # one line, not the whole usage


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xt", description="XT: run and track ML experiments.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    _run_parser(commands.add_parser("run", help="submit a job (a sweep of runs)"))

    report_commands.add_parsers(commands)

    rerun_parser = commands.add_parser("rerun", help="a new job with a run's code snapshot and exact command")
    rerun_parser.add_argument("name", metavar="RUN")
    rerun_parser.add_argument("--workspace")
    rerun_parser.add_argument("--json", action="store_true")

    cancel_parser = commands.add_parser("cancel", help="cancel runs or a whole job")
    cancel_kinds = cancel_parser.add_subparsers(dest="kind", required=True, metavar="run|job")
    for kind in ("run", "job"):
        sub = cancel_kinds.add_parser(kind)
        sub.add_argument("names", nargs="+")
        sub.add_argument("--workspace")

    serve_parser = commands.add_parser("serve", help="run the local host (or, with a team's services, the compute agent) in the foreground")
    serve_parser.add_argument("--idle-exit", type=float, help="stop after this many idle seconds")

    admin_parser = commands.add_parser("admin", help="maintenance: rebuild the stats index, set up batch targets")
    admin_kinds = admin_parser.add_subparsers(dest="kind", required=True, metavar="reindex|batch-settings")
    reindex_parser = admin_kinds.add_parser("reindex")
    reindex_parser.add_argument("--workspace", help="one workspace (default: every workspace in storage)")
    batch_parser = admin_kinds.add_parser("batch-settings", help="upload the nodes' xt wheel; print the Functions "
                                                                 "app settings for this config's batch targets")
    batch_parser.add_argument("--wheel", required=True, help="the xt-pipeline wheel (pip wheel --no-deps -w dist .)")
    batch_parser.add_argument("--json", action="store_true")

    create_parser = commands.add_parser("create", help="create the template of a team's Azure services")
    create_parser.add_argument("what", choices=["team"])
    create_parser.add_argument("name", help="3-12 lowercase letters and digits")
    create_parser.add_argument("--out", help="the template file (default: xt_team_NAME.json)")

    config_parser = commands.add_parser("config", help="write a starter xt_config.yaml")
    config_parser.add_argument("--create", action="store_true", required=True)
    config_parser.add_argument("--path", default="xt_config.yaml")
    return parser


# --- xt run -----------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from xt_submit.services import submit

    cfg = load(args, {
        "general.experiment": args.experiment, "xt-services.target": args.target,
        "hyperparameter-search.search-type": args.search_type, "hyperparameter-search.max-runs": args.max_runs,
        "hyperparameter-search.runs": args.runs, "hyperparameter-search.seed": args.seed,
        "hyperparameter-search.hp-config": args.hp_config,
    })
    manifest = _manifest_from(args, cfg)
    planned = submit.plan(manifest, "xt run")
    if args.dry_run:
        if args.json:
            print_json({"job": None, "runs": planned})
        else:
            print(f"dry run: {len(planned)} runs planned ({manifest.search_type} search), nothing submitted")
            for entry in planned:
                print(f"  {entry['index']:>4}  {entry['command']}")
        return 0

    from xt_submit.services.code_upload import upload_code

    parts = embedded_parts(cfg)
    with transfer_progress(parts.ports.storage, "uploading code", enabled=not args.json):
        key, sha256 = upload_code(parts.ports.storage, parts.home, cfg.code.code_dirs, os.getcwd(), cfg.code.code_omit,
                                  max_bytes=cfg.code.max_size_mb * 1024**2)
    manifest = msgspec.structs.replace(manifest, code_key=key, code_sha256=sha256)
    job, runs = _submit(parts, manifest, cfg)
    if args.json and not args.wait:
        print_json({"job": job, "runs": runs})
    elif not args.json:
        print(f"{job}: {len(runs)} runs queued on {manifest.target} ({runs[0]}..{runs[-1]})" if runs else f"{job}: no runs")
    if not args.wait:
        return 0
    final = _follow(parts, manifest.workspace, job, len(runs), show_progress=not args.json)
    if args.json:
        print_json({"job": job, "runs": runs, "status": final["status"], "counts": final["counts"]})
    else:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(final["counts"].items()))
        print(f"{job}: {final['status']} ({counts})")
    return 0 if final["status"] == "completed" else 1


def _manifest_from(args: argparse.Namespace, cfg):
    """The job manifest the command line and the config ask for (not yet checked, no code yet)."""
    from xt_submit.domain.messages import JobManifest

    target_name = cfg.xt_services.target
    target = cfg.compute_targets[target_name]
    targets.check_target(cfg, target_name)
    targets.kind_of(cfg, target_name).check_submittable(cfg, target_name)
    concurrent = args.concurrent if args.concurrent is not None else target.concurrent
    if concurrent < 1:
        raise CliError(f"--concurrent: expected a whole number >= 1, got {concurrent}")
    script = args.script
    if script.endswith(".py") and not Path(script).is_file():
        raise CliError(f"{script}: no such script")
    fixed_args, space = sweep.split_script_args(args.script_args)
    search = cfg.hyperparameter_search
    if search.hp_config:
        file_space = sweep.load_hp_config(search.hp_config)
        space = {**file_space, **space}  # the command line wins over the file
    base = ["python", script] if script.endswith(".py") else [script]
    return JobManifest(
        workspace=cfg.general.workspace, experiment=cfg.general.experiment, username=getpass.getuser(),
        script=script, command=shlex.join(base + fixed_args), hp_space=space, search_type=search.search_type,
        runs=search.runs, max_runs=search.max_runs,
        seed=search.seed if search.seed is not None else random.randrange(2**31),
        target=target_name, concurrent=concurrent, max_time=args.max_time if args.max_time is not None else target.max_time,
        setup=targets.setup_spec(cfg, target.setup), after_dirs=list(cfg.after_files.after_dirs),
        after_omit=list(cfg.after_files.after_omit), tags=parse_tag_items([args.tags], "--tags"),
        primary_metric=cfg.general.primary_metric, maximize_metric=cfg.general.maximize_metric,
        step_name=cfg.general.step_name)


def _submit(parts, manifest, cfg):
    """Queue the job, keeping a local host serving it where the queue is the embedded one; (job, runs)."""
    from xt_submit.services import submit

    submission = submit.submit(parts, manifest, cfg, lambda: ensure_local_host(parts),
                               where_to_look=str(parts.home / "host.log"))
    return submission.job, submission.runs


def _follow(parts, workspace: str, job: str, total: int, show_progress: bool) -> Dict[str, Any]:
    from tqdm import tqdm

    from xt_submit.services import submit

    bar = tqdm(total=total, unit="run", desc=job, disable=not show_progress, file=sys.stderr)

    def progress(record: Dict[str, Any]) -> None:
        bar.set_postfix({s: n for s, n in sorted(record["counts"].items())}, refresh=False)
        bar.update(submit.finished_runs(record) - bar.n)

    try:
        return submit.follow(parts, workspace, job, progress, lambda: ensure_local_host(parts))
    finally:
        bar.close()


def cmd_rerun(args: argparse.Namespace) -> int:
    """A new job of one run: the same code snapshot, the same command and swept hparams."""
    from xt_submit.services import submit

    cfg = load(args)
    parts = embedded_parts(cfg)
    run = check_name("run", args.name, layout.RUN_PATTERN)
    manifest, command = submit.rerun_manifest(parts, cfg.general.workspace, run)
    job, (new_run,) = _submit(parts, manifest, cfg)
    if args.json:
        print_json({"job": job, "runs": [new_run], "rerun_of": run})
    else:
        print(f"{job}: {new_run} reruns {run}: {command}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from xt_submit.services import submit

    cfg = load(args)
    parts = embedded_parts(cfg)
    for name in args.names:
        check_name(args.kind, name, layout.RUN_PATTERN if args.kind == "run" else layout.JOB_PATTERN)
    submit.request_cancel(parts, cfg.general.workspace, args.kind, args.names)
    ensure_local_host(parts)
    print(f"cancel requested: {', '.join(args.names)}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from xt_submit import bootstrap
    from xt_submit.runtime.local_host import run_host

    cfg = load(args)
    home = bootstrap.xt_home(cfg.general.xt_home)
    if cfg.xt_services.queue != "embedded":  # the team's services: run the tasks the Functions app hands out
        from xt_submit.runtime.agent import run_agent

        print(f"xt agent serving the tasks queue of {cfg.xt_services.queue} from {home} (Ctrl-C to stop)", file=sys.stderr)
        if run_agent(home, lambda: bootstrap.agent_parts(cfg), cfg) == 1:
            raise CliError(f"another xt host or agent is already serving {home}")
        return 0
    print(f"xt host serving {home} (Ctrl-C to stop)", file=sys.stderr)
    if run_host(home, lambda: bootstrap.embedded(home), idle_exit_seconds=args.idle_exit) == 1:
        raise CliError(f"another xt host is already serving {home}")
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    from xt_submit.handlers.reindex import rebuild_workspace, workspaces_in_storage
    from xt_submit.runtime.local_host import host_running

    cfg = xt_config.load_config(args.config)
    if args.kind == "batch-settings":
        from xt_submit.services.batch_target import app_settings

        settings = app_settings(cfg, embedded_parts(cfg).ports.storage, args.wheel)
        if args.json:
            print_json(settings)
        else:
            print("\n".join(f"{name}={value}" for name, value in settings.items()))
        return 0
    parts = embedded_parts(cfg)
    if host_running(parts.home):
        raise CliError(f"a host is serving {parts.home}: wait until it is idle (it exits by itself) and run again")
    workspaces = [args.workspace] if args.workspace else workspaces_in_storage(parts.ports)
    for ws in workspaces:
        try:
            layout.check_name("--workspace", ws)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        counts = rebuild_workspace(parts.ports, ws)
        print(f"{ws}: reindexed {counts['jobs']} jobs, {counts['runs']} runs, {counts['metric_records']} metric records")
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    import json

    from xt_submit.services.team_template import build_template, next_steps

    template = build_template(args.name)
    path = Path(args.out or f"xt_team_{args.name}.json")
    if path.exists():
        raise CliError(f"{path}: exists; name another file with --out")
    path.write_text(json.dumps(template, indent=2) + "\n")
    print(next_steps(args.name, str(path)))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    xt_config.write_starter_config(args.path)
    print(f"wrote {args.path}")
    return 0


COMMANDS = {"run": cmd_run, "rerun": cmd_rerun, "cancel": cmd_cancel, "serve": cmd_serve, "admin": cmd_admin,
            "create": cmd_create, "config": cmd_config, **report_commands.COMMANDS}


def main(argv: Optional[List[str]] = None) -> int:
    from xt_submit.ports import NotFound

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except OneLineError as exc:  # every error meant for a person: config, sweep, contract, archive, query...
        print(f"xt: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NotFound as exc:
        print(f"xt: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("xt: interrupted (runs already submitted keep going)", file=sys.stderr)
        return 130


def submit_main(argv: Optional[List[str]] = None) -> int:
    """`xt-submit ARGS` is `xt run ARGS`."""
    return main(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
