"""A live run's RunProgress: what its run log gained since the last one, sent at most every
PROGRESS_SECONDS while something new was logged (the wrapper feeds it what it ships)."""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional

from xt_submit.domain import run_log
from xt_submit.domain.messages import PROGRESS_MAX_REPORTS, PROGRESS_METRICS_BYTES, RunProgress, RunTask, encode

PROGRESS_SECONDS = float(os.environ.get("XT_PROGRESS_SECONDS", "5"))


class ProgressReporter:
    """`counters` (reports of the primary metric so far, their finite sum and count, the best) belong
    in the wrapper's saved state beside the log offset, so a resumed supervisor numbers reports on."""

    def __init__(self, task: RunTask, counters: Dict[str, Any]) -> None:
        self.task = task
        self.counters = counters
        counters.setdefault("reports", 0)
        counters.setdefault("total", 0.0)
        counters.setdefault("finite", 0)
        counters.setdefault("best", None)
        self.latest: Dict[str, Any] = {}
        self.pending: List[List[Optional[float]]] = []  # reports not yet sent
        self.fresh = False
        self.last_sent = -math.inf

    def observe(self, shipped: bytes) -> None:
        """Whole run-log lines just shipped to storage."""
        summary = run_log.LogSummary(run_log.iter_records(shipped))
        primary = self.task.primary_metric
        for row in summary.metric_rows():
            if primary and row.name == primary:
                self._report(row.value)
        if summary.last_metrics:
            self.latest.update(summary.last_metrics)
            self.fresh = True

    def due(self, now: float) -> bool:
        return self.fresh and now - self.last_sent >= PROGRESS_SECONDS

    def message(self, node_id: str, log_bytes: int, *, now: float, at: float) -> RunProgress:
        """The RunProgress to send now (`now` on the clock `due` is asked with; `at` the wall clock),
        and the reporter starts gathering the next."""
        task = self.task
        metrics = self.latest
        if len(encode(metrics)) > PROGRESS_METRICS_BYTES:  # a run that logs thousands of names: its primary one
            metrics = {name: self.latest[name] for name in (task.primary_metric,) if name in self.latest}
        reports = self.pending[-PROGRESS_MAX_REPORTS:]
        first = self.counters["reports"] - len(reports) + 1
        self.pending, self.fresh, self.last_sent = [], False, now
        return RunProgress(workspace=task.workspace, job=task.job, run=task.run, node_id=node_id, at=at,
                           log_bytes=log_bytes, metrics=metrics, first_report=first, primary=reports)

    def _report(self, value: Any) -> None:
        counters = self.counters
        counters["reports"] += 1
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
        if math.isfinite(number):
            counters["total"] += number
            counters["finite"] += 1
            best = counters["best"]
            better = max if self.task.maximize_metric else min
            counters["best"] = number if best is None else better(best, number)
            shown: Optional[float] = number
        else:
            shown = None
        mean = counters["total"] / counters["finite"] if counters["finite"] else None
        self.pending.append([shown, mean, counters["best"]])
