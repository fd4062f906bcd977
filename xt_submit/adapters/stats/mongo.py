"""Experiment stats in a MongoDB-API store (Cosmos DB for MongoDB, or MongoDB) via pymongo.

Same port and contract tests as SqliteStats. Run documents are keyed by "<workspace>/<run>"
(idempotent upserts); metric records live in their own collection, written in bulk.

The rules of Azure Cosmos DB for MongoDB (RU-based, server 3.6 and later) this adapter keeps, so one
code serves a MongoDB server and a team's Cosmos DB account:
- Retryable writes: the connection string decides. Cosmos's strings say retrywrites=false (with
  retryable writes on, Cosmos refuses every write unless the account has EnableMongoRetryableWrites,
  and it never takes them for unordered bulk writes). Throttling is retried here instead.
- Throttling: error 16500 (TooManyRequests, 429); a throttled write was not applied. In an unordered
  bulk write only the throttled writes are sent again. The wait is what Cosmos asks for
  (RetryAfterMs), else exponential; bounded in attempts and time, then StatsThrottled.
- Sorts: Cosmos indexes only _id and refuses a sort unless one index has exactly the sorted fields,
  in order; every sort is made by run_order, JOB_ORDER or METRIC_ORDER and sent by _find_sorted,
  which makes its index first.
- Documents: at most 2 MB. A value too big for its share of its document is kept in the `overflow`
  collection and put back on every read (_split, _set_aside, _read).
"""
from __future__ import annotations

import itertools
import random
import re
import time
import uuid
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, TypeVar

import bson
import pymongo
from bson.codec_options import TypeDecoder, TypeRegistry
from bson.int64 import Int64
from pymongo import errors

from xt_submit.domain import layout, run_query
from xt_submit.domain.errors import NotFound
from xt_submit.domain.records import JOB_FIELDS, MAPPING_FIELDS, RUN_FIELDS
from xt_submit.domain.run_query import Filter, QueryError, RunQuery, window
from xt_submit.ports import StatsStore

T = TypeVar("T")
RUNS_PER_WRITE = 10_000  # run documents in one bulk write
METRIC_DOCS_PER_WRITE = 100  # metric chunk documents in one bulk write (~800 KB)
# A run's metric rows go in documents of many rows each: Cosmos DB charges a write by its document's
# size (a 1 KB document 4.95 RU, an 8 KB one 7.04), so one row per document cost ~140x more per row.
ROW_BYTES_AT_MOST = 64  # one [step, name, value, time] row in BSON, beside its name's and string value's bytes
SERVER_SELECTION_MS = 10_000


def connect(uri: str, **options: Any) -> pymongo.MongoClient:
    """The client for `uri`, with the options its connection string gives.

    No retryWrites here: pymongo's keywords override the URI's, and Cosmos's strings carry
    retrywrites=false. Our one default, a 10 s server selection, gives way to the string's too."""
    given = {part.partition("=")[0].lower() for part in re.split("[&;]", uri.partition("?")[2]) if part}
    if "serverselectiontimeoutms" not in given:
        options.setdefault("serverSelectionTimeoutMS", SERVER_SELECTION_MS)
    return pymongo.MongoClient(uri, **options)


# --- throttling --------------------------------------------------------------------------------------
THROTTLED_CODES = frozenset({16500, 429})
_THROTTLED_TEXT = re.compile(r"TooManyRequests|Request rate is large")
_RETRY_AFTER = re.compile(r"RetryAfterMs=(\d+)")
RETRY_ATTEMPTS = 10
RETRY_SECONDS = 30.0  # well inside a message's lock; past it the pipeline retries the message later
NETWORK_ATTEMPTS = 6  # a store out of reach: a few quick tries, then the pipeline's own, longer backoff
BACKOFF_FIRST_SECONDS = 0.05
BACKOFF_CAP_SECONDS = 2.0
_clock, _sleep = time.monotonic, time.sleep  # the retry loops' clock and wait (tests put a fake clock here)


class StatsThrottled(RuntimeError):
    """The store still refused for lack of throughput after the retries. Not a OneLineError (those
    are dead-lettered): it passes, so the pipeline tries the message again later."""


def _is_throttled(code: Optional[int], message: str) -> bool:
    return code in THROTTLED_CODES or bool(_THROTTLED_TEXT.search(message))


def _message(failure: errors.OperationFailure) -> str:
    return (failure.details or {}).get("errmsg") or str(failure)


