"""`xt run`, `xt rerun` and `xt cancel`: submitting and stopping jobs (the steps are services/submit.py)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional

from xt_submit.cli.common import (CliError, check_name, embedded_parts, ensure_local_host, load, number_in,
                                  print_json, progress_on_screen, transfer_progress)
from xt_submit.domain import layout
from xt_submit.domain.limits import INT64_MAX, INT64_MIN, MAX_CONCURRENT, MAX_PLANNED_RUNS, MAX_RETRIES, MAX_SECONDS

if TYPE_CHECKING:
    from xt_submit.domain.messages import EarlyStopping
# messages (msgspec), the config schema and the targets are imported where a command needs them:
# building the parser for `xt --help` or any other command never loads them


def add_parsers(commands) -> None:
    _run_parser(commands.add_parser("run", help="submit a job (a sweep of runs)"))

    rerun_parser = commands.add_parser("rerun", help="a new job with runs' code snapshot and exact commands")
    rerun_parser.add_argument("name", metavar="RUN|JOB", help="a run; with --failed or --status, a job")
    rerun_parser.add_argument("--failed", action="store_true", help="the job's runs that ended in error")
    rerun_parser.add_argument("--status", metavar="S,S", help="the job's runs that ended so (e.g. error,cancelled)")
    rerun_parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                              help="change an hparam of the rerun runs (repeatable)")
    rerun_parser.add_argument("--workspace")
    rerun_parser.add_argument("--json", action="store_true")

    cancel_parser = commands.add_parser("cancel", help="cancel runs, whole jobs, or every unfinished job")
    cancel_kinds = cancel_parser.add_subparsers(dest="kind", required=True, metavar="run|job|all")
    for kind in ("run", "job"):
        sub = cancel_kinds.add_parser(kind)
        sub.add_argument("names", nargs="+")
        sub.add_argument("--workspace")
    sub = cancel_kinds.add_parser("all", help="every job of the workspace not yet ended")
    sub.add_argument("--target", help="only jobs on this compute target")
    sub.add_argument("--workspace")


# xt run's own options: after the script, each is the script's (and a warning says so)
RUN_OPTIONS = frozenset({"--target", "--workspace", "--experiment", "--runs", "--max-runs", "--search-type",
                         "--hp-config", "--seed", "--concurrent", "--max-time", "--tags", "--dry-run", "--wait",
                         "--to-zip", "--json", "--config", "--resume-name", "--retries", "--early-policy", "--delay-evaluation",
                         "--evaluation-interval", "--slack-factor", "--slack-amount", "--truncation-percentage",
                         "--data-action", "--data-share-path", "--model-action", "--model-share-path"})


def _run_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", help="compute target (config compute-targets)")
    parser.add_argument("--workspace")
    parser.add_argument("--experiment")
    parser.add_argument("--runs", type=number_in(int, 1, MAX_PLANNED_RUNS), help="exactly this many runs")
    parser.add_argument("--max-runs", type=number_in(int, 1, MAX_PLANNED_RUNS), help="at most this many runs")
    parser.add_argument("--search-type", help="grid, random, bayesian (each run from the results so far; "
                                              "needs --max-runs) or dgd (neighbours of the best grid point)")
    parser.add_argument("--hp-config", help="YAML file with hyperparameter-distributions")
    parser.add_argument("--seed", type=number_in(int, INT64_MIN, INT64_MAX), help="seed for sampled hyperparameters")
    parser.add_argument("--concurrent", type=number_in(int, 1, MAX_CONCURRENT), help="runs at once on the target")
    parser.add_argument("--max-time", type=number_in(float, 0, MAX_SECONDS, above=True),
                        help="seconds a run may take before it is stopped")
    parser.add_argument("--tags", help="name[=value],... attached to the job and its runs")
    parser.add_argument("--retries", type=number_in(int, 0, MAX_RETRIES), default=0, metavar="N",
                        help="run a run that ends in error again, as a new run, up to N times")
    parser.add_argument("--resume-name", metavar="RUN",
                        help="start each run from this run's last checkpoint (Run.get_checkpoint() returns it)")
    early = parser.add_argument_group("early stopping (config early-stopping:)")
    early.add_argument("--early-policy", help="none, bandit, median or truncation: stop runs whose primary "
                                              "metric falls behind the job's other runs")
    early.add_argument("--delay-evaluation", type=number_in(int, 0, INT64_MAX),
                       help="reports of the primary metric before the first check")
    early.add_argument("--evaluation-interval", type=number_in(int, 1, INT64_MAX), help="check at every N-th report")
    early.add_argument("--slack-factor", type=number_in(float, 0, 1e300), help="bandit: allowed ratio behind the best")
    early.add_argument("--slack-amount", type=number_in(float, 0, 1e300), help="bandit: allowed amount behind the best")
    early.add_argument("--truncation-percentage", type=number_in(int, 1, 99),
                       help="truncation: stop the lowest N percent at each check")
    shares = parser.add_argument_group("data and model shares (config data: and model:)")
    for share, env in layout.SHARE_DIR_ENV.items():
        shares.add_argument(f"--{share}-action", help=f"none, download (a copy cached on each node) or mount (the "
                                                      f"storage itself, where the target can): the run sees {env}")
        shares.add_argument(f"--{share}-share-path", metavar="PATH", help=f"the folder of the {share} share "
                                                                         f"(xt upload --share {share} LOCAL PATH)")
    instead = parser.add_mutually_exclusive_group()
    instead.add_argument("--dry-run", action="store_true", help="print the planned runs, submit nothing")
    instead.add_argument("--wait", action="store_true",
                         help="follow the job until it ends; non-zero exit if a run fails")
    instead.add_argument("--to-zip", metavar="FILE", help="write a drop zip (the code and xt_manifest.json) to FILE "
                                                          "for uploads/ instead of submitting")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("script", help="the script to run (a .py file, or a command)")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="its arguments; --name=[a,b] sweeps")


# --- xt run -----------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    import msgspec

    from xt_submit.domain.manifest import search_budget
    from xt_submit.domain.messages import check_manifest_size
    from xt_submit.services import submit, targets

    cfg = load(args, {
        "general.experiment": args.experiment, "xt-services.target": args.target,
        "hyperparameter-search.search-type": args.search_type, "hyperparameter-search.max-runs": args.max_runs,
        "hyperparameter-search.runs": args.runs, "hyperparameter-search.seed": args.seed,
        "hyperparameter-search.hp-config": args.hp_config,
        **{f"early-stopping.{option}": getattr(args, option.replace("-", "_")) for option in (
            "early-policy", "delay-evaluation", "evaluation-interval", "slack-factor", "slack-amount",
            "truncation-percentage")},
        **{f"{share}.{share}-{option}": getattr(args, f"{share}_{option.replace('-', '_')}")
           for share in ("data", "model") for option in ("action", "share-path")},
    })
    manifest = _manifest_from(args, cfg)
    check_manifest_size(manifest, "xt run")
    planned = submit.plan(manifest, cfg, "xt run")  # and whether the target can make its share mounts
    if args.dry_run:
        if args.json:
            print_json({"job": None, "runs": planned})
        else:
            print(f"dry run: {len(planned)} runs planned ({manifest.search_type} search), nothing submitted")
            if manifest.search_type in ("bayesian", "dgd"):
                print(f"  (the first runs: the search plans the rest, up to {search_budget(manifest)}, "
                      "from their results)")
            for entry in planned:
                print(f"  {entry['index']:>4}  {entry['command']}")
        return 0
    if args.to_zip:
        return _write_drop(args, cfg, manifest, planned)

    parts = embedded_parts(cfg)
    if manifest.resume_from:
        parts.ports.stats.get_run(manifest.workspace, manifest.resume_from)  # NotFound: one line naming it
    submit.check_shares_filled(parts.ports.storage, manifest)
    registered = manifest.target in cfg.compute_targets
    if registered:  # before the host starts: it may connect to the target's boxes
        targets.register(parts.compute, cfg, manifest.target)
    # now, the job checked: the host's start (~0.3 s) overlaps the snapshot's upload
    ensure_local_host(parts, warm=targets.kind_of(cfg, manifest.target).host_warms(cfg, manifest.target))
    from xt_submit.services.code_upload import upload_code  # the snapshot's modules: after the host's start

    with transfer_progress(parts.ports.storage, "uploading code", enabled=not args.json):
        key, sha256 = upload_code(parts.ports.storage, parts.home, cfg.code.code_dirs, os.getcwd(), cfg.code.code_omit,
                                  max_bytes=cfg.code.max_size_mb * 1024**2)
    manifest = msgspec.structs.replace(manifest, code_key=key, code_sha256=sha256)
    job, runs = _submit(parts, manifest, cfg, target_registered=registered)
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


def _write_drop(args: argparse.Namespace, cfg, manifest, planned) -> int:
    """`xt run --to-zip FILE`: the job as a zip another system drops into the uploads area."""
    from xt_submit import bootstrap
    from xt_submit.config import EMBEDDED
    from xt_submit.services import submit

    path = Path(args.to_zip)
    home = bootstrap.xt_home(cfg.general.xt_home)
    size = submit.write_drop_zip(path, manifest, cfg, os.getcwd(), exclude=[home])
    upload = layout.UPLOADS_PREFIX + (path.name if path.suffix == ".zip" else f"{path.name}.zip")
    result = layout.upload_result_key(upload)
    where = (f"move it to {home / 'storage' / upload}" if cfg.xt_services.storage == EMBEDDED
             else f"upload it to {cfg.xt_services.storage} as {upload}")
    if args.json:
        print_json({"zip": str(path), "bytes": size, "upload": upload, "result": result, "runs": planned})
    else:
        runs = len(planned)
        print(f"{path}: a drop of {runs} run{'' if runs == 1 else 's'}; {where}, and read the outcome from {result}")
    return 0


def _manifest_from(args: argparse.Namespace, cfg):
    """The job manifest the command line and the config ask for (no code yet): its target checked,
    the manifest itself not (submit.plan checks it)."""
    from xt_submit.domain.messages import JobManifest
    from xt_submit.services import targets

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
    import getpass  # these, and sweep (yaml with it), here: only `xt run` needs them, not `xt --help`
    import random
    import shlex

    from xt_submit.domain import sweep

    _warn_about_xt_options_after(script, args.script_args)
    fixed_args, space = sweep.split_script_args(args.script_args)
    search = cfg.hyperparameter_search
    if search.hp_config:
        file_space = sweep.load_hp_config(search.hp_config)
        space = {**file_space, **space}  # the command line wins over the file
    base = ["python", script] if script.endswith(".py") else [script]
    manifest = JobManifest(
        workspace=cfg.general.workspace, experiment=cfg.general.experiment, username=getpass.getuser(),
        script=script, command=shlex.join(base + fixed_args), hp_space=space, search_type=search.search_type,
        runs=search.runs, max_runs=search.max_runs,
        seed=search.seed if search.seed is not None else random.randrange(2**31),
        target=target_name, concurrent=concurrent, max_time=args.max_time if args.max_time is not None else target.max_time,
        setup=targets.setup_spec(cfg, target.setup), after_dirs=list(cfg.after_files.after_dirs),
        after_omit=list(cfg.after_files.after_omit), tags=layout.parse_tags([args.tags], "--tags"),
        primary_metric=cfg.general.primary_metric, maximize_metric=cfg.general.maximize_metric,
        step_name=cfg.general.step_name, early_stopping=_early_stopping(cfg.early_stopping),
        resume_from=check_name("--resume-name", args.resume_name, layout.RUN_PATTERN) if args.resume_name else "",
        retries=args.retries, data=_share(cfg.data, "data"), model=_share(cfg.model, "model"))
    return manifest


def _share(section, share: str):
    """The manifest's view of a data: or model: section (None when its action is none)."""
    from xt_submit.domain.messages import ShareSpec

    action = getattr(section, f"{share}_action")
    if action == layout.NO_SHARE:
        return None
    return ShareSpec(path=getattr(section, f"{share}_share_path").strip("/"), action=action,
                     writable=getattr(section, f"{share}_writable"))


