"""RunStarted, RunProgress, RunFinished, RunHeartbeat and RunPreempted: move the run, collect its record, roll
the job."""
from __future__ import annotations

from typing import Any, Dict

import msgspec

from xt_submit.domain import early_stopping, layout, records, run_log
from xt_submit.domain.messages import (CANCELLED, ERROR, PREEMPTED, RUNNING, STOPPED, TERMINAL_STATUSES, RunFinished,
                                       RunHeartbeat, RunPreempted, RunProgress, RunStarted, storable)
from xt_submit.handlers.jobs import end_run, roll_job, write_run_stats
from xt_submit.handlers.retries import retry_if_failed
from xt_submit.ports import NotFound, Ports

# A stopped run's node reports every few seconds until it ends; compute is asked again only this
# long after the last ask (by the reports' own clock), not on every report: a Batch terminate each.
STOP_RESEND_SECONDS = 60.0


def run_started(event: RunStarted, ports: Ports) -> bool:
    """Queued (or preempted and requeued) -> running. A start that arrives after the finish changes nothing."""
    moved = ports.stats.update_run(event.workspace, event.run,
                                   {"status": RUNNING, "started": event.started_at, "node_id": event.node_id},
                                   only_if_status_in=records.may_become(RUNNING))
    roll_job(ports, event.workspace, event.job, moved=moved)
    return moved


def run_finished(event: RunFinished, ports: Ports) -> dict:
    """The node's report is authoritative: whatever came before, the run ends as it says."""
    ws, run = event.workspace, event.run
    summary = ingest_run_log(ports, ws, run)
    hparams, logged_metrics = summary.hparams, summary.last_metrics
    # the stored log wins; the event (or, past its budget, the file it names) covers a lost upload
    last_metrics = {**storable(event.metrics), **_referenced_metrics(event, ports), **logged_metrics}

    status, reason = event.status, event.reason
    before = ports.stats.get_run(ws, run)
    if status == CANCELLED and before.get("stopping"):  # the cancel was the early-stopping policy's
        status, reason = STOPPED, before["stopping"]
    # its checked reports stay for the runs still compared with it; the live bookkeeping ends with it
    progress = {"reports": before["progress"]["reports"]} if (before.get("progress") or {}).get("reports") else {}
    changes = {"status": status, "exit_code": event.exit_code, "node_id": event.node_id,
               "started": event.started_at, "ended": event.ended_at, "heartbeat": None,
               "duration": round(max(0.0, event.ended_at - event.started_at), 3), "reason": reason,
               "metrics": last_metrics, "progress": progress}
    if hparams:
        changes["hparams"] = hparams
    ports.stats.update_run(ws, run, changes)
    outputs = [key[len(layout.output_prefix(ws, run)):] for key in ports.storage.list(layout.output_prefix(ws, run))]
    record = ports.stats.get_run(ws, run)
    write_run_stats(ports, record, outputs)
    retry_if_failed(ports, record)
    # the same status again (a redelivery, perhaps after a crash before the job counted it): recounted
    roll_job(ports, ws, event.job, moved=before["status"] != status)
    return changes


def ingest_run_log(ports: Ports, ws: str, run: str) -> run_log.LogSummary:
    """The run's stored log into the index's metric history; the summary has its hparams and last metrics.
    Streamed: the log is read, parsed and written in pieces, never whole in memory."""
    try:
        chunks = ports.storage.read_chunks(layout.run_log_key(ws, run))
    except NotFound:
        chunks = iter(())
    summary = run_log.LogSummary(run_log.iter_records_from_chunks(chunks))
    ports.stats.replace_metrics(ws, run, summary.metric_rows())
    return summary


def _referenced_metrics(event: RunFinished, ports: Ports) -> dict:
    """The last metrics a node stored beside the run because they were more than its message carries
    (a key outside the run's own folder, a file gone or unreadable: none, the run log still has them)."""
    if not event.metrics_key.startswith(layout.run_prefix(event.workspace, event.run)):
        return {}
    try:
        metrics = msgspec.json.decode(ports.storage.read(event.metrics_key))
    except (NotFound, msgspec.DecodeError):
        return {}
    return storable(metrics) if isinstance(metrics, dict) else {}


def run_progress(event: RunProgress, ports: Ports) -> str:
    """A live run's latest metrics into its record (so lists, filters and reports see them while it
    runs), then the job's early-stopping policy on its new reports. Returns why the run was
    stopped ('' when it goes on). A report older than the one recorded, or one after the run ended,
    changes no metrics; a repeated one makes the same decision, and a stop is asked for once.
    A report the policy checks is compared with the job's other runs: one listing of them."""
    ws, run = event.workspace, event.run
    record = ports.stats.get_run(ws, run)
    if record.get("stopping"):
        _finish_stop(ports, event, record)
        return ""
    if not records.is_live(record["status"]):
        return ""
    progress = dict(record.get("progress") or {})
    changes: Dict[str, Any] = {}
    if event.log_bytes > progress.get("log_bytes", -1):
        changes["metrics"] = {**(record.get("metrics") or {}), **storable(event.metrics)}
        progress.update(log_bytes=event.log_bytes, at=event.at)
    job = ports.stats.get_job(ws, event.job, hp_space=False) if event.primary else None
    policy = job.get("early_stopping") if job else None
    checked = early_stopping.keep_checked(policy, event.first_report, event.primary) if policy else {}
    if checked:
        progress["reports"] = early_stopping.merged(progress.get("reports") or {}, checked)
    changes["progress"] = progress
    ports.stats.update_run(ws, run, changes, only_if_status_in=records.LIVE_STATUSES)
    if not checked or not policy or job is None:
        return ""
    others = [(r.get("progress") or {}).get("reports") or {} for r in ports.stats.list_runs(ws, job=event.job)
              if r["name"] != run]
    for report in sorted(checked, key=int):
        reason = early_stopping.decide(policy, maximize=bool(job["maximize_metric"]), metric=job["primary_metric"],
                                       report=int(report), own=checked[report],
                                       others=[kept[report] for kept in others if report in kept])
        if reason:
            _stop_early(ports, event, reason)
            return reason
    return ""