class _Backoff:
    """The waits between the attempts of one operation on one collection: what Cosmos asks for
    (RetryAfterMs) when it says, else exponential with jitter and a cap; bounded in attempts and time."""

    def __init__(self, collection: str) -> None:
        self.collection = collection
        self.attempts = 0
        self.started = _clock()

    def wait(self, failure: Exception, throttled: Sequence[str] = ()) -> None:
        """After a failed attempt (`throttled`: the store's messages, when it throttled); raises when
        no attempt is left: StatsThrottled for throttling, else the failure itself."""
        self.attempts += 1
        elapsed = _clock() - self.started
        if self.attempts >= (RETRY_ATTEMPTS if throttled else NETWORK_ATTEMPTS) or elapsed >= RETRY_SECONDS:
            if not throttled:
                raise failure
            reason = " ".join(throttled[0].split())[:200]  # Cosmos's messages hold line breaks
            raise StatsThrottled(f"stats collection {self.collection!r} still throttled (error 16500, too many requests) "
                                 f"after {self.attempts} attempts in {elapsed:.1f}s: {reason}") from failure
        asked = [int(found.group(1)) for found in map(_RETRY_AFTER.search, throttled) if found]
        if asked:
            delay = max(asked) / 1000
        else:
            delay = min(BACKOFF_CAP_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (self.attempts - 1) * (0.5 + random.random()))
        _sleep(min(delay, RETRY_SECONDS - elapsed))


def _retrying(collection, action: Callable[[], T]) -> T:
    """Run `action` on `collection`, retrying throttling and transient network errors."""
    backoff = _Backoff(collection.name)
    while True:
        try:
            return action()
        except errors.AutoReconnect as exc:  # NetworkTimeout among them
            backoff.wait(exc)
        except errors.OperationFailure as exc:
            if not _is_throttled(exc.code, _message(exc)):
                raise
            backoff.wait(exc, [_message(exc)])


def _bulk_write(collection, requests: Sequence[Any]) -> Dict[int, Any]:
    """An unordered bulk write that sends again only the writes Cosmos throttled (its reply names them
    by index; the others were applied). Returns {index in requests: _id} of the upserts."""
    pending = list(range(len(requests)))
    upserted: Dict[int, Any] = {}
    backoff = _Backoff(collection.name)
    while True:
        try:
            result = collection.bulk_write([requests[i] for i in pending], ordered=False)
        except errors.BulkWriteError as exc:
            failed = exc.details.get("writeErrors", [])
            for entry in failed + exc.details.get("upserted", []):
                entry["index"] = pending[entry["index"]]  # into `requests`, not this attempt's share of them
            messages = [error.get("errmsg", "") for error in failed]
            if not failed or not all(_is_throttled(e.get("code"), m) for e, m in zip(failed, messages)):
                raise  # refused for another reason (a duplicate key, a bad value): the caller's, as it always was
            upserted.update((entry["index"], entry["_id"]) for entry in exc.details.get("upserted", []))
            pending = [error["index"] for error in failed]
            backoff.wait(exc, messages)
        except errors.AutoReconnect as exc:
            backoff.wait(exc)  # what was applied is unknown: all of it again (every write here is idempotent)
        except errors.OperationFailure as exc:  # the whole command refused
            if not _is_throttled(exc.code, _message(exc)):
                raise
            backoff.wait(exc, [_message(exc)])
        else:
            upserted.update((pending[i], _id) for i, _id in result.upserted_ids.items())
            return upserted


# --- sorts, and the indexes they need ----------------------------------------------------------------
RUN_TIE_BREAK = ("job_number", "run_index")
JOB_ORDER = [("number", pymongo.ASCENDING)]
METRIC_ORDER = [("seq", pymongo.ASCENDING)]


def run_order(field: Optional[str], direction: int) -> List[Tuple[str, int]]:
    """query_runs' sort: the chosen field (if any), then job and run number to break ties."""
    fields = dict.fromkeys([field, *RUN_TIE_BREAK] if field else RUN_TIE_BREAK)  # each field once
    return [(name, direction) for name in fields]


# The sorts known in advance (none, or a run field) have their indexes made with the collections; a
# sort on a metric, hparam or tag (a user's name) gets its index before its first query.
FIXED_SORTS = {"runs": [run_order(None, 1)] + [run_order(name, 1) for name in run_query.RUN_FIELDS],
               "jobs": [JOB_ORDER], "metrics": [METRIC_ORDER], "overflow": []}
FILTER_INDEXES = {
    "runs": [[("workspace", 1), ("job_number", 1), ("run_index", 1)], [("workspace", 1), ("status", 1)],
             [("status", 1), ("heartbeat", 1)], [("metrics.$**", 1)]],  # the wildcard: a filter on any metric
    "jobs": [[("workspace", 1), ("number", 1)]],
    "metrics": [[("workspace", 1), ("run", 1), ("seq", 1)]],
    "overflow": [[("parent", 1)], [("workspace", 1)]],
}


