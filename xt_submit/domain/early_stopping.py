"""Early-stopping policies (XT's `early-stopping:` section, Azure ML's semantics), as pure decisions.

A run's *reports* are the times it logs the job's primary metric; report i is checked when
i > delay_evaluation and i is a multiple of evaluation_interval. At a checked report the run is
compared with the job's other runs at the same report (those that got that far):

- bandit: stop when it is worse than the best run there by more than the slack (slack_amount when
  set, else slack_factor as a ratio: best / (1 + f) when maximizing, best * (1 + f) when minimizing);
- median: stop when its best value so far is worse than the median of the others' running means;
- truncation: stop when it is in the lowest truncation_percentage percent of all runs there
  (floor: with fewer than 100 / percentage runs there, none is).
"""
from __future__ import annotations

import math
import statistics
from typing import Dict, List, Mapping, Optional, Sequence

# A report as the run record keeps it: [value, running mean, best so far] (None: not a finite number).
Report = Sequence[Optional[float]]
MAX_KEPT_REPORTS = 10_000  # checked reports kept per run (the oldest go first); a run's record stays bounded


def is_checked(policy: Mapping, report: int) -> bool:
    return report > policy["delay_evaluation"] and report % policy["evaluation_interval"] == 0


def keep_checked(policy: Mapping, first_report: int, reports: Sequence[Report]) -> Dict[str, List]:
    """The checked ones of consecutive reports numbered from first_report, keyed by their number."""
    return {str(first_report + offset): list(report) for offset, report in enumerate(reports)
            if is_checked(policy, first_report + offset)}


def merged(kept: Mapping[str, List], new: Mapping[str, List]) -> Dict[str, List]:
    """Kept plus new checked reports, at most MAX_KEPT_REPORTS (the latest win)."""
    together = {**kept, **new}
    if len(together) <= MAX_KEPT_REPORTS:
        return together
    latest = sorted(together, key=int)[-MAX_KEPT_REPORTS:]
    return {key: together[key] for key in latest}


def decide(policy: Mapping, *, maximize: bool, metric: str, report: int, own: Report,
           others: Sequence[Report]) -> Optional[str]:
    """Why the run should stop at this report, or None to let it go on."""
    value, _, best_so_far = own
    if value is None:
        return None  # nothing to compare (a NaN logged): a policy stops on evidence only
    kind = policy["policy"]
    if kind == "bandit":
        return _bandit(policy, maximize, metric, report, value, [o[0] for o in others if o[0] is not None])
    if kind == "median":
        return _median(maximize, metric, report, best_so_far if best_so_far is not None else value,
                       [o[1] for o in others if o[1] is not None])
    if kind == "truncation":
        return _truncation(policy, maximize, metric, report, value, [o[0] for o in others if o[0] is not None])
    return None


def _worse(a: float, b: float, maximize: bool) -> bool:
    return a < b if maximize else a > b


def _bandit(policy: Mapping, maximize: bool, metric: str, report: int, value: float,
            others: List[float]) -> Optional[str]:
    if not others:
        return None
    best = max(others + [value]) if maximize else min(others + [value])
    amount, factor = policy["slack_amount"], policy["slack_factor"]
    if amount > 0:
        limit, slack = (best - amount, f"slack_amount {amount:g}") if maximize else (best + amount, f"slack_amount {amount:g}")
    else:
        limit = best / (1 + factor) if maximize else best * (1 + factor)
        slack = f"slack_factor {factor:g}"
    if _worse(value, limit, maximize) and math.isfinite(limit):
        return (f"early-stopped by the bandit policy at report {report}: {metric} {value:.6g} is outside "
                f"the {slack} of the best run's {best:.6g} (limit {limit:.6g})")
    return None


def _median(maximize: bool, metric: str, report: int, best_so_far: float, others_means: List[float]) -> Optional[str]:
    if not others_means:
        return None
    median = statistics.median(others_means)
    if _worse(best_so_far, median, maximize):
        return (f"early-stopped by the median policy at report {report}: best {metric} so far {best_so_far:.6g} is "
                f"worse than the median {median:.6g} of {len(others_means)} other runs' running means")
    return None


def _truncation(policy: Mapping, maximize: bool, metric: str, report: int, value: float,
                others: List[float]) -> Optional[str]:
    count = len(others) + 1
    cut = count * policy["truncation_percentage"] // 100
    if cut < 1:
        return None
    # 1: the worst run there; runs tied with it count as below it, so a tie never stops a run
    rank_from_bottom = 1 + sum(1 for other in others if not _worse(value, other, maximize))
    if rank_from_bottom <= cut:
        return (f"early-stopped by the truncation policy at report {report}: {metric} {value:.6g} is among the "
                f"lowest {policy['truncation_percentage']}% of {count} runs there")
    return None
