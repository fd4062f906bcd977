"""Pure reactions to pipeline events: `(event, ports) -> result`.

No Azure import, no global state, no I/O except through the ports handed in. Every handler is
idempotent and tolerates duplicated and reordered events.
"""
from handlers.cancel import cancel_runs
from handlers.dispatch import dispatch_job
from handlers.run_events import mark_silent_runs, run_finished, run_heartbeat, run_started
from handlers.upload import accept_upload

__all__ = ["accept_upload", "cancel_runs", "dispatch_job", "mark_silent_runs", "run_finished", "run_heartbeat",
           "run_started"]