def _sort_fields(order: Sequence[Tuple[str, int]]) -> Tuple[str, ...]:
    return tuple(name for name, _ in order)


# --- documents under 2 MB ----------------------------------------------------------------------------
DOCUMENT_LIMIT = 2_000_000  # Cosmos DB's 2 MB a document, read as decimal megabytes (the stricter)
MAP_INLINE_BYTES = 320 * 1024  # the share of a map (hparams, metrics, tags, hp_space, counts, search...) in its document
_BULK_NAMES = 1000  # runs per bulk update (an $in of 1000 ids is a small request)
# A job's hp_space (a sweep's values) above this is kept apart whole: Cosmos DB prices each write by its
# document's size, and a job's document is written on every run's start and end.
HP_SPACE_INLINE_BYTES = 1024
VALUE_INLINE_BYTES = 8 * 1024  # of any other value (a command, a reason, a metric's value)
PART_BYTES = 1024 * 1024  # of the values set aside, in one overflow document
# Never set aside: what queries select on, names and keys a few bytes long
IDENTITY_FIELDS = {"runs": frozenset({"_id", "workspace", "name", "job", "status"}),
                   "jobs": frozenset({"_id", "workspace", "name", "status"}),
                   "metrics": frozenset({"_id", "workspace", "run", "seq"})}
OVERFLOW = "_overflow"  # in a document: {field: {"token": ..., "parts": n}} for each value set aside


def _fits(value: Any, budget: int) -> bool:
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str) and 4 * len(value) + 16 <= budget:  # UTF-8: 4 bytes a character at most
        return True
    return len(bson.encode({"": value})) <= budget


def _split(value: Any) -> Tuple[Any, Optional[Dict[str, Any]]]:
    """(what stays in the document, what is set aside or None). A map keeps its smallest entries, so
    the most of them stay filterable and sortable, and sets the rest aside with its key order; any
    other value is set aside whole, None staying in its place."""
    if not isinstance(value, dict):
        return (value, None) if _fits(value, VALUE_INLINE_BYTES) else (None, {"value": value})
    if _fits(value, MAP_INLINE_BYTES):
        return value, None
    items = list(value.items())
    kept, used = set(), 5  # a BSON document's length and terminator
    for size, index in sorted((len(bson.encode(dict([item]))) - 5, index) for index, item in enumerate(items)):
        if used + size > MAP_INLINE_BYTES:
            break
        kept.add(index)
        used += size
    return ({key: item for index, (key, item) in enumerate(items) if index in kept},
            {"entries": {key: item for index, (key, item) in enumerate(items) if index not in kept}, "order": list(value)})


def _put_back(inline: Any, aside: Dict[str, Any]) -> Any:
    if "value" in aside:
        return aside["value"]
    both = {**(inline or {}), **aside["entries"]}
    return {key: both[key] for key in aside["order"] if key in both}


def _part_ids(collection: str, doc_id: str, field: str, ref: Dict[str, Any]) -> List[str]:
    return [f"{collection}/{doc_id}/{field}/{ref['token']}/{part}" for part in range(ref["parts"])]


def _metric_chunks(rows: Iterable[Any]) -> Iterator[List[list]]:
    """Rows in runs of at most VALUE_INLINE_BYTES (by an upper bound of their BSON size), so that a
    chunk stays in its document; a row bigger than that is a chunk of its own."""
    chunk: List[list] = []
    used = 0
    for step, name, value, t in rows:
        size = ROW_BYTES_AT_MOST + 4 * (len(name) + (len(value) if isinstance(value, str) else 0))  # UTF-8: 4 a char at most
        if chunk and used + size > VALUE_INLINE_BYTES:
            yield chunk
            chunk, used = [], 0
        chunk.append([step, name, value, t])
        used += size
    if chunk:
        yield chunk


def _with_refs(inline: Dict[str, Any], refs: Dict[str, Any]) -> Dict[str, Any]:
    return {**inline, OVERFLOW: refs} if refs else inline


# --- records -----------------------------------------------------------------------------------------
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
    job = _record(doc, JOB_FIELDS)
    if job is not None:  # a status whose runs all moved on keeps its $inc'ed 0 in the document
        job["counts"] = {status: n for status, n in (job["counts"] or {}).items() if n}
    return job


COUNTS_VERSION = "counts_version"  # in a job document: moved by every $inc of its counts (recount_job's guard)
RECOUNT_ATTEMPTS = 5


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