def _early_stopping(section) -> Optional[EarlyStopping]:
    from xt_submit.domain.messages import EarlyStopping

    if section.early_policy == "none":
        return None
    return EarlyStopping(policy=section.early_policy, delay_evaluation=section.delay_evaluation,
                         evaluation_interval=section.evaluation_interval, slack_factor=section.slack_factor,
                         slack_amount=section.slack_amount, truncation_percentage=section.truncation_percentage)


def _warn_about_xt_options_after(script: str, script_args) -> None:
    """An XT option after the script is the script's (argparse hands it over whole): say so once."""
    from xt_submit.domain import sweep

    ours = sorted({arg.split("=", 1)[0] for arg in script_args if arg.split("=", 1)[0] in RUN_OPTIONS
                   and not sweep.is_sweep_arg(arg)})
    if ours:
        print(f"xt: warning: {', '.join(ours)} after {script} goes to the script, not to xt run; "
              f"put xt's options before the script", file=sys.stderr)


def _submit(parts, manifest, cfg, target_registered: bool = False):
    """Queue the job, keeping a local host serving it where the queue is the embedded one; (job, runs)."""
    from xt_submit.services import submit

    submission = submit.submit(parts, manifest, cfg, lambda: ensure_local_host(parts),
                               where_to_look=f"{parts.home / 'host.out'} (the host's errors) and host.log beside it",
                               target_registered=target_registered)
    return submission.job, submission.runs


