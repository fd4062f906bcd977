"""`xt list targets`, `xt list boxes` and `xt view status TARGET`: where runs can go, and how busy it is.

A box's state is as the local host last found it (it is the one that connects); a Batch target's
comes from the Batch service.
"""
from __future__ import annotations

import argparse
from typing import List

from xt_submit.cli.common import CliError, embedded_parts, load, print_json

LIST_KINDS = ("targets", "boxes")
VIEW_KINDS = ("status",)


def add_list_kinds(kinds) -> None:
    for kind in LIST_KINDS:
        sub = kinds.add_parser(kind, help="the compute targets of the config (* marks the default)" if kind == "targets"
                               else "the SSH boxes of the config and their state")
        sub.add_argument("--json", action="store_true")
        if kind == "boxes":
            sub.add_argument("--check", action="store_true", help="connect to each box now (host key, key, python3)")


def add_view_kinds(kinds) -> None:
    sub = kinds.add_parser("status", help="how busy a compute target is: runs running and queued (per box)")
    sub.add_argument("target", nargs="?", help="a compute-targets name (default: xt-services.target)")
    sub.add_argument("--json", action="store_true")


def _table(headers: List[str], rows: List[list]) -> str:
    cells = [headers] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def _check_box(home, name: str, box) -> str:
    """Connect now, as the host would (verified host key, no prompt), and say how it went."""
    from xt_submit.bootstrap import box_node
    from xt_submit.domain.boxes import BoxError

    node = box_node(home, name, box)
    try:
        return f"reachable ({node.probe()})"
    except BoxError as exc:
        return f"unreachable: {exc}"
    finally:
        node.close()


def cmd_list(args: argparse.Namespace) -> int:
    from xt_submit.services import targets  # here, not at the top: it loads the config schema
    from xt_submit.services.targets.pool import box_state

    cfg = load(args)
    if args.kind == "targets":
        rows = [{"name": name, "service": target.service, "where": targets.KINDS[target.service].where(cfg, name),
                 "concurrent": target.concurrent, "setup": target.setup, "default": name == cfg.xt_services.target}
                for name, target in cfg.compute_targets.items()]
        if args.json:
            print_json(rows)
        else:
            print(_table(["target", "service", "where", "concurrent", "setup", "default"],
                         [[r["name"], r["service"], r["where"], r["concurrent"], r["setup"] or "-", "*" if r["default"] else ""]
                          for r in rows]))
        return 0
    parts = embedded_parts(cfg)
    compute = parts.compute
    health, busy = compute.box_health(), compute.runs_per_node()
    rows = [{"name": name, "address": box.address, "max_runs": box.max_runs, "running": busy.get(name, 0),
             "setup": box.setup, "key": box.key, "host_key": "explicit" if box.host_key else "known_hosts",
             "state": _check_box(parts.home, name, box) if args.check else box_state(health, name)}
            for name, box in cfg.boxes.items()]
    if args.json:
        print_json(rows)
    elif not rows:
        print("no boxes (add them under `boxes` in xt_config.yaml)")
    else:
        print(_table(["box", "address", "max-runs", "running", "setup", "host key", "state"],
                     [[r["name"], r["address"], r["max_runs"], r["running"], r["setup"] or "-", r["host_key"], r["state"]]
                      for r in rows]))
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from xt_submit.services import targets

    cfg = load(args)
    name = args.target or cfg.xt_services.target
    if name not in cfg.compute_targets:
        raise CliError(f"target: expected a compute-targets name ({', '.join(sorted(cfg.compute_targets))}), got {name!r}")
    if not targets.kind_of(cfg, name).runs_here:  # the service itself knows how busy it is
        from xt_submit.bootstrap import remote_target_status

        status = remote_target_status(cfg, name)
        if args.json:
            print_json(status)
        else:
            from xt_submit.cli.reports import format_fields  # mappings as name=value, never Python's dicts

            print(format_fields(status))
        return 0
    summary = targets.status(cfg, name, embedded_parts(cfg).compute)
    if args.json:
        print_json(summary)
        return 0
    print(f"{name} ({summary['service']}): {summary['running']} running, {summary['queued']} queued")
    if "boxes" in summary:
        print(_table(["box", "max-runs", "running", "free", "state"],
                     [[b["box"], b["max_runs"], b["running"], b["free"], b["state"]] for b in summary["boxes"]]))
    return 0
