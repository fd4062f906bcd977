"""Fault injection for the ports: fail right after the k-th side effect, as a crash would."""
from __future__ import annotations

from xt_submit.ports import Ports

SIDE_EFFECTS = {
    "storage": ("write", "create_log", "append", "upload_file", "delete"),
    "stats": ("assign_job_name", "restore_job_name", "clear_workspace", "insert_job", "insert_runs", "update_job",
              "update_run", "replace_metrics"),
    "compute": ("submit", "cancel"),
    "publisher": ("send_job", "send_events"),
}


class InjectedFault(RuntimeError):
    pass


class _Counter:
    def __init__(self, fail_after):
        self.fail_after = fail_after
        self.effects = 0


class _Faulty:
    def __init__(self, inner, names, counter):
        self._inner, self._names, self._counter = inner, names, counter

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name not in self._names:
            return attr

        def effect(*args, **kwargs):
            result = attr(*args, **kwargs)
            self._counter.effects += 1
            if self._counter.effects == self._counter.fail_after:
                raise InjectedFault(f"crash after side effect {self._counter.effects} ({name})")
            return result

        return effect


def faulty(ports: Ports, fail_after: int | None):
    """(ports that crash after side effect number `fail_after`, counter of effects made)."""
    counter = _Counter(fail_after)
    wrapped = Ports(**{field: _Faulty(getattr(ports, field), SIDE_EFFECTS[field], counter) if field in SIDE_EFFECTS
                       else getattr(ports, field) for field in ("storage", "stats", "compute", "publisher")})
    return wrapped, counter