def _follow(parts, workspace: str, job: str, total: int, show_progress: bool) -> Dict[str, Any]:
    from xt_submit.services import submit

    if not show_progress or not progress_on_screen():  # no bar to draw: tqdm's import (~30 ms) is not paid
        return submit.follow(parts, workspace, job, lambda record: None, lambda: ensure_local_host(parts))
    from tqdm import tqdm

    bar = tqdm(total=total, unit="run", desc=job, file=sys.stderr)

    def progress(record: Dict[str, Any]) -> None:
        if record["run_count"] > bar.total:  # an adaptive search or a retry added runs
            bar.total = record["run_count"]
        bar.set_postfix({s: n for s, n in sorted(record["counts"].items())}, refresh=False)
        bar.update(submit.finished_runs(record) - bar.n)

    try:
        return submit.follow(parts, workspace, job, progress, lambda: ensure_local_host(parts))
    finally:
        bar.close()


def cmd_rerun(args: argparse.Namespace) -> int:
    """A new job of one run, or of a job's failed runs: the same code snapshot, each run's command
    and swept hparams (changed by --set)."""
    from xt_submit.domain.messages import TERMINAL_STATUSES
    from xt_submit.domain.sweep import parse_set_values
    from xt_submit.services import submit

    cfg = load(args)
    parts = embedded_parts(cfg)
    ws = cfg.general.workspace
    changes = parse_set_values(args.set, "--set")
    if args.failed or args.status:
        job = check_name("job", args.name, layout.JOB_PATTERN)
        statuses = [s.strip() for s in (args.status or "error").split(",") if s.strip()]
        ended = sorted(TERMINAL_STATUSES)
        unknown = [s for s in statuses if s not in ended]
        if unknown:
            raise CliError(f"--status: expected end states among {', '.join(ended)}, got {', '.join(unknown)}")
        runs = submit.failed_runs(parts, ws, job, statuses)
        if not runs:
            raise CliError(f"{job}: no runs ended {' or '.join(statuses)}: nothing to rerun")
    else:
        runs = [check_name("run", args.name, layout.RUN_PATTERN)]
    manifest, commands = submit.rerun_manifest(parts, cfg, ws, runs, changes)
    job, new_runs = _submit(parts, manifest, cfg)
    if args.json:
        print_json({"job": job, "runs": new_runs, "rerun_of": runs if len(runs) > 1 else runs[0]})
    else:
        for old, new, command in zip(runs, new_runs, commands):
            print(f"{job}: {new} reruns {old}: {command}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from xt_submit.services import submit

    cfg = load(args)
    parts = embedded_parts(cfg)
    kind, names = args.kind, getattr(args, "names", [])
    if kind == "all":
        if args.target is not None and args.target not in cfg.compute_targets:
            raise CliError(f"--target: expected a compute-targets name ({', '.join(sorted(cfg.compute_targets))}), "
                           f"got {args.target!r}")
        kind, names = "job", submit.unfinished_jobs(parts, cfg.general.workspace, args.target)
        if not names:
            print("nothing to cancel: every job has ended")
            return 0
    for name in names:
        check_name(kind, name, layout.RUN_PATTERN if kind == "run" else layout.JOB_PATTERN)
    submit.request_cancel(parts, cfg.general.workspace, kind, names)
    ensure_local_host(parts)
    print(f"cancel requested: {', '.join(names)}")
    return 0


COMMANDS = {"run": cmd_run, "rerun": cmd_rerun, "cancel": cmd_cancel}