def _stop_early(ports: Ports, event: RunProgress, reason: str) -> None:
    """Storage first (the reason in the run's log), then the index, then compute. The run ends as
    stopped here, as a cancel ends a run: its node may never report, since Batch's terminate kills a
    task without a signal it documents. A node that does report (local, pools: the wrapper stops the
    run as for a cancel) still has the last word, and run_finished keeps it stopped (`stopping`)."""
    ws, run = event.workspace, event.run
    ports.storage.append(layout.run_log_key(ws, run), run_log.record(event.at, "early_stopped", {"reason": reason}))
    if ports.stats.update_run(ws, run, {"stopping": reason}, only_if_status_in=records.LIVE_STATUSES):
        _finish_stop(ports, event, ports.stats.get_run(ws, run))


def _finish_stop(ports: Ports, event: RunProgress, record: Dict[str, Any]) -> None:
    """The rest of a stop once `stopping` is recorded; a redelivery after a crash part-way does what
    was left. A later report of the stopped run asks compute again (idempotent) once
    STOP_RESEND_SECONDS have passed since the last ask, which the run's `progress` keeps (`stop_sent`)."""
    ws, run = event.workspace, event.run
    if records.is_live(record["status"]):
        ingest_run_log(ports, ws, run)  # its metric history, which a node killed outright never sends
        if end_run(ports, ws, run, {"status": STOPPED, "ended": event.at, "reason": record["stopping"],
                                    "heartbeat": None}):
            roll_job(ports, ws, event.job, moved=True)
    if record["exit_code"] is not None:  # its node has reported: nothing to stop
        return
    progress = record.get("progress") or {}
    sent = progress.get("stop_sent")
    if sent is not None and event.at - sent < STOP_RESEND_SECONDS:
        return
    ports.compute.cancel(ws, [run])
    # after the ask: a crash in between asks again on the redelivery rather than never
    ports.stats.update_run(ws, run, {"progress": {**progress, "stop_sent": event.at}})


def run_heartbeat(event: RunHeartbeat, ports: Ports) -> bool:
    """Note a running run's sign of life (ignored once it has ended)."""
    return ports.stats.update_run(event.workspace, event.run, {"heartbeat": event.at},
                                  only_if_status_in=[RUNNING])  # a sign of life, not a move


def run_preempted(event: RunPreempted, ports: Ports) -> bool:
    """A preempted run waits to run again; past its retries it ends as an error (compute has already
    stopped requeueing it). Ignored once the run ended, or when it started again after this requeue
    (a late or repeated report). Returns True if the run changed."""
    ws, run = event.workspace, event.run
    record = ports.stats.get_run(ws, run)
    if record["status"] in TERMINAL_STATUSES or (record["started"] or 0) > event.requeued_at:
        if record["status"] in TERMINAL_STATUSES and record["ended"] == event.requeued_at:
            roll_job(ports, ws, event.job)  # this report ended it, then crashed: the recount repairs the job
        return False
    node = event.node_id or "?"
    if event.preemptions > event.retries:
        reason = (f"node {node} preempted: {event.preemptions} preemptions, more than "
                  f"preemption-retries ({event.retries})")
        ended = end_run(ports, ws, run, {"status": ERROR, "ended": event.requeued_at, "reason": reason,
                                         "heartbeat": None})
        if ended:
            roll_job(ports, ws, event.job, moved=True)
        return ended
    reason = f"node {node} preempted: requeued ({event.preemptions} of {event.retries} preemption-retries)"
    if record["status"] == PREEMPTED and record["reason"] == reason:
        return False  # the periodic check repeats itself while the run waits for a node
    moved = ports.stats.update_run(ws, run, {"status": PREEMPTED, "reason": reason, "heartbeat": None},
                                   only_if_status_in=records.may_become(PREEMPTED))
    roll_job(ports, ws, event.job, moved=moved)
    return moved


def mark_silent_runs(now: float, timeout: float, ports: Ports) -> list:
    """The timer's job: a running run whose node has said nothing for `timeout` seconds ends as an
    error. If its node comes back and reports RunFinished, that report still wins."""
    marked = []
    for run in ports.stats.silent_runs(now - timeout):
        reason = f"node {run['node_id'] or '?'} stopped sending heartbeats (none for {timeout:g}s)"
        if end_run(ports, run["workspace"], run["name"], {"status": ERROR, "ended": now, "reason": reason,
                                                          "heartbeat": None}):
            roll_job(ports, run["workspace"], run["job"], moved=True)
            marked.append(run["name"])
    return marked
