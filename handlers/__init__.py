"""Pure reactions to pipeline events: `(event, ports) -> result`.

No Azure import, no global state, no I/O except through the ports handed in. Every handler is
idempotent and tolerates duplicated and reordered events.
"""
from xt_submit.handlers.cancel import cancel_runs
from xt_submit.handlers.dispatch import dispatch_job
from xt_submit.handlers.run_events import (mark_silent_runs, run_finished, run_heartbeat, run_preempted, run_progress,
                                           run_started)
from xt_submit.handlers.upload import accept_upload
from xt_submit.domain.messages import (CancelRequested, JobSubmitted, RunFinished, RunHeartbeat, RunPreempted,
                                       RunProgress, RunStarted, UploadReceived)

# Which handler each message gets, per queue: the local host and the Functions app both route by these.
ON_JOBS_QUEUE = {JobSubmitted: dispatch_job, UploadReceived: accept_upload}
ON_EVENTS_QUEUE = {RunStarted: run_started, RunFinished: run_finished, RunHeartbeat: run_heartbeat,
                   RunProgress: run_progress, RunPreempted: run_preempted, CancelRequested: cancel_runs}

__all__ = ["ON_EVENTS_QUEUE", "ON_JOBS_QUEUE", "accept_upload", "cancel_runs", "dispatch_job", "mark_silent_runs", "run_finished", "run_heartbeat",
           "run_preempted", "run_progress", "run_started"]
