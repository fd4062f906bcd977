"""An adaptive job's next runs, planned as its runs end (domain/adaptive_search.py has the rule).

Called on every run event of a job (roll_job): a job without a search costs one read of its
record, no listing; an adaptive one lists its runs each time. Every step is repeatable: run k's hparams follow from runs
1 .. k - concurrent alone, its plan is written to storage first (create-if-absent: a repeat writes
the same file; reindex reads it), its record is insert-if-absent and compute ignores a task it has.
So a redelivered event, a restarted host or two Functions instances at once create each run once.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional

import msgspec

from xt_submit.domain import adaptive_search, layout, records, sweep
from xt_submit.domain.messages import JobManifest, decode_manifest
from xt_submit.handlers.dispatch import run_task
from xt_submit.ports import Ports



def advance_search(ports: Ports, workspace: str, job: str, record: Optional[Dict[str, Any]] = None) -> List[str]:
    """Plan and queue the runs the job's search may start now; returns their names. A job with no
    search returns before its runs are listed (its events stay the same cost at any size).
    record: the job's, if the caller has just read it (one read per event, not two)."""
    record = record if record is not None else ports.stats.get_job(workspace, job)
    search = record.get("search") or {}
    if not search.get("type"):
        return []
    runs = sorted(ports.stats.list_runs(workspace, job=job), key=lambda r: r["run_index"])
    concurrent, maximize, metric = search["concurrent"], bool(record["maximize_metric"]), record["primary_metric"]
    names = list(record.get("hp_space") or {})
    if search.get("ended"):  # nothing more to plan; the best so far still moves as the last runs end
        best = _best(runs, names, metric, maximize)
        if best != search.get("best"):
            ports.stats.update_job(workspace, job, {"search": {**search, "best": best}})
        return []

    @functools.lru_cache(maxsize=None)
    def manifest() -> JobManifest:  # read only when a run is due (most recounts plan nothing)
        return decode_manifest(ports.storage.read(layout.manifest_key(workspace, job)))

    @functools.lru_cache(maxsize=None)
    def params() -> List[Any]:
        return sweep.compile_space(manifest().hp_space)

    created: List[str] = []
    for plan in _plans_not_indexed(ports, record, runs):  # a crash after a plan was stored: finish it
        runs.append(_add_run(ports, manifest(), record, layout.run_index(plan["name"]), plan["hparams"],
                             created_at=plan["created"]))
        created.append(plan["name"])
    runs.sort(key=lambda r: r["run_index"])
    ended = ""
    while True:
        index = len(runs) + 1
        if index > search["budget"]:
            ended = f"all {search['budget']} runs planned"
            break
        if index <= concurrent:
            break  # the dispatch's own runs are not all recorded yet: its redelivery records them
        informing = runs[: index - concurrent]
        if any(records.is_live(run["status"]) for run in informing):
            break
        point = adaptive_search.next_point(
            params(), search_type=search["type"], index=index, seed=manifest().seed, maximize=maximize,
            results=[_result(run, names, metric) for run in informing], planned=[_point(run, names) for run in runs])
        if point is None:
            ended = f"the grid has no untried point left after {len(runs)} runs"
            break
        runs.append(_add_run(ports, manifest(), record, index, point,
                             created_at=max(r["ended"] or 0 for r in informing)))
        created.append(runs[-1]["name"])
    progress = {**search, "best": _best(runs, names, metric, maximize), "ended": ended}
    if ended:
        _write_search_end(ports, workspace, job, ended, max((r.get("ended") or 0) for r in runs) if runs else 0)
    if created or progress != search:  # a recount that planned nothing and moved nothing writes nothing
        ports.stats.update_job(workspace, job, {"search": progress, **({"run_count": len(runs)} if created else {})})
    return created


def end_search(ports: Ports, workspace: str, job: str, reason: str, at: float) -> bool:
    """Plan no more runs for the job (a cancel of the whole job). False if it had no open search."""
    search = ports.stats.get_job(workspace, job, hp_space=False).get("search") or {}
    if not search.get("type") or search.get("ended"):
        return False
    _write_search_end(ports, workspace, job, reason, at)
    ports.stats.update_job(workspace, job, {"search": {**search, "ended": reason}})
    return True


def _write_search_end(ports: Ports, workspace: str, job: str, reason: str, at: float) -> None:
    ports.storage.write(layout.search_ended_key(workspace, job), msgspec.json.encode({"reason": reason, "at": at}),
                        overwrite=False)  # the first end stands (a cancel racing the last planned run)


def _add_run(ports: Ports, manifest: Any, job: Dict[str, Any], index: int, point: Dict[str, Any],
             created_at: float) -> Dict[str, Any]:
    """Storage (the plan), compute, then the index: a run the index holds is on compute too, and a
    plan without its run is finished by the next recount (_plans_not_indexed)."""
    ws, name = manifest.workspace, layout.run_name(job["number"], index)
    command = manifest.command + sweep.format_hparam_args(point)
    ports.storage.write(layout.added_run_key(ws, job["name"], index), msgspec.json.encode(
        {"name": name, "command": command, "hparams": point, "created": created_at}), overwrite=False)
    ports.compute.submit([run_task(manifest, job["name"], name, command, point, created_at)])
    [run] = records.new_runs(manifest, job=job["name"], number=job["number"], plan=[(name, command, point)],
                             created=created_at, first_index=index)
    ports.stats.insert_runs([run])
    return run


def _plans_not_indexed(ports: Ports, job: Dict[str, Any], runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The stored plans of added runs the index does not hold (one listing; only those are read)."""
    known = {run["name"] for run in runs}
    plans = []
    for key in ports.storage.list(layout.added_runs_prefix(job["workspace"], job["name"])):
        index = int(key.rsplit("/", 1)[1].split(".", 1)[0])
        if layout.run_name(job["number"], index) not in known:
            plans.append(msgspec.json.decode(ports.storage.read(key)))
    return sorted(plans, key=lambda plan: layout.run_index(plan["name"]))


def _point(run: Dict[str, Any], names: List[str]) -> Dict[str, Any]:
    """A run's point in the space (hparams the script logged beyond the space are not the search's)."""
    hparams = run.get("hparams") or {}
    return {name: hparams[name] for name in names if name in hparams}


def _result(run: Dict[str, Any], names: List[str], metric: str) -> adaptive_search.Result:
    return _point(run, names), adaptive_search.usable_value((run.get("metrics") or {}).get(metric))


def _best(runs: List[Dict[str, Any]], names: List[str], metric: str, maximize: bool):
    ended = [run for run in runs if not records.is_live(run["status"])]
    scored = []
    for run in ended:
        value = adaptive_search.usable_value((run.get("metrics") or {}).get(metric))
        if value is not None:
            scored.append((run, value))
    if not scored:
        return None
    run, value = (max if maximize else min)(scored, key=lambda item: item[1])
    return {"run": run["name"], "hparams": _point(run, names), "metric": metric, "value": value}
