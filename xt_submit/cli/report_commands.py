"""The `xt` subcommands that find, compare and follow runs: list, view, plot, report, export (runs as
TensorBoard files; a workspace, by storage_commands), monitor, download, tags."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List

from xt_submit.domain import layout
from xt_submit.cli import storage_commands, target_commands
from xt_submit.cli.common import (CliError, check_name, embedded_parts, ensure_local_host, load, number_in,
                                   print_json)
from xt_submit.domain.limits import MAX_ROWS

if TYPE_CHECKING:
    from xt_submit.domain.run_query import RunQuery
# cli/reports.py, services/run_reports.py, the run query and the messages (msgspec) are imported in
# the commands that use them: building the parser (`xt --help`, the first step of every command)
# never loads them

STATUSES = ["queued", "running", "preempted", "completed", "error", "cancelled", "stopped"]
# xt report's bounds: a page a browser still opens (every run's curves and console tail are embedded)
REPORT_MAX_POINTS = 100_000
REPORT_CONSOLE_BYTES = 10 * 1024 * 1024
# the services' defaults, repeated so the parser names them without importing the services
# (tests/unit/test_cli_polish.py holds them equal)
REPORT_DEFAULT_POINTS = 500  # services/html_report.MAX_POINTS
REPORT_DEFAULT_CONSOLE_BYTES = 8192  # services/html_report.CONSOLE_BYTES
TENSORBOARD_DEFAULT_PORT = 6006  # services/tensorboard_export.DEFAULT_PORT


# --- parsers ----------------------------------------------------------------------------------
def add_parsers(commands) -> None:
    list_parser = commands.add_parser("list", help="list runs, jobs, workspaces, experiments, tags, targets, boxes "
                                                   "or blobs")
    kinds = list_parser.add_subparsers(dest="kind", required=True,
                                       metavar="runs|jobs|workspaces|experiments|tags|targets|boxes|blobs")
    for kind in ("runs", "jobs"):
        sub = kinds.add_parser(kind, help=f"a table of {kind} (selected, filtered, sorted; --json: their records)")
        sub.add_argument("names", nargs="*", metavar="RUNS" if kind == "runs" else "JOBS",
                         help="run7.2, run7.1-run7.10, run7.*, job7 (comma or space separated)")
        sub.add_argument("--workspace")
        sub.add_argument("--job", action="append", default=[], help=f"{kind} of this job (repeatable)")
        sub.add_argument("--experiment", help=f"{kind} of this experiment")
        sub.add_argument("--status", choices=STATUSES, help=f"{kind} in this status")
        sub.add_argument("--target", help=f"{kind} on this compute target")
        sub.add_argument("--username", help=f"{kind} submitted by this user")
        sub.add_argument("--filter", action="append", default=[], metavar="EXPR",
                         help="'prop op value', e.g. metrics.acc>0.5 (repeatable; all must hold)")
        sub.add_argument("--tags-all", help="tags every row must carry (comma separated)")
        sub.add_argument("--tags-any", help="tags of which a row must carry one (comma separated)")
        sub.add_argument("--sort", help="column: a field, metrics.NAME, hparams.NAME, tags.NAME, or a bare name (the field, else the hparam, else the metric)")
        sub.add_argument("--reverse", action="store_true", help="sort in descending order")
        sub.add_argument("--first", type=number_in(int, 1, MAX_ROWS), metavar="N", help="the first N rows")
        sub.add_argument("--last", type=number_in(int, 1, MAX_ROWS), metavar="N", help="the last N rows")
        sub.add_argument("--all", action="store_true", help="every row (ignore first/last from the config)")
        sub.add_argument("--columns", help="the columns to show: col[=Alias][:fmt],...")
        sub.add_argument("--add-columns", help="columns to add to the default ones")
        sub.add_argument("--group", help="a table per value of this column")
        sub.add_argument("--export", metavar="FILE", help="also write the rows to FILE.csv or FILE.tsv")
        sub.add_argument("--json", action="store_true")
    sub = kinds.add_parser("workspaces", help="the workspaces in storage: created ones and those with jobs")
    sub.add_argument("--workspace", help=argparse.SUPPRESS)  # accepted as before; it changes nothing here
    sub.add_argument("--json", action="store_true")
    sub = kinds.add_parser("experiments", help="the experiments of a workspace")
    sub.add_argument("--workspace")
    sub.add_argument("--json", action="store_true")
    sub = kinds.add_parser("tags", help="the tags of a run or a job")
    sub.add_argument("name", help="a run or a job")
    sub.add_argument("--workspace")
    sub.add_argument("--json", action="store_true")
    target_commands.add_list_kinds(kinds)
    storage_commands.add_list_kinds(kinds)

    view_parser = commands.add_parser("view", help="show a run, its log, console or metrics, a job, a target's "
                                                   "status or a blob")
    view_kinds = view_parser.add_subparsers(dest="kind", required=True,
                                            metavar="run|log|console|metrics|job|status|blob|tensorboard")
    _add_tensorboard_kind(view_kinds, "view")
    target_commands.add_view_kinds(view_kinds)
    storage_commands.add_view_kinds(view_kinds)
    for kind, what in (("run", "a run's record and output files"), ("log", "a run's run log (events and metrics)"),
                       ("console", "a run's console output"),
                       ("job", "a job's counts, best run by the primary metric and duration")):
        sub = view_kinds.add_parser(kind, help=what)
        sub.add_argument("name", metavar="JOB" if kind == "job" else "RUN", help="job7" if kind == "job" else "run7.2")
        sub.add_argument("--workspace")
        sub.add_argument("--json", action="store_true")
    sub = view_kinds.add_parser("metrics", help="each run's metric history, aligned by step")
    sub.add_argument("names", nargs="+", metavar="RUNS", help="run7.2, run7.1-run7.10, run7.*, job7")
    sub.add_argument("--workspace")
    sub.add_argument("--metric", action="append", default=[], help="only these metrics (repeatable)")
    sub.add_argument("--json", action="store_true")

    plot = commands.add_parser("plot", help="plot metrics against the step, one line per run")
    plot.add_argument("names", nargs="*", metavar="RUNS", help="run7.2, run7.1-run7.10, run7.*, job7")
    plot.add_argument("--job", help="the runs of this job")
    plot.add_argument("--workspace", help="the workspace (default: general.workspace)")
    plot.add_argument("--metric", required=True, metavar="M[,M...]", help="the metric(s): one subplot each")
    plot.add_argument("--x", default="step", help="the x axis: step (default) or time (seconds since each run's start)")
    plot.add_argument("--aggregate", choices=["mean", "min", "max"], help="one line per group of runs")
    plot.add_argument("--group-by", help="the hparam that groups runs for --aggregate")
    plot.add_argument("--smooth", type=number_in(int, 1, 100_000), default=1, metavar="N",
                      help="draw the moving average of N points (the raw curve faint behind it)")
    plot.add_argument("--out", help="the PNG to write (default: plot_<job or first run>_<metrics>.png here)")

    page = commands.add_parser("report", help="write one self-contained HTML page of runs (no server, no network)")
    _add_run_selection(page)
    page.add_argument("--out", default="report.html", help="the .html file to write (default: report.html)")
    page.add_argument("--title", help="the page's title")
    page.add_argument("--link", action="store_true",
                      help="with one --job: print a read-only link to the job's page in storage instead of "
                           "writing --out (rendered now unless the job ended and its page is there)")
    page.add_argument("--link-hours", type=number_in(float, 0, 24 * 365, above=True), default=24.0,
                      help="how long the link stays valid (default 24; storage that is a folder here gives "
                           "a file:// URL)")
    page.add_argument("--max-points", type=number_in(int, 2, REPORT_MAX_POINTS), default=REPORT_DEFAULT_POINTS,
                      help=f"points per run and metric before a curve is subsampled (default {REPORT_DEFAULT_POINTS})")
    page.add_argument("--console-tail", type=number_in(int, 0, REPORT_CONSOLE_BYTES), default=REPORT_DEFAULT_CONSOLE_BYTES,
                      metavar="BYTES",
                      help=f"the last BYTES of each run's console (default {REPORT_DEFAULT_CONSOLE_BYTES})")

    export = commands.add_parser("export", help="runs as TensorBoard event files, or a workspace as one zip")
    export_kinds = export.add_subparsers(dest="kind", required=True, metavar="tensorboard|workspace")
    _add_tensorboard_kind(export_kinds, "export")
    storage_commands.add_export_kinds(export_kinds)

    monitor = commands.add_parser("monitor", help="follow a job's or a run's console output until it ends")
    monitor.add_argument("name", metavar="JOB|RUN", help="job7 or run7.2")
    monitor.add_argument("--workspace")
    monitor.add_argument("--poll", type=number_in(float, 0, 60, above=True), default=0.5, help=argparse.SUPPRESS)

    download = commands.add_parser("download", help="a run's outputs, a job's code, or any PATH in storage")
    download.add_argument("name", metavar="RUN|JOB|PATH", help="a run (its outputs), a job (with --code) or a path "
                                                               "in storage")
    download.add_argument("local", nargs="?", help="where to (default: --dest)")
    download.add_argument("--workspace")
    download.add_argument("--dest", default=".", help="the local folder to download into (default: .)")
    download.add_argument("--live", action="store_true", help="the live copy of the output dir (while it runs)")
    download.add_argument("--code", action="store_true", help="with a job: its code snapshot, unpacked")

    for verb in ("set", "clear"):
        sub = commands.add_parser(verb, help=f"{verb} tags on a run or a job" + (", or the cached credentials"
                                                                                 if verb == "clear" else ""))
        sub.add_argument("what", choices=["tags"] if verb == "set" else ["tags", "credentials"],
                         help="tags" if verb == "set" else "tags, or credentials (the secrets cached for this login)")
        sub.add_argument("name", nargs="?" if verb == "clear" else None, metavar="RUN|JOB",
                         help="the run or job whose tags change")
        sub.add_argument("tags", nargs="*" if verb == "clear" else "+", metavar="name=value" if verb == "set" else "name",
                         help="tags to set (a bare name is a tag without a value)" if verb == "set"
                         else "tags to remove")
        sub.add_argument("--workspace")


def _add_run_selection(parser) -> None:
    """The runs a page or an export is of: the selectors and filters of `xt list runs`."""
    parser.add_argument("names", nargs="*", metavar="RUNS", help="run7.2, run7.1-run7.10, run7.*, job7")
    parser.add_argument("--job", action="append", default=[], help="runs of this job (repeatable)")
    parser.add_argument("--experiment", help="runs of this experiment")
    parser.add_argument("--workspace", help="the workspace (default: general.workspace)")
    parser.add_argument("--status", choices=STATUSES, help="runs in this status")
    parser.add_argument("--filter", action="append", default=[], metavar="EXPR",
                        help="as in xt list runs (repeatable)")
    parser.add_argument("--first", type=number_in(int, 1, MAX_ROWS), help="the first N runs selected")
    parser.add_argument("--last", type=number_in(int, 1, MAX_ROWS), help="the last N runs selected")
    parser.add_argument("--all", action="store_true", help="every run (ignore first/last from the config)")


def _add_tensorboard_kind(kinds, verb: str) -> None:
    """`xt export tensorboard` and `xt view tensorboard`: the same selection as `xt report`."""
    if verb == "export":
        sub = kinds.add_parser("tensorboard", help="runs as TensorBoard event files, one folder per run")
        sub.add_argument("--dest", required=True, metavar="DIR",
                         help="the folder to write (a run exported before is replaced, not doubled)")
    else:
        sub = kinds.add_parser("tensorboard", help="export runs and run TensorBoard on them (needs tensorboard)")
        sub.add_argument("--dest", metavar="DIR", help="the folder to export to and keep (default: a temporary one)")
        sub.add_argument("--port", type=number_in(int, 0, 65535), default=TENSORBOARD_DEFAULT_PORT,
                         help=f"TensorBoard's port (default {TENSORBOARD_DEFAULT_PORT}; 0: any free one)")
    _add_run_selection(sub)


def _tensorboard_selection(args: argparse.Namespace) -> Dict[str, Any]:
    return dict(names=args.names, jobs=args.job, experiment=args.experiment, status=args.status,
                filters=args.filter, first=args.first, last=args.last, everything=args.all)


# --- xt list ----------------------------------------------------------------------------------
def run_query_from_args(args: argparse.Namespace, workspace: str, report) -> RunQuery:
    """`xt list runs` options (falling back to the run-reports config) as a store-neutral query."""
    from xt_submit.services import run_reports

    return run_reports.query_from(workspace, report, names=args.names, jobs=args.job, filters=args.filter,
                                  experiment=args.experiment, target=args.target, username=args.username,
                                  status=args.status, tags_all=args.tags_all, tags_any=args.tags_any, sort=args.sort,
                                  reverse=args.reverse, first=args.first, last=args.last, everything=args.all)


def _job_rows(stats, workspace: str, args, report) -> List[Dict[str, Any]]:
    from xt_submit.services import run_reports

    return run_reports.select_jobs(stats, workspace, report, names=args.names, jobs=args.job, filters=args.filter,
                                   experiment=args.experiment, target=args.target, username=args.username,
                                   status=args.status, sort=args.sort, reverse=args.reverse, first=args.first,
                                   last=args.last, everything=args.all)


def cmd_list(args: argparse.Namespace) -> int:
    if args.kind in target_commands.LIST_KINDS:
        return target_commands.cmd_list(args)
    if args.kind in storage_commands.LIST_KINDS:
        return storage_commands.cmd_list(args)
    from xt_submit.cli import reports
    from xt_submit.services import run_reports

    cfg = load(args)
    parts = embedded_parts(cfg)
    stats = parts.ports.stats
    if args.kind in ("runs", "jobs"):
        ensure_local_host(parts, only_if_unfinished=True)  # what they show moves on only while a host serves
    ws = cfg.general.workspace
    if args.kind == "experiments":
        return _print_names(stats.experiments(ws), args.json, "no experiments")
    if args.kind == "tags":
        record = _record_of(stats, ws, args.name)
        tags = record["tags"] or {}
        if args.json:
            print_json(tags)
        else:
            print("\n".join(f"{k}={v}" if v else k for k, v in sorted(tags.items())) or "no tags")
        return 0

    if args.kind == "runs":
        report = cfg.run_reports
        rows, notes = run_reports.select_runs(stats, run_query_from_args(args, ws, report), sort_given=bool(args.sort))
        for note in notes:
            print(f"xt: note: {note}", file=sys.stderr)
        defaults = list(report.columns)
        as_json = run_reports.run_json
    else:
        report = cfg.job_reports
        rows = _job_rows(stats, ws, args, report)
        defaults = list(report.columns)
        as_json = run_reports.job_json
    specs = reports.parse_columns(args.columns) if args.columns else reports.parse_columns(",".join(defaults))
    if args.add_columns:
        specs += reports.parse_columns(args.add_columns)
    columns = reports.resolve_columns(specs, rows, kind=args.kind)
    groups = reports.group_rows(rows, args.group) if args.group else [(None, rows)]
    if args.export:
        reports.export(rows, columns, args.export)
    if args.json:
        if args.group:
            print_json([{"group": value, args.kind: [as_json(r) for r in members]} for value, members in groups])
        else:
            print_json([as_json(r) for r in rows])
        return 0
    if not rows:
        print(f"no {args.kind}")
        return 0
    for value, members in groups:
        if args.group:
            print(f"\n{args.group} = {value}")
        print(reports.format_table(members, columns, precision=report.precision,
                                   max_width=getattr(report, "max_width", 30), colour=reports.colour_on(sys.stdout)))
    return 0


def _print_names(names: List[str], as_json: bool, empty: str) -> int:
    print_json(names) if as_json else print("\n".join(names) or empty)
    return 0


def _record_of(stats, workspace: str, name: str) -> Dict[str, Any]:
    if layout.JOB_PATTERN.match(name):
        return stats.get_job(workspace, name)
    return stats.get_run(workspace, check_name("run", name, layout.RUN_PATTERN))


# --- xt view ----------------------------------------------------------------------------------
def cmd_view(args: argparse.Namespace) -> int:
    if args.kind in target_commands.VIEW_KINDS:
        return target_commands.cmd_view(args)
    if args.kind in storage_commands.VIEW_KINDS:
        return storage_commands.cmd_view(args)
    if args.kind == "tensorboard":
        from xt_submit.services import tensorboard_export

        cfg = load(args)
        return tensorboard_export.view_tensorboard(cfg, embedded_parts(cfg).ports.stats, dest=args.dest, port=args.port,
                                                   announce=lambda line: print(line, flush=True),
                                                   **_tensorboard_selection(args))
    from xt_submit.cli import reports
    from xt_submit.services import run_reports

    cfg = load(args)
    parts = embedded_parts(cfg)
    ensure_local_host(parts, only_if_unfinished=True)  # what it shows moves on only while a host serves
    ws = cfg.general.workspace
    stats, storage = parts.ports.stats, parts.ports.storage
    colour = reports.colour_on(sys.stdout)
    if args.kind == "job":
        summary = reports.job_summary(stats, ws, check_name("job", args.name, layout.JOB_PATTERN), time.time())
        if args.json:
            print_json(summary)
        else:
            shown = {**summary, **({"search": reports.search_line(summary["search"])} if "search" in summary else {}),
                     **({"early_stopping": reports.policy_line(summary["early_stopping"])}
                        if "early_stopping" in summary else {})}
            print(reports.format_fields(shown, colour=colour))
        return 0
    if args.kind == "metrics":
        history = run_reports.metric_history(stats, ws, args.names, args.metric or (), storage=storage)
        if args.json:
            print_json(history)
        else:
            print(reports.metrics_table(history))
        return 0
    run = check_name("run", args.name, layout.RUN_PATTERN)
    record = stats.get_run(ws, run)
    if args.kind == "run":
        data = run_reports.run_json(record)
        prefix = layout.output_prefix(ws, run)
        data["outputs"] = [k[len(prefix):] for k in storage.list(prefix)]
        print_json(data) if args.json else print(reports.format_fields(data, colour=colour))
    elif args.kind == "log":
        key = layout.run_log_key(ws, run)
        if not storage.exists(key):  # a run's node opens its log when it starts
            print(f"{run} is {record['status']}: no run log yet", file=sys.stderr)
            return 0
        from xt_submit.domain import run_log

        records = run_log.parse(storage.read(key))
        if args.json:
            print_json(records)
        else:
            for entry in records:
                print(f"{reports.format_time(entry['time'])}  {entry['event']:<10} {reports.compact(entry['data'])}")
    else:
        _stream_console(storage, layout.console_key(ws, run), sys.stdout,
                        head={"run": run, "status": record["status"]} if args.json else None)
    return 0


def _stream_console(storage, key: str, out, head=None) -> None:
    """The console piece by piece, so memory stays bounded whatever its size; with `head`, as
    print_json would print head plus "console" (the text's JSON string written a piece at a time)."""
    import codecs
    import json

    decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character split across pieces stays whole
    pieces = storage.read_chunks(key) if storage.exists(key) else iter(())
    if head is not None:
        out.write("{\n" + "".join(f"  {json.dumps(k)}: {json.dumps(v, default=str)},\n" for k, v in head.items())
                  + '  "console": "')
    for piece in pieces:
        text = decoder.decode(piece)
        out.write(json.dumps(text)[1:-1] if head is not None else text)
    text = decoder.decode(b"", final=True)
    out.write(json.dumps(text)[1:-1] if head is not None else text)
    if head is not None:
        out.write('"\n}\n')


# --- xt plot ----------------------------------------------------------------------------------
def cmd_plot(args: argparse.Namespace) -> int:
    from xt_submit.cli import plotting
    from xt_submit.domain import run_query
    from xt_submit.services import run_reports

    metrics = list(dict.fromkeys(name.strip() for name in args.metric.split(",") if name.strip()))
    if not metrics:
        raise CliError("--metric: expected a metric name (or names, comma separated)")
    cfg = load(args)
    parts = embedded_parts(cfg)
    stats, storage = parts.ports.stats, parts.ports.storage
    ws = cfg.general.workspace
    runs, jobs = run_query.parse_run_list(list(args.names) + ([args.job] if args.job else []))
    if not runs and not jobs:
        raise CliError("xt plot: name runs (run7.1 run7.2, run7.*) or --job JOB")
    if args.aggregate and not args.group_by:
        raise CliError("--aggregate: needs --group-by HPARAM")
    if args.x not in ("step", "time"):
        raise CliError(f"--x: expected step or time, got {args.x!r}")
    if args.out is None:
        args.out = f"plot_{args.job or args.names[0]}_{'_'.join(metrics)}.png".replace("*", "all")
    if not args.out.lower().endswith(".png"):
        raise CliError(f"--out: expected a .png file, got {args.out!r}")
    rows = stats.query_runs(run_query.RunQuery(workspace=ws, runs=runs, jobs=jobs))
    logged = {r["name"]: run_reports.run_metrics(stats, storage, r) for r in rows}
    series = {metric: {name: [m for m in records if m["name"] == metric] for name, records in logged.items()}
              for metric in metrics}
    for metric, by_run in series.items():
        if not any(by_run.values()):
            raise CliError(f"--metric: no run of {' '.join(args.names + ([args.job] if args.job else []))} "
                           f"logged {metric!r}")
    plotted = plotting.plot_metric(rows, series, x=args.x, out=args.out, aggregate=args.aggregate,
                                   group_by=args.group_by, smooth=args.smooth, step_name=cfg.general.step_name)
    print(f"wrote {args.out} ({plotted} lines)")
    return 0


# --- xt report --------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from xt_submit.services import html_report

    cfg = load(args)
    parts = embedded_parts(cfg)
    if args.link:
        if len(args.job) != 1 or args.names or args.experiment:
            raise CliError("--link: expected exactly one --job JOB (a job's page is what storage keeps)")
        job = check_name("job", args.job[0], layout.JOB_PATTERN)
        print(html_report.job_report_link(parts.ports.stats, parts.ports.storage, cfg.general.workspace, job,
                                          args.link_hours))
        return 0
    written = html_report.make_report(
        cfg, parts.ports.stats, parts.ports.storage, args.out, names=args.names, jobs=args.job,
        experiment=args.experiment, status=args.status, filters=args.filter, first=args.first, last=args.last,
        everything=args.all, title=args.title,
        limits=html_report.Limits(max_points=args.max_points, console_bytes=args.console_tail))
    for note in written["notes"]:
        print(f"xt: note: {note}", file=sys.stderr)
    print(f"wrote {written['out']} ({written['runs']} runs, {written['bytes'] / 1024:.0f} KB)")
    return 0


# --- xt export ---------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    if args.kind in storage_commands.EXPORT_KINDS:
        return storage_commands.cmd_export(args)
    from xt_submit.services import tensorboard_export

    cfg = load(args)
    written = tensorboard_export.export_tensorboard(cfg, embedded_parts(cfg).ports.stats, args.dest,
                                                    **_tensorboard_selection(args))
    for note in written["notes"]:
        print(f"xt: note: {note}", file=sys.stderr)
    for run in written["runs"]:
        skipped = f", skipped {run['skipped']} non-numeric values" if run["skipped"] else ""
        print(f"{run['run']}: {run['points']} points in {run['folder']}{skipped}")
    print(f"wrote {len(written['runs'])} runs to {written['dest']}; see them with: tensorboard --logdir {written['dest']}")
    return 0


# --- xt monitor -------------------------------------------------------------------------------
def cmd_monitor(args: argparse.Namespace) -> int:
    from xt_submit.domain import run_query
    from xt_submit.domain.messages import TERMINAL_STATUSES

    cfg = load(args)
    parts = embedded_parts(cfg)
    ws, stats, storage = cfg.general.workspace, parts.ports.stats, parts.ports.storage
    ensure_local_host(parts, only_if_unfinished=True)  # before the first poll: it may show the runs' last lines
    if layout.JOB_PATTERN.match(args.name):
        stats.get_job(ws, args.name)
        query = run_query.RunQuery(workspace=ws, jobs=(args.name,))
    else:
        stats.get_run(ws, check_name("run", args.name, layout.RUN_PATTERN))
        query = run_query.RunQuery(workspace=ws, runs=(args.name,))
    offsets: Dict[str, int] = {}
    try:
        while True:
            runs = stats.query_runs(query)
            for run in runs:
                follow_console(storage, layout.console_key(ws, run["name"]), run["name"], offsets,
                               ended=run["status"] in TERMINAL_STATUSES, out=sys.stdout)
            if all(r["status"] in TERMINAL_STATUSES for r in runs):
                counts: Dict[str, int] = {}
                for r in runs:
                    counts[r["status"]] = counts.get(r["status"], 0) + 1
                print(f"{args.name}: ended ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})")
                return 0
            ensure_local_host(parts)
            time.sleep(args.poll)
    except KeyboardInterrupt:
        print(f"\nstopped following {args.name}; it keeps running", file=sys.stderr)
        return 0


FOLLOW_PIECE_BYTES = 1 << 20


def follow_console(storage, key: str, run: str, offsets: Dict[str, int], *, ended: bool, out) -> None:
    """Print the lines the run's console gained since the last call, read from where that call stopped
    (offsets[run]), never the whole console again. A line still being written waits for its end,
    unless the run has ended (then it is its last line)."""
    start = offsets.get(run, 0)
    read, carry = 0, b""
    for piece in _console_from(storage, key, start):
        read += len(piece)
        data = carry + piece
        cut = data.rfind(b"\n") + 1
        for line in data[:cut].decode("utf-8", "replace").splitlines():
            out.write(f"[{run}] {line}\n")
        carry = data[cut:]
        if len(carry) > FOLLOW_PIECE_BYTES:  # a line without end (a progress bar's \r): shown in pieces
            out.write(f"[{run}] {carry.decode('utf-8', 'replace')}\n")
            carry = b""
    if ended and carry:
        out.write(f"[{run}] {carry.decode('utf-8', 'replace')}\n")
        carry = b""
    out.flush()
    offsets[run] = start + read - len(carry)


def _console_from(storage, key: str, offset: int):
    """The key's bytes from `offset` on, in pieces: a seek where storage is a folder on this machine;
    elsewhere the pieces before it are passed over (the Storage port has no ranged read)."""
    path = storage.local_path(key)
    if path is not None:
        try:
            console = open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return
        with console:
            console.seek(offset)
            while piece := console.read(FOLLOW_PIECE_BYTES):
                yield piece
        return
    if not storage.exists(key):
        return
    passed = 0
    for piece in storage.read_chunks(key):
        if passed + len(piece) > offset:
            yield piece[max(0, offset - passed):]
        passed += len(piece)


# --- xt download ------------------------------------------------------------------------------
def cmd_download(args: argparse.Namespace) -> int:
    from xt_submit.node_kit import code_archive
    from xt_submit.domain.messages import decode_manifest

    args.local = args.local or args.dest
    if not args.code and not layout.RUN_PATTERN.match(args.name):
        return storage_commands.download_path(args)  # a path: one blob, or a folder of them
    cfg = load(args)
    parts = embedded_parts(cfg)
    ws, stats, storage = cfg.general.workspace, parts.ports.stats, parts.ports.storage
    dest = Path(args.local)
    if args.code:
        job = check_name("job", args.name, layout.JOB_PATTERN)
        stats.get_job(ws, job)
        manifest = decode_manifest(storage.read(layout.manifest_key(ws, job)))
        target = dest / f"{job}_code"
        zip_path = dest / f".{job}_code.zip"
        storage.download_file(manifest.code_key, str(zip_path))
        try:
            files = code_archive.safe_extract(str(zip_path), str(target), source=manifest.code_key)
        finally:
            zip_path.unlink()
        print(f"{job}: {files} files of code in {target}")
        return 0
    run = check_name("run", args.name, layout.RUN_PATTERN)
    stats.get_run(ws, run)
    prefix = layout.live_prefix(ws, run) if args.live else layout.output_prefix(ws, run)
    keys = storage.list(prefix)
    for key in keys:
        storage.download_file(key, str(storage_commands.inside(dest / run, key[len(prefix):], key)))
    print(f"{run}: {len(keys)} {'live' if args.live else 'output'} files in {dest / run}")
    return 0


# --- xt set / clear tags ----------------------------------------------------------------------
def cmd_tags(args: argparse.Namespace) -> int:
    from xt_submit.handlers.tags import change_tags

    if args.what == "credentials":
        from xt_submit.bootstrap import clear_cached_secrets

        print("cleared the cached secrets" if clear_cached_secrets() else "no cached secrets")
        return 0
    if not args.name or not args.tags:
        raise CliError(f"xt {args.command} tags: expected a run or a job, then tag names")
    cfg = load(args)
    parts = embedded_parts(cfg)
    ws = cfg.general.workspace
    if not (layout.JOB_PATTERN.match(args.name) or layout.RUN_PATTERN.match(args.name)):
        raise CliError(f"{args.name!r}: expected a run (run7.2) or a job (job7)")
    items = layout.parse_tags(args.tags, "tags")
    if args.command == "set":
        tags = change_tags(parts.ports, ws, args.name, items, [])
    else:
        tags = change_tags(parts.ports, ws, args.name, {}, list(items))
    print(f"{args.name}: " + (", ".join(f"{k}={v}" if v else k for k, v in sorted(tags.items())) or "no tags"))
    return 0


COMMANDS = {"list": cmd_list, "view": cmd_view, "plot": cmd_plot, "monitor": cmd_monitor, "download": cmd_download,
            "set": cmd_tags, "clear": cmd_tags, "report": cmd_report, "export": cmd_export}