class _PlainInt(TypeDecoder):
    """BSON int64 read back as int, as SQLite gives it (pymongo's Int64 is one no JSON encoder here takes)."""

    bson_type = Int64

    def transform_bson(self, value: Int64) -> int:
        return int(value)


REGEX_QUERY_SECONDS = 30.0  # a query with a --filter regex (maxTimeMS)


class MongoStats(StatsStore):
    def __init__(self, uri: str, database: str = "xt", *, client=None) -> None:
        self.client = client or connect(uri)
        db = self.client.get_database(database, codec_options=self.client.codec_options.with_options(
            type_registry=TypeRegistry([_PlainInt()])))
        self.counters, self.submissions = db["job_counters"], db["submissions"]
        self.jobs, self.runs, self.metrics = db["jobs"], db["runs"], db["metrics"]
        self.overflow = db["overflow"]  # values too big for their document's share (see _split)
        self._sorts_indexed: Set[Tuple[str, Tuple[str, ...]]] = set()
        self._ensure_indexes()

    def _ensure_indexes(self) -> None:
        for collection in (self.runs, self.jobs, self.metrics, self.overflow):
            sorts = [_sort_fields(order) for order in FIXED_SORTS[collection.name]]
            keys = dict.fromkeys([tuple(key) for key in FILTER_INDEXES[collection.name]] +
                                 [tuple((name, pymongo.ASCENDING) for name in fields) for fields in sorts])
            models = [pymongo.IndexModel(list(key)) for key in keys]
            _retrying(collection, lambda c=collection, m=models: c.create_indexes(m))
            self._sorts_indexed.update((collection.name, fields) for fields in sorts)

    def _ensure_sort_index(self, collection, order: Sequence[Tuple[str, int]]) -> None:
        """The index a sort needs, made before its first query (createIndexes leaves an existing one be).
        Cosmos builds a new index in the background: on a big collection the first such query may wait."""
        fields = _sort_fields(order)
        if (collection.name, fields) not in self._sorts_indexed:
            _retrying(collection, lambda: collection.create_index([(name, pymongo.ASCENDING) for name in fields]))
            self._sorts_indexed.add((collection.name, fields))

    # --- documents and the values set aside ----------------------------------------------------------
    def _find_sorted(self, collection, match: Dict[str, Any], order: Sequence[Tuple[str, int]], *,
                     projection: Optional[Dict[str, Any]] = None, limit: int = 0,
                     max_time_ms: Optional[int] = None) -> List[Dict[str, Any]]:
        """The one way this adapter sorts, so that no sort goes without its index."""
        self._ensure_sort_index(collection, order)

        def fetch() -> List[Dict[str, Any]]:  # a fresh cursor per attempt: a retry must not resume a half-read one
            cursor = collection.find(match, projection).sort(list(order)).limit(limit)
            return list(cursor.max_time_ms(max_time_ms) if max_time_ms else cursor)

        return self._read(collection, fetch)

    def _read(self, collection, fetch: Callable[[], List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
        """Documents with their values set aside put back. A write that replaced those values between
        the two reads makes us read again (the new document names the new values)."""
        for _ in range(3):
            docs = _retrying(collection, fetch)
            if self._put_back_all(collection.name, docs):
                return docs
        raise RuntimeError(f"stats collection {collection.name!r}: values set aside keep changing under a read")

    def _put_back_all(self, collection: str, docs: List[Dict[str, Any]]) -> bool:
        wanted = {(index, field): _part_ids(collection, doc["_id"], field, ref)
                  for index, doc in enumerate(docs) for field, ref in (doc.get(OVERFLOW) or {}).items()}
        ids = [part for parts in wanted.values() for part in parts]
        found: Dict[str, bytes] = {}
        for start in range(0, len(ids), 100):
            batch = ids[start:start + 100]
            found.update((part["_id"], part["data"]) for part in
                         _retrying(self.overflow, lambda b=batch: list(self.overflow.find({"_id": {"$in": b}}))))
        if len(found) < len(ids):
            return False
        for (index, field), parts in wanted.items():
            docs[index][field] = _put_back(docs[index].get(field), bson.decode(b"".join(found[part] for part in parts)))
        return True

    def _read_one(self, collection, doc_id: str,
                  projection: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
        found = self._read(collection, lambda: list(collection.find({"_id": doc_id}, projection).limit(1)))
        return found[0] if found else None

    def _set_aside(self, collection, doc_id: str, workspace: str, values: Dict[str, Any],
                   parent: Optional[str] = None) -> Tuple[Dict[str, Any], Dict[str, Dict[str, Any]]]:
        """`values` cut to fit their document, and a reference for each value set aside. The parts are
        written first: a document never names parts that are not there."""
        identity = IDENTITY_FIELDS[collection.name]
        inline, refs, parts = dict(values), {}, []
        for field, value in values.items():
            if (collection.name, field) == ("jobs", "hp_space") and not _fits(value, HP_SPACE_INLINE_BYTES):
                kept, aside = None, {"value": value}  # whole: the job's every update is priced by its size
            else:
                kept, aside = (value, None) if field in identity else _split(value)
            if aside is None:
                continue
            blob = bson.encode(aside)
            inline[field] = kept
            refs[field] = ref = {"token": uuid.uuid4().hex, "parts": -(-len(blob) // PART_BYTES)}
            parts += [pymongo.ReplaceOne({"_id": part_id}, {"workspace": workspace, "parent": parent or f"{collection.name}/{doc_id}",
                                                            "data": bson.Binary(blob[i * PART_BYTES:(i + 1) * PART_BYTES])},
                                         upsert=True)
                      for i, part_id in enumerate(_part_ids(collection.name, doc_id, field, ref))]
        if parts:
            _bulk_write(self.overflow, parts)
        return inline, refs

    def _delete_parts(self, collection, doc_id: str, refs: Dict[str, Dict[str, Any]]) -> None:
        ids = [part for field, ref in refs.items() for part in _part_ids(collection.name, doc_id, field, ref)]
        if ids:
            _retrying(self.overflow, lambda: self.overflow.delete_many({"_id": {"$in": ids}}))

    def _delete_unreferenced(self, collection, doc_id: str, refs: Dict[str, Dict[str, Any]]) -> None:
        """Delete the parts of `refs` unless the document names them (a write applied, its reply lost)."""
        current = _retrying(collection, lambda: collection.find_one({"_id": doc_id}, {OVERFLOW: 1})) or {}
        named = current.get(OVERFLOW) or {}
        self._delete_parts(collection, doc_id, {field: ref for field, ref in refs.items() if named.get(field) != ref})

    # --- names -------------------------------------------------------------------------------
    def assign_job_name(self, workspace: str, submission_id: str) -> str:
        key = _key(workspace, submission_id)
        found = _retrying(self.submissions, lambda: self.submissions.find_one({"_id": key}))
        if found is None:
            counter = _retrying(self.counters, lambda: self.counters.find_one_and_update(
                {"_id": workspace}, {"$inc": {"last_number": 1}}, upsert=True,
                return_document=pymongo.ReturnDocument.AFTER))
            try:
                _retrying(self.submissions, lambda: self.submissions.insert_one(
                    {"_id": key, "workspace": workspace, "number": counter["last_number"]}))
            except errors.DuplicateKeyError:
                pass  # a concurrent delivery of the same message won: its number stands (ours is skipped)
            found = _retrying(self.submissions, lambda: self.submissions.find_one({"_id": key}))
        return layout.job_name(found["number"])

    def restore_job_name(self, workspace: str, submission_id: str, number: int) -> None:
        _retrying(self.submissions, lambda: self.submissions.update_one(
            {"_id": _key(workspace, submission_id)}, {"$setOnInsert": {"workspace": workspace, "number": number}},
            upsert=True))
        _retrying(self.counters, lambda: self.counters.update_one({"_id": workspace}, {"$max": {"last_number": number}},
                                                                  upsert=True))

    def find_job_by_submission(self, workspace: str, submission_id: str) -> Optional[str]:
        """The job recorded with this submission id; else the job its name maps to, unless that job
        is another submission's (the dispatch skipped a name storage held: handlers/dispatch.py)."""
        recorded = self._find_sorted(self.jobs, {"workspace": workspace, "submission_id": submission_id},
                                     [("number", -1)], projection={"name": 1}, limit=1)
        if recorded:
            return recorded[0]["name"]
        found = _retrying(self.submissions, lambda: self.submissions.find_one({"_id": _key(workspace, submission_id)}))
        if found is None:
            return None
        job = layout.job_name(found["number"])
        doc = _retrying(self.jobs, lambda: self.jobs.find_one({"_id": _key(workspace, job)}, {"submission_id": 1}))
        return job if doc and doc.get("submission_id", submission_id) in (submission_id, None) else None

    def clear_workspace(self, workspace: str) -> None:
        for collection in (self.jobs, self.runs, self.metrics, self.submissions, self.overflow):
            _retrying(collection, lambda c=collection: c.delete_many({"workspace": workspace}))
        _retrying(self.counters, lambda: self.counters.delete_one({"_id": workspace}))

    # --- writes ------------------------------------------------------------------------------
    def insert_job(self, job: Dict[str, Any]) -> None:
        job = {**job, "counts": {}}  # the store's: counted as its runs are inserted and move
        if job.get("started") is None:
            job.pop("started", None)  # absent, not null: the $min of its first run's start sets it
        doc_id = _key(job["workspace"], job["name"])
        inline, refs = self._set_aside(self.jobs, doc_id, job["workspace"], job)
        result = _retrying(self.jobs, lambda: self.jobs.update_one({"_id": doc_id}, {"$setOnInsert": _with_refs(inline, refs)},
                                                                   upsert=True))
        if refs and result.upserted_id is None:  # the job was there already: its first record stands
            self._delete_unreferenced(self.jobs, doc_id, refs)

    def insert_runs(self, runs: Sequence[Dict[str, Any]]) -> None:
        for start in range(0, len(runs), RUNS_PER_WRITE):
            batch, set_aside = [], {}
            for index, run in enumerate(runs[start:start + RUNS_PER_WRITE]):
                doc_id = _key(run["workspace"], run["name"])
                inline, refs = self._set_aside(self.runs, doc_id, run["workspace"], {"heartbeat": None, **run})
                if refs:
                    set_aside[index] = (doc_id, refs)
                batch.append(pymongo.UpdateOne({"_id": doc_id}, {"$setOnInsert": _with_refs(inline, refs)}, upsert=True))
            inserted = _bulk_write(self.runs, batch)
            for index, (doc_id, refs) in set_aside.items():
                if index not in inserted:  # the run was there already: its first record stands
                    self._delete_unreferenced(self.runs, doc_id, refs)
            chunk = runs[start:start + RUNS_PER_WRITE]
            moves: Dict[Tuple[str, str], Dict[Tuple[Optional[str], str], int]] = {}
            for index in inserted:
                run = chunk[index]
                job_moves = moves.setdefault((run["workspace"], run["job"]), {})
                job_moves[(None, run["status"])] = job_moves.get((None, run["status"]), 0) + 1
            for (workspace, job), job_moves in moves.items():
                starts = [chunk[i]["started"] for i in inserted if chunk[i]["job"] == job
                          and chunk[i]["workspace"] == workspace and chunk[i].get("started") is not None]
                self._move_counts(workspace, job, job_moves, min(starts) if starts else None)

    def update_job(self, workspace: str, job: str, changes: Dict[str, Any],
                   *, only_if_status_in: Optional[Iterable[str]] = None) -> bool:
        return self._update(self.jobs, "job", workspace, job, changes, only_if_status_in)

    def update_run(self, workspace: str, run: str, changes: Dict[str, Any],
                   *, only_if_status_in: Optional[Iterable[str]] = None) -> bool:
        return self._update(self.runs, "run", workspace, run, changes, only_if_status_in)

    def update_runs(self, workspace: str, runs: Sequence[str], changes: Dict[str, Any],
                    *, only_if_status_in: Optional[Iterable[str]] = None) -> List[str]:
        """One update_many per batch for small scalar changes (a cancel's status, time and reason);
        a run whose changed field was set aside, and any larger change, goes through update_run."""
        statuses = None if only_if_status_in is None else list(only_if_status_in)
        if any(field in MAPPING_FIELDS or not _fits(value, VALUE_INLINE_BYTES) for field, value in changes.items()):
            return super().update_runs(workspace, runs, changes, only_if_status_in=statuses)
        status = {"status": {"$in": statuses}} if statuses is not None else {}
        changed: List[str] = []
        for start in range(0, len(runs), _BULK_NAMES):
            chunk = list(runs[start:start + _BULK_NAMES])
            query = {"_id": {"$in": [_key(workspace, name) for name in chunk]}, **status}
            docs = _retrying(self.runs, lambda: list(self.runs.find(query, {"name": 1, "job": 1, "status": 1, OVERFLOW: 1})))
            aside = {d["name"] for d in docs if set(d.get(OVERFLOW) or {}) & set(changes)}
            plain = [_key(workspace, d["name"]) for d in docs if d["name"] not in aside]
            if plain:
                _retrying(self.runs, lambda: self.runs.update_many({"_id": {"$in": plain}, **status}, {"$set": changes}))
                if "status" in changes:  # as they were read: a run moved meanwhile is set right by the job's recount
                    moves: Dict[str, Dict[Tuple[Optional[str], str], int]] = {}
                    for d in docs:
                        if d["name"] not in aside:
                            job_moves = moves.setdefault(d["job"], {})
                            job_moves[(d["status"], changes["status"])] = job_moves.get((d["status"], changes["status"]), 0) + 1
                    for job, job_moves in moves.items():
                        self._move_counts(workspace, job, job_moves)
            done = {d["name"] for d in docs if d["name"] not in aside}
            done |= {name for name in aside if self._update(self.runs, "run", workspace, name, changes, statuses)}
            changed += [name for name in chunk if name in done]
        return changed

    def _update(self, collection, kind: str, workspace: str, name: str, changes: Dict[str, Any],
                only_if_status_in: Optional[Iterable[str]]) -> bool:
        doc_id = _key(workspace, name)
        query: Dict[str, Any] = {"_id": doc_id}
        if only_if_status_in is not None:
            query["status"] = {"$in": list(only_if_status_in)}
        inline, refs = self._set_aside(collection, doc_id, workspace, changes)
        update: Dict[str, Any] = {"$set": {**inline, **{f"{OVERFLOW}.{field}": ref for field, ref in refs.items()}}}
        replaced = [f"{OVERFLOW}.{field}" for field in changes
                    if field not in refs and field not in IDENTITY_FIELDS[collection.name]]
        if replaced:
            update["$unset"] = dict.fromkeys(replaced, "")
        # the document as it was says which values set aside these changes replace
        before = _retrying(collection, lambda: collection.find_one_and_update(
            query, update, projection={OVERFLOW: 1, "status": 1, "job": 1},
            return_document=pymongo.ReturnDocument.BEFORE))
        if before is None:
            if refs:
                self._delete_unreferenced(collection, doc_id, refs)
            if _retrying(collection, lambda: collection.find_one({"_id": doc_id}, {"_id": 1})) is None:
                raise NotFound(f"{kind} {name} not found in workspace {workspace}")
            return False
        old = before.get(OVERFLOW) or {}
        self._delete_parts(collection, doc_id, {field: ref for field, ref in old.items()
                                                if field in changes and ref != refs.get(field)})
        if kind == "run" and ("status" in changes or changes.get("started") is not None):
            # the run's write decided the move (its status before): the job counts it once. A crash
            # before this write loses it; the job's recount (roll_job's repair) puts it back
            self._move_counts(workspace, before["job"], {(before["status"], changes.get("status", before["status"])): 1},
                              changes.get("started"))
        return True

    def _move_counts(self, workspace: str, job: str, moves: Dict[Tuple[Optional[str], str], int],
                     started: Optional[float] = None) -> None:
        """One write to the job: moves is {(status before or None for a new run, status after): runs};
        started: a run's start, so the job's stays its first run's."""
        inc: Dict[str, int] = {}
        for (before, after), number in moves.items():
            if before == after or not number:
                continue
            if before is not None:
                inc[f"counts.{before}"] = inc.get(f"counts.{before}", 0) - number
            inc[f"counts.{after}"] = inc.get(f"counts.{after}", 0) + number
        update: Dict[str, Any] = {}
        if inc:
            update["$inc"] = {**inc, COUNTS_VERSION: 1}
        if started is not None:
            update["$min"] = {"started": started}  # recount_job never leaves a null here ($min keeps a null)
        if update:
            _retrying(self.jobs, lambda: self.jobs.update_one({"_id": _key(workspace, job)}, update))

    def recount_job(self, workspace: str, job: str) -> Dict[str, Any]:
        """The count is written only if no move was counted meanwhile (COUNTS_VERSION unchanged), else done again."""
        doc_id = _key(workspace, job)
        for attempt in range(RECOUNT_ATTEMPTS):
            seen = _retrying(self.jobs, lambda: self.jobs.find_one({"_id": doc_id}, {COUNTS_VERSION: 1})) or {}
            rollup = self.job_rollup(workspace, job)
            update: Dict[str, Any] = {"$set": {"counts": rollup["counts"]}}
            if rollup["started"] is None:
                update["$unset"] = {"started": ""}
            else:
                update["$set"]["started"] = rollup["started"]
            guard = {"_id": doc_id} if attempt == RECOUNT_ATTEMPTS - 1 else \
                {"_id": doc_id, COUNTS_VERSION: seen.get(COUNTS_VERSION)}  # moves without end: the last count stands
            if _retrying(self.jobs, lambda: self.jobs.update_one(guard, update)).matched_count:
                break
        return rollup

    def replace_metrics(self, workspace: str, run: str, rows: Iterable[Any]) -> None:
        """The run's rows in documents of `rows` ([step, name, value, time] each) of up to
        VALUE_INLINE_BYTES, numbered by `seq`; a row bigger than that alone, its rows set aside."""
        parent = f"{self.metrics.name}/{_key(workspace, run)}"  # the run's metric values set aside
        _retrying(self.metrics, lambda: self.metrics.delete_many({"workspace": workspace, "run": run}))
        _retrying(self.overflow, lambda: self.overflow.delete_many({"parent": parent}))
        chunks = enumerate(_metric_chunks(rows))  # a write's worth of a log held at a time, however long the log
        while batch := list(itertools.islice(chunks, METRIC_DOCS_PER_WRITE)):
            writes = []
            for seq, chunk in batch:
                doc_id = f"{workspace}/{run}/{seq}"  # set here, so a retried write replaces rather than duplicates
                doc = {"workspace": workspace, "run": run, "seq": seq, "rows": chunk}
                inline, refs = self._set_aside(self.metrics, doc_id, workspace, doc, parent)
                writes.append(pymongo.ReplaceOne({"_id": doc_id}, {"_id": doc_id, **_with_refs(inline, refs)}, upsert=True))
            _bulk_write(self.metrics, writes)

    # --- reads -------------------------------------------------------------------------------
    def get_job(self, workspace: str, job: str, *, hp_space: bool = True) -> Dict[str, Any]:
        # without: neither the field nor its parts set aside are read
        found = _job(self._read_one(self.jobs, _key(workspace, job),
                                    None if hp_space else {"hp_space": 0, f"{OVERFLOW}.hp_space": 0}))
        if found is None:
            raise NotFound(f"job {job} not found in workspace {workspace}")
        if not hp_space:
            del found["hp_space"]  # _record gives every field; this one was not read
        return found

    def get_run(self, workspace: str, run: str) -> Dict[str, Any]:
        found = _run(self._read_one(self.runs, _key(workspace, run)))
        if found is None:
            raise NotFound(f"run {run} not found in workspace {workspace}")
        return found

    def get_metrics(self, workspace: str, run: str) -> List[Dict[str, Any]]:
        fields = ("step", "name", "value", "time")
        docs = self._find_sorted(self.metrics, {"workspace": workspace, "run": run}, METRIC_ORDER,
                                 projection=dict.fromkeys(("_id", OVERFLOW, "rows", *fields), 1))
        metrics: List[Dict[str, Any]] = []
        for doc in docs:
            if "rows" in doc:
                metrics.extend(dict(zip(fields, row)) for row in doc["rows"])
            else:  # a row to a document, as stores written before chunks hold them
                metrics.append({field: doc.get(field) for field in fields})
        return metrics

    def job_rollup(self, workspace: str, job: str) -> Dict[str, Any]:
        rows = _retrying(self.runs, lambda: list(self.runs.aggregate([
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
        return [_job(doc) for doc in self._find_sorted(self.jobs, {"workspace": workspace}, JOB_ORDER)]

    def workspaces(self) -> List[str]:
        return sorted(_retrying(self.jobs, lambda: self.jobs.distinct("workspace")))

    def experiments(self, workspace: str) -> List[str]:
        return sorted(e for e in _retrying(self.jobs, lambda: self.jobs.distinct("experiment", {"workspace": workspace})) if e)

    def silent_runs(self, before: float) -> List[Dict[str, Any]]:
        query = {"status": "running", "$or": [{"heartbeat": {"$lt": before}},
                                              {"heartbeat": None, "started": {"$lt": before}}]}
        return [_run(doc) for doc in self._read(self.runs, lambda: list(self.runs.find(query)))]

    def has_key(self, workspace: str, group: str, name: str) -> bool:
        if group not in ("metrics", "hparams", "tags"):
            raise ValueError(f"has_key: expected metrics, hparams or tags, got {group!r}")
        query = {"workspace": workspace, _field(group, name): {"$exists": True}}
        return _retrying(self.runs, lambda: self.runs.find_one(query, projection={"_id": 1})) is not None

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
        # the server runs a regex itself: bound the whole query instead of one match
        bound_ms = int(REGEX_QUERY_SECONDS * 1000) if any(f.op == "regex" for f in query.filters) else None

        def ordered(descending: bool, limit: Optional[int]) -> List[Dict[str, Any]]:
            sort_field = None if query.sort is None else _field(query.sort.group, query.sort.name)
            if limit == 0:
                return []
            order = run_order(sort_field, -1 if descending else 1)
            try:
                docs = self._find_sorted(self.runs, match, order, limit=limit or 0, max_time_ms=bound_ms)
            except self._pymongo.errors.ExecutionTimeout:
                raise QueryError(f"--filter: a :regex: took more than {REGEX_QUERY_SECONDS:g} s on the stats "
                                 "store (it backtracks without end): simplify it") from None
            return [_run(doc) for doc in docs]

        if query.first is not None:
            return window(ordered(query.reverse, query.first), None, query.last)
        if query.last is not None:
            return ordered(not query.reverse, query.last)[::-1]
        return ordered(query.reverse, None)
