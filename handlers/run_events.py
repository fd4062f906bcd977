"""RunStarted and RunFinished: move the run forward, collect its record, roll the job."""
from __future__ import annotations

from xt_submit import layout, run_log
from xt_submit.messages import ERROR, QUEUED, RUNNING, RunFinished, RunHeartbeat, RunStarted
from xt_submit.ports import NotFound, Ports

from handlers.jobs import end_run, roll_job, write_run_stats


def run_started(event: RunStarted, ports: Ports) -> bool:
    """Queued -> running. A start that arrives after the finish changes nothing."""
    moved = ports.stats.update_run(event.workspace, event.run,
                                   {"status": RUNNING, "started": event.started_at, "node_id": event.node_id},
                                   only_if_status_in=[QUEUED])
    roll_job(ports, event.workspace, event.job)
    return moved


def run_finished(event: RunFinished, ports: Ports) -> dict:
    """The node's report is authoritative: whatever came before, the run ends as it says."""
    ws, run = event.workspace, event.run
    try:
        blob = ports.storage.read(layout.run_log_key(ws, run))
    except NotFound:
        blob = b""
    hparams, logged_metrics, metric_rows = run_log.summarize(run_log.iter_records(blob))
    del blob
    last_metrics = {**event.metrics, **logged_metrics}  # the stored log wins; the event covers a lost upload
    ports.stats.replace_metrics(ws, run, metric_rows)

    changes = {"status": event.status, "exit_code": event.exit_code, "node_id": event.node_id,
               "started": event.started_at, "ended": event.ended_at, "heartbeat": None,
               "duration": round(max(0.0, event.ended_at - event.started_at), 3), "reason": event.reason,
               "metrics": last_metrics}
    if hparams:
        changes["hparams"] = hparams
    ports.stats.update_run(ws, run, changes)
    outputs = [key[len(layout.output_prefix(ws, run)):] for key in ports.storage.list(layout.output_prefix(ws, run))]
    write_run_stats(ports, ports.stats.get_run(ws, run), outputs)
    roll_job(ports, ws, event.job)
    return changes


def run_heartbeat(event: RunHeartbeat, ports: Ports) -> bool:
    """Note a running run's sign of life (ignored once it has ended)."""
    return ports.stats.update_run(event.workspace, event.run, {"heartbeat": event.at}, only_if_status_in=[RUNNING])


def mark_silent_runs(now: float, timeout: float, ports: Ports) -> list:
    """The timer's job: a running run whose node has said nothing for `timeout` seconds ends as an
    error. If its node comes back and reports RunFinished, that report still wins."""
    marked = []
    for run in ports.stats.silent_runs(now - timeout):
        reason = f"node {run['node_id'] or '?'} stopped sending heartbeats (none for {timeout:g}s)"
        if end_run(ports, run["workspace"], run["name"], {"status": ERROR, "ended": now, "reason": reason,
                                                          "heartbeat": None}):
            roll_job(ports, run["workspace"], run["job"])
            marked.append(run["name"])
    return marked
