"""Experiment stats in a MongoDB-API store (Cosmos DB for MongoDB, or MongoDB) via pymongo.

Same port and contract tests as SqliteStats. Run documents are keyed by "<workspace>/<run>"
(idempotent upserts); metric records live in their own collection, written in bulk, so no run
document grows without bound (Cosmos DB caps a document at 2 MB). Throttling (Cosmos error
16500 / 429) and transient network errors are retried with backoff.
"""
from __future__ import annotations

import random
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, TypeVar

from xt_submit.domain import layout
from xt_submit.domain.errors import NotFound
from xt_submit.domain.records import JOB_FIELDS, MAPPING_FIELDS, RUN_FIELDS
from xt_submit.domain.run_query import Filter, RunQuery, window
from xt_submit.ports import StatsStore

T = TypeVar("T")
THROTTLED_CODES = frozenset({16500, 429})
METRIC_BATCH = 10_000


def _retrying(action: Callable[[], T], attempts: int = 6, base_delay: float = 0.05) -> T:
    """Run `action`, retrying throttling and transient network errors with jittered backoff."""
    from pymongo import errors

    for attempt in range(attempts):
        try:
            return action()
        except (errors.AutoReconnect, errors.NetworkTimeout) as exc:
            failure: Exception = exc
        except errors.OperationFailure as exc:
            if exc.code not in THROTTLED_CODES:
                raise
            failure = exc
        if attempt == attempts - 1:
            raise failure
        time.sleep(base_delay * (2 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def _key(workspace: str, name: str) -> str:
    return f"{workspace}/{name}"


def _record(doc: Optional[Dict[str, Any]], fields: Sequence[str]) -> Optional[Dict[str, Any]]:
    """A document in the port's shape: every field present, like a row of the SQL store."""
    if doc is None:
        return None
    return {f: doc.get(f, {} if f in MAPPING_FIELDS else None) for f in fields}


def _run(doc):
    return _record(doc, RUN_FIELDS)


def _job(doc):
    return _record(doc, JOB_FIELDS)


def _field(group: Optional[str], name: str) -> str:
    return name if group is None else f"{group}.{name}"


def _filter_doc(flt: Filter) -> Dict[str, Any]:
    """One filter as a MongoDB query with the semantics of run_query.matches (BSON comparisons
    already refuse to order a number against a word, and $regex matches only strings)."""
    path = _field(flt.group, flt.name)
    if flt.op == "exists" or (flt.op in ("==", "!=") and flt.value is None):
        present = flt.value if flt.op == "exists" else flt.op == "!="
        return {path: {"$exists": True, "$ne": None}} if present else {path: None}
    if flt.op == "regex":
        return {path: {"$regex": flt.value}}
    operator = {"==": "$eq", "!=": "$ne", "<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}[flt.op]
    return {path: {operator: flt.value}}


class MongoStats(StatsStore):
    def __init__(self, uri: str, database: str = "xt", *, client=None) -> None:
        import pymongo

        self._pymongo = pymongo
        self.client = client or pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000, retryWrites=True)
        db = self.client[database]
        self.counters, self.submissions = db["job_counters"], db["submissions"]
        self.jobs, self.runs, self.metrics = db["jobs"], db["runs"], db["metrics"]
        self._ensure_indexes()

    def _ensure_indexes(self) -> None:
        asc = self._pymongo.ASCENDING
        _retrying(lambda: self.runs.create_index([("workspace", asc), ("job_number", asc), ("run_index", asc)]))
        _retrying(lambda: self.runs.create_index([("workspace", asc), ("status", asc)]))
        _retrying(lambda: self.runs.create_index([("status", asc), ("heartbeat", asc)]))
        _retrying(lambda: self.runs.create_index([("metrics.$**", asc)]))  # any metric, filtered or sorted
        _retrying(lambda: self.jobs.create_index([("workspace", asc), ("number", asc)]))
        _retrying(lambda: self.metrics.create_index([("workspace", asc), ("run", asc), ("seq", asc)]))

    # --- names -------------------------------------------------------------------------------
    def assign_job_name(self, workspace: str, submission_id: str) -> str:
        key = _key(workspace, submission_id)
        found = _retrying(lambda: self.submissions.find_one({"_id": key}))
        if found is None:
            counter = _retrying(lambda: self.counters.find_one_and_update(
                {"_id": workspace}, {"$inc": {"last_number": 1}}, upsert=True,
                return_document=self._pymongo.ReturnDocument.AFTER))
            try:
                self.submissions.insert_one({"_id": key, "workspace": workspace, "number": counter["last_number"]})
            except self._pymongo.errors.DuplicateKeyError:
                pass  # a concurrent delivery of the same message won: its number stands (ours is skipped)
            found = _retrying(lambda: self.submissions.find_one({"_id": key}))
        return layout.job_name(found["number"])

    def restore_job_name(self, workspace: str, submission_id: str, number: int) -> None:
        _retrying(lambda: self.submissions.update_one({"_id": _key(workspace, submission_id)},
                                                      {"$setOnInsert": {"workspace": workspace, "number": number}},
                                                      upsert=True))
        _retrying(lambda: self.counters.update_one({"_id": workspace}, {"$max": {"last_number": number}}, upsert=True))

    def find_job_by_submission(self, workspace: str, submission_id: str) -> Optional[str]:
        found = _retrying(lambda: self.submissions.find_one({"_id": _key(workspace, submission_id)}))
        if found is None:
            return None
        job = layout.job_name(found["number"])
        return job if _retrying(lambda: self.jobs.find_one({"_id": _key(workspace, job)}, {"_id": 1})) else None

    def clear_workspace(self, workspace: str) -> None:
        for collection in (self.jobs, self.runs, self.metrics, self.submissions):
            _retrying(lambda c=collection: c.delete_many({"workspace": workspace}))
        _retrying(lambda: self.counters.delete_one({"_id": workspace}))

    # --- writes ------------------------------------------------------------------------------
    def insert_job(self, job: Dict[str, Any]) -> None:
        _retrying(lambda: self.jobs.update_one({"_id": _key(job["workspace"], job["name"])},
                                               {"$setOnInsert": dict(job)}, upsert=True))

    def insert_runs(self, runs: Sequence[Dict[str, Any]]) -> None:
        if not runs:
            return
        UpdateOne = self._pymongo.UpdateOne
        for start in range(0, len(runs), METRIC_BATCH):
            batch = [UpdateOne({"_id": _key(r["workspace"], r["name"])}, {"$setOnInsert": {"heartbeat": None, **r}},
                               upsert=True) for r in runs[start:start + METRIC_BATCH]]
            _retrying(lambda b=batch: self.runs.bulk_write(b, ordered=False))

    def update_job(self, workspace: str, job: str, changes: Dict[str, Any],
                   *, only_if_status_in: Optional[Iterable[str]] = None) -> bool:
        return self._update(self.jobs, "job", workspace, job, changes, only_if_status_in)

    def update_run(self, workspace: str, run: str, changes: Dict[str, Any],
                   *, only_if_status_in: Optional[Iterable[str]] = None) -> bool:
        return self._update(self.runs, "run", workspace, run, changes, only_if_status_in)

    def _update(self, collection, kind: str, workspace: str, name: str, changes: Dict[str, Any],
                only_if_status_in: Optional[Iterable[str]]) -> bool:
        query: Dict[str, Any] = {"_id": _key(workspace, name)}
        if only_if_status_in is not None:
            query["status"] = {"$in": list(only_if_status_in)}
        result = _retrying(lambda: collection.update_one(query, {"$set": dict(changes)}))
        if result.matched_count == 0 and _retrying(lambda: collection.find_one({"_id": _key(workspace, name)}, {"_id": 1})) is None:
            raise NotFound(f"{kind} {name} not found in workspace {workspace}")
        return result.matched_count > 0

    def replace_metrics(self, workspace: str, run: str, rows: Sequence[Any]) -> None:
        _retrying(lambda: self.metrics.delete_many({"workspace": workspace, "run": run}))
        docs = [{"workspace": workspace, "run": run, "seq": seq, "step": step, "name": name, "value": value, "time": t}
                for seq, (step, name, value, t) in enumerate(rows)]
        for start in range(0, len(docs), METRIC_BATCH):
            # _id is set here, so a retried batch replaces rather than duplicates
            batch = [dict(doc, _id=f"{workspace}/{run}/{doc['seq']}") for doc in docs[start:start + METRIC_BATCH]]
            ReplaceOne = self._pymongo.ReplaceOne
            _retrying(lambda b=batch: self.metrics.bulk_write([ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in b],
                                                              ordered=False))

    # --- reads -------------------------------------------------------------------------------
    def get_job(self, workspace: str, job: str) -> Dict[str, Any]:
        found = _job(_retrying(lambda: self.jobs.find_one({"_id": _key(workspace, job)})))
        if found is None:
            raise NotFound(f"job {job} not found in workspace {workspace}")
        return found

    def get_run(self, workspace: str, run: str) -> Dict[str, Any]:
        found = _run(_retrying(lambda: self.runs.find_one({"_id": _key(workspace, run)})))
        if found is None:
            raise NotFound(f"run {run} not found in workspace {workspace}")
        return found

    def get_metrics(self, workspace: str, run: str) -> List[Dict[str, Any]]:
        projection = {"_id": 0, "step": 1, "name": 1, "value": 1, "time": 1}
        return _retrying(lambda: list(self.metrics.find({"workspace": workspace, "run": run}, projection).sort("seq", 1)))

    def job_rollup(self, workspace: str, job: str) -> Dict[str, Any]:
        rows = _retrying(lambda: list(self.runs.aggregate([
            {"$match": {"workspace": workspace, "job_number": layout.job_number(job)}},
            {"$group": {"_id": "$status", "count": {"$sum": 1}, "started": {"$min": "$started"},
                        "ended": {"$max": "$ended"}}}])))
        starts = [r["started"] for r in rows if r.get("started") is not None]
        ends = [r["ended"] for r in rows if r.get("ended") is not None]
        return {"counts": {r["_id"]: r["count"] for r in rows}, "started": min(starts) if starts else None,
                "ended": max(ends) if ends else None}

    def list_runs(self, workspace: str, *, job: Optional[str] = None, status: Optional[str] = None) -> List[Dict[str, Any]]:
        return self.query_runs(RunQuery(workspace=workspace, job=job, status=status))

    def list_jobs(self, workspace: str) -> List[Dict[str, Any]]:
        return [_job(doc) for doc in _retrying(lambda: list(self.jobs.find({"workspace": workspace}).sort("number", 1)))]

    def workspaces(self) -> List[str]:
        return sorted(_retrying(lambda: self.jobs.distinct("workspace")))

    def experiments(self, workspace: str) -> List[str]:
        return sorted(e for e in _retrying(lambda: self.jobs.distinct("experiment", {"workspace": workspace})) if e)

    def silent_runs(self, before: float) -> List[Dict[str, Any]]:
        query = {"status": "running", "$or": [{"heartbeat": {"$lt": before}},
                                              {"heartbeat": None, "started": {"$lt": before}}]}
        return [_run(doc) for doc in _retrying(lambda: list(self.runs.find(query)))]

    def has_key(self, workspace: str, group: str, name: str) -> bool:
        if group not in ("metrics", "hparams", "tags"):
            raise ValueError(f"has_key: expected metrics, hparams or tags, got {group!r}")
        query = {"workspace": workspace, _field(group, name): {"$exists": True}}
        return _retrying(lambda: self.runs.find_one(query, projection={"_id": 1})) is not None

    def query_runs(self, query: RunQuery) -> List[Dict[str, Any]]:
        conditions: List[Dict[str, Any]] = [{"workspace": query.workspace}]
        if query.job is not None:
            conditions.append({"job_number": layout.job_number(query.job)})
        if query.status is not None:
            conditions.append({"status": query.status})
        if query.runs or query.jobs:
            conditions.append({"$or": [{"name": {"$in": list(query.runs)}},
                                       {"job_number": {"$in": [layout.job_number(job) for job in query.jobs]}}]})
        if query.any_tags:
            conditions.append({"$or": [{f"tags.{tag}": {"$exists": True, "$ne": None}} for tag in query.any_tags]})
        conditions += [_filter_doc(flt) for flt in query.filters]
        match = {"$and": conditions}

        def ordered(descending: bool, limit: Optional[int]) -> List[Dict[str, Any]]:
            direction = -1 if descending else 1
            keys = [("job_number", direction), ("run_index", direction)]
            if query.sort is not None:
                keys.insert(0, (_field(query.sort.group, query.sort.name), direction))
            if limit == 0:
                return []
            # a fresh cursor per attempt: a retry must not resume a half-read one
            found = _retrying(lambda: list(self.runs.find(match).sort(keys).limit(limit or 0)))
            return [_run(doc) for doc in found]

        if query.first is not None:
            return window(ordered(query.reverse, query.first), None, query.last)
        if query.last is not None:
            return ordered(not query.reverse, query.last)[::-1]
        return ordered(query.reverse, None)
