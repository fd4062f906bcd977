"""A report's columns, resolved against what the runs have: a bare name (`lr`, `loss`) is the run
field, else the hparam, else the metric (XT's rule), and a column no run has is an error, not an
empty report. Notes say which was taken when a bare name is both an hparam and a metric."""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

from xt_submit.domain.run_query import QueryError, RunQuery, SortKey
from xt_submit.ports import StatsStore


def resolve(stats: StatsStore, query: RunQuery, *, checked_sort: bool = True) -> Tuple[RunQuery, List[str]]:
    """The query with every bare name given its group, and the notes to show. checked_sort: the sort
    came from the command line (a config's default sort is taken as it is, even where no run has it)."""
    notes: List[str] = []
    filters = tuple(_resolved(stats, query.workspace, "--filter", flt, flt.op != "exists", notes)
                    for flt in query.filters)
    sort: Optional[SortKey] = query.sort
    if sort is not None and checked_sort:
        sort = _resolved(stats, query.workspace, "--sort", sort, True, notes)
    return dataclasses.replace(query, filters=filters, sort=sort), notes


def _resolved(stats: StatsStore, workspace: str, option: str, item, must_exist: bool, notes: List[str]):
    """item: a Filter or a SortKey."""
    if item.group is None:
        return item  # a run field: always there
    if not item.bare:
        if must_exist and not stats.has_key(workspace, item.group, item.name):
            raise QueryError(f"{option}: unknown column '{item.group}.{item.name}' (no run has it)")
        return item
    in_hparams = stats.has_key(workspace, "hparams", item.name)
    in_metrics = stats.has_key(workspace, "metrics", item.name)
    if in_hparams and in_metrics:
        notes.append(f"{option} {item.name}: runs have both hparams.{item.name} and metrics.{item.name}; "
                     f"using hparams.{item.name} (write metrics.{item.name} for the metric)")
    if in_hparams:
        return dataclasses.replace(item, group="hparams", bare=False)
    if in_metrics or not must_exist:
        return dataclasses.replace(item, group="metrics", bare=False)
    raise QueryError(f"{option}: unknown column '{item.name}' (no run has a field, hparam or metric of that name)")

