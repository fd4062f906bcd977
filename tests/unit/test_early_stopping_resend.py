"""A run the early-stopping policy stopped keeps reporting until its node ends it: compute is asked
to stop it once, then again only after the resend grace period, not on every report."""

from support.job_steps import WS, finish, progress, submit
from xt_submit import handlers
from xt_submit.domain.messages import CANCELLED, STOPPED, EarlyStopping, RunStarted
from xt_submit.handlers.run_events import STOP_RESEND_SECONDS


def counting_cancels(parts):
    """The real task table's cancel, counting the asks per run."""
    asked = []
    cancel = parts.ports.compute.cancel

    def counted(workspace, runs):
        asked.extend(runs)
        return cancel(workspace, runs)

    parts.ports.compute.cancel = counted
    return asked


def test_a_stopped_run_is_cancelled_once_per_grace_period_until_its_node_reports(parts):
    policy = EarlyStopping(policy="median", delay_evaluation=1, evaluation_interval=1)
    submit(parts, hp_space={"x": [1, 2, 3]}, concurrent=3, early_stopping=policy)
    for run in ("run1.1", "run1.2", "run1.3"):
        handlers.run_started(RunStarted(workspace=WS, job="job1", run=run, node_id="n1", started_at=150.0),
                             parts.ports)
    handlers.run_progress(progress("run1.1", [0.5, 0.3, 0.2], log_bytes=100, at=160.0), parts.ports)
    handlers.run_progress(progress("run1.2", [0.5, 0.35, 0.25], log_bytes=100, at=160.0), parts.ports)
    asked = counting_cancels(parts)
    assert handlers.run_progress(progress("run1.3", [0.9, 0.8, 0.8], log_bytes=100, at=160.0), parts.ports)
    assert asked == ["run1.3"]
    assert parts.ports.stats.get_run(WS, "run1.3")["status"] == STOPPED

    # a report every 5 s while the node has not ended it: no new ask within the grace period
    at, log_bytes = 160.0, 100
    while at + 5 < 160.0 + STOP_RESEND_SECONDS:
        at, log_bytes = at + 5, log_bytes + 10
        handlers.run_progress(progress("run1.3", [0.9, 0.8, 0.8, 0.8], log_bytes=log_bytes, at=at), parts.ports)
    assert asked == ["run1.3"]
    handlers.run_progress(progress("run1.3", [0.9, 0.8, 0.8, 0.8], log_bytes=log_bytes + 10, at=160.0 + STOP_RESEND_SECONDS),
                          parts.ports)
    assert asked == ["run1.3"] * 2  # the grace period passed: asked again (the first ask may have been lost)
    handlers.run_progress(progress("run1.3", [0.9, 0.8, 0.8, 0.8], log_bytes=log_bytes + 20, at=165.0 + STOP_RESEND_SECONDS),
                          parts.ports)
    handlers.run_progress(progress("run1.3", [0.9, 0.8], log_bytes=50, at=150.0), parts.ports)  # a late, older report
    assert asked == ["run1.3"] * 2

    finish(parts, "run1.3", 0.8, status=CANCELLED, at=300.0)  # its node ends it: no more asks, ever
    handlers.run_progress(progress("run1.3", [0.9, 0.8, 0.8, 0.8], log_bytes=log_bytes + 30, at=400.0), parts.ports)
    assert asked == ["run1.3"] * 2
    record = parts.ports.stats.get_run(WS, "run1.3")
    assert record["status"] == STOPPED and "stop_sent" not in record["progress"]
