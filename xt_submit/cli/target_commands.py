"""`xt list targets`, `xt list boxes` and `xt view status TARGET`: where runs can go, and how busy it is.

A box's state is as the local host last found it (it is the one that connects); a Batch target's
comes from the Batch service.
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List

from xt_submit.cli.common import CliError, embedded_parts, load, print_json

LIST_KINDS = ("targets", "boxes")
VIEW_KINDS = ("status",)


def add_list_kinds(kinds) -> None:
    for kind in LIST_KINDS:
        sub = kinds.add_parser(kind)
        sub.add_argument("--json", action="store_true")
        if kind == "boxes":
            sub.add_argument("--check", action="store_true", help="connect to each box now (host key, key, python3)")


def add_view_kinds(kinds) -> None:
    sub = kinds.add_parser("status")
    sub.add_argument("target", nargs="?", help="a compute-targets name (default: xt-services.target)")
    sub.add_argument("--json", action="store_true")


def _table(headers: List[str], rows: List[list]) -> str:
    cells = [headers] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def _box_state(health: Dict[str, dict], box: str) -> str:
    seen = health.get(box)
    if seen is None:
        return "not contacted yet"
    ago = f"{time.time() - seen['checked_at']:.0f}s ago"
    return f"reachable ({ago})" if seen["reachable"] else f"unreachable ({ago}): {seen['error']}"


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
    cfg = load(args)
    if args.kind == "targets":
        rows = []
        for name, target in cfg.compute_targets.items():
            if target.service == "pool":
                where = "boxes: " + (", ".join(target.boxes) if target.boxes else "all (" + ", ".join(cfg.boxes) + ")")
            elif target.service == "batch":
                where = f"{target.vm_size or '?'} x {target.nodes or '?'}{' low-pri' if target.low_pri else ''}"
            else:
                where = "this machine"
            rows.append({"name": name, "service": target.service, "where": where, "concurrent": target.concurrent,
                         "setup": target.setup, "default": name == cfg.xt_services.target})
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
             "state": _check_box(parts.home, name, box) if args.check else _box_state(health, name)}
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
    cfg = load(args)
    name = args.target or cfg.xt_services.target
    if name not in cfg.compute_targets:
        raise CliError(f"target: expected a compute-targets name ({', '.join(sorted(cfg.compute_targets))}), got {name!r}")
    target = cfg.compute_targets[name]
    if target.service == "batch":
        from xt_submit.bootstrap import batch_compute_for, from_config, signed_in

        signed = signed_in(cfg)  # one sign-in for the team's storage and for Batch
        status = batch_compute_for(cfg, name, from_config(cfg, signed).ports.storage, signed).status()
        print_json(status) if args.json else print("\n".join(f"{k}: {v}" for k, v in status.items()))
        return 0
    compute = embedded_parts(cfg).compute
    counts = compute.counts_by_state(None if target.service == "local" else name)
    summary = {"target": name, "service": target.service, "queued": counts.get("queued", 0),
               "running": counts.get("launching", 0) + counts.get("launched", 0)}
    if target.service == "pool":
        health, busy = compute.box_health(), compute.runs_per_node()
        summary["boxes"] = [{"box": box, "max_runs": cfg.boxes[box].max_runs, "running": busy.get(box, 0),
                             "free": max(0, cfg.boxes[box].max_runs - busy.get(box, 0)), "state": _box_state(health, box)}
                            for box in target.boxes or list(cfg.boxes) if box in cfg.boxes]
    if args.json:
        print_json(summary)
        return 0
    print(f"{name} ({target.service}): {summary['running']} running, {summary['queued']} queued")
    if target.service == "pool":
        print(_table(["box", "max-runs", "running", "free", "state"],
                     [[b["box"], b["max_runs"], b["running"], b["free"], b["state"]] for b in summary["boxes"]]))
    return 0
