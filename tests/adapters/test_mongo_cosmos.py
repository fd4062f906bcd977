"""The MongoDB stats adapter held to Azure Cosmos DB for MongoDB's rules (RU-based, server 3.6+), on the
real MongoDB peer: the connection string decides retryable writes; every sort the adapter issues has an
index with exactly its fields; throttled writes (16500) are retried, only those, as long as Cosmos asks;
no document reaches Cosmos's 2 MB limit."""
import uuid
from contextlib import contextmanager

import bson
import pymongo
import pytest
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import monitoring

from xt_submit.adapters.stats import mongo
from xt_submit.adapters.stats.mongo import MongoStats
from xt_submit.domain import run_query
from xt_submit.domain.records import JOB_FIELDS, MAPPING_FIELDS, RUN_FIELDS
from xt_submit.domain.run_log import MetricRow
from xt_submit.domain.run_query import RunQuery, SortKey, parse_filter, parse_sort
from xt_submit.ports import StatsStore

# what Cosmos DB says when it throttles (MicrosoftDocs/azure-docs#69351 shows one, inside a bulk write)
THROTTLED = ("Error=16500, RetryAfterMs={ms}, Details='Response status code does not indicate success: "
             "TooManyRequests (429); Substatus: 3200; Reason: ({{\r\n  \"Errors\": [\r\n    \"Request rate is large. "
             "More Request Units may be needed, so no changes were made.\"\r\n  ]\r\n}});'")
THROTTLED_WITHOUT_WAIT = "Error=16500, Details='Insert error.'"


def database() -> str:
    return f"xt_cosmos_{uuid.uuid4().hex[:12]}"


def with_option(uri: str, option: str) -> str:
    if "?" in uri:
        return f"{uri}&{option}"
    return f"{uri}{'?' if '/' in uri.partition('//')[2] else '/?'}{option}"


def run_doc(name: str, **fields):
    job_number, index = map(int, name[3:].split("."))
    return {"workspace": "ws1", "name": name, "job": f"job{job_number}", "job_number": job_number, "run_index": index,
            "status": "queued", "hparams": {"lr": 0.1}, "metrics": {}, "tags": {}, **fields}


class Commands(monitoring.CommandListener):
    """Every command a client sends: its name, collection and body."""

    def __init__(self):
        self.sent = []

    def started(self, event):
        self.sent.append((event.command_name, event.command.get(event.command_name), event.command))

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass

    def count(self, name: str, collection: str) -> int:
        return sum(1 for sent, target, _ in self.sent if (sent, target) == (name, collection))

    def sorts(self):
        """(collection, [(field, direction), ...]) of every sort sent: find's, findAndModify's, a $sort stage's."""
        for name, collection, command in self.sent:
            if name in ("find", "findAndModify") and command.get("sort"):
                yield collection, list(command["sort"].items())
            elif name == "aggregate":
                yield from ((collection, list(stage["$sort"].items())) for stage in command["pipeline"] if "$sort" in stage)


class FakeClock:
    """The retry loop's clock and wait: waits are recorded and pass at once."""

    def __init__(self):
        self.now, self.waits = 0.0, []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(mongo, "_sleep", fake.sleep)
    monkeypatch.setattr(mongo, "_clock", fake.monotonic)
    return fake


@contextmanager
def fail_point(client, mode, **data):
    """MongoDB's failCommand fail point (the peer has it; a real Cosmos DB does not: skipped there)."""
    try:
        client.admin.command({"configureFailPoint": "failCommand", "mode": mode, "data": data})
    except pymongo.errors.OperationFailure as exc:
        pytest.skip(f"the server has no failCommand fail point: {exc}")
    try:
        yield
    finally:
        client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})


def raw_sizes(collection):
    """The BSON size of each stored document, as the server holds it."""
    raw = collection.with_options(codec_options=CodecOptions(document_class=RawBSONDocument))
    return [len(doc.raw) for doc in raw.find()]


# --- retryable writes ------------------------------------------------------------------------------
def test_the_connection_string_decides_retryable_writes(mongo_uri):
    """Cosmos DB refuses retryable writes unless the account has EnableMongoRetryableWrites (and never
    for unordered bulk writes): its connection strings say retrywrites=false, and that must win."""
    cosmos_like = MongoStats(with_option(mongo_uri, "retrywrites=false"), database=database())
    assert cosmos_like.client.options.retry_writes is False
    plain = MongoStats(mongo_uri, database=database())
    assert plain.client.options.retry_writes is pymongo.MongoClient(mongo_uri, connect=False).options.retry_writes
    # the adapter's one default of its own, 10 s to find a server, gives way to the string too
    assert plain.client.options.server_selection_timeout == 10
    chosen = MongoStats(with_option(mongo_uri, "serverSelectionTimeoutMS=2500"), database=database())
    assert chosen.client.options.server_selection_timeout == 2.5


# --- an index for every sort -----------------------------------------------------------------------
def every_kind_of_query_sort():
    keys = [None, parse_sort("loss")] + [SortKey(None, name) for name in run_query.RUN_FIELDS] + [
        SortKey(group, name) for group in run_query.NESTED_GROUPS for name in ("loss", "lr", "note")]
    for key in keys:
        for reverse in (False, True):
            for first, last in ((None, None), (3, None), (None, 2), (5, 2)):
                yield RunQuery(workspace="ws1", sort=key, reverse=reverse, first=first, last=last)
    yield RunQuery(workspace="ws1", job="job1", status="completed", filters=(parse_filter("metrics.loss<1"),),
                   sort=SortKey("metrics", "loss"), runs=("run1.1",), jobs=("job2",), any_tags=("note",))


def exercise_every_port_method(store) -> set:
    """Call every StatsStore method, query_runs with every kind of sort; returns the names called."""
    called = set()

    def call(name, *args, **kwargs):
        called.add(name)
        return getattr(store, name)(*args, **kwargs)

    job = call("assign_job_name", "ws1", "submission-1")
    call("restore_job_name", "ws1", "submission-0", 7)
    for number in (1, 2):
        call("insert_job", {"workspace": "ws1", "name": f"job{number}", "number": number, "status": "queued",
                            "run_count": 2, "experiment": "mnist"})
    call("find_job_by_submission", "ws1", "submission-1")
    call("insert_runs", [run_doc(f"run{j}.{k}", tags={"note": "x"} if k == 1 else {}) for j in (1, 2) for k in (1, 2)])
    call("update_run", "ws1", "run1.1", {"status": "completed", "metrics": {"loss": 0.5, "acc": 0.9}, "ended": 2.0})
    call("update_job", "ws1", "job1", {"status": "running"})
    call("replace_metrics", "ws1", "run1.1", [MetricRow(1, "loss", 0.7, 1.0), MetricRow(2, "loss", 0.5, 2.0)])
    call("get_job", "ws1", job)
    call("get_run", "ws1", "run1.1")
    call("get_metrics", "ws1", "run1.1")
    call("job_rollup", "ws1", "job1")
    call("list_runs", "ws1", job="job1", status="completed")
    call("list_jobs", "ws1")
    call("has_key", "ws1", "metrics", "loss")
    call("workspaces")
    call("experiments", "ws1")
    call("silent_runs", 10.0)
    for query in every_kind_of_query_sort():
        call("query_runs", query)
    call("clear_workspace", "ws2")
    return called


def serves(index_key, sort) -> bool:
    """Cosmos DB serves a sort from an index whose paths are exactly the sorted ones, in order, with the
    same directions or all of them reversed."""
    if [field for field, _ in index_key] != [field for field, _ in sort]:
        return False
    signs = {index_direction * sort_direction for (_, index_direction), (_, sort_direction) in zip(index_key, sort)}
    return len(signs) == 1


def test_every_sort_the_adapter_issues_has_an_index_with_exactly_its_fields(mongo_uri):
    commands = Commands()
    store = MongoStats(mongo_uri, database=database(), client=mongo.connect(mongo_uri, event_listeners=[commands]))
    # every method of the port runs here: one added without being exercised fails this test
    assert exercise_every_port_method(store) == set(StatsStore.__abstractmethods__)
    sorts = list(commands.sorts())
    assert {collection for collection, _ in sorts} == {"runs", "jobs", "metrics"}
    indexes = {name: [list(index["key"].items()) for index in store.runs.database[name].list_indexes()]
               for name in ("runs", "jobs", "metrics")}
    unserved = {(collection, tuple(sort)) for collection, sort in sorts
                if not any(serves(key, sort) for key in indexes[collection])}
    assert not unserved, f"sorts Cosmos DB would refuse (no index with exactly their fields): {sorted(unserved)}"
    # a metric, hparam or tag sort got its index before its first query (made on demand: they are the user's names)
    for group in run_query.NESTED_GROUPS:
        assert [(f"{group}.loss", 1), ("job_number", 1), ("run_index", 1)] in indexes["runs"]


# --- throttling --------------------------------------------------------------------------------------
def test_a_throttled_bulk_write_resends_only_the_refused_writes_after_the_wait_cosmos_asks(throttling_proxy, mongo_uri,
                                                                                            clock):
    name = database()
    store = MongoStats(throttling_proxy.uri, database=name)
    throttling_proxy.refuse_writes(name, "runs", every=4, times=10)
    throttling_proxy.refuse_writes(name, "metrics", every=3, times=7)  # 6 of the 20 documents, then 1 of the 6 resent
    runs = [run_doc(f"run1.{k}", command=f"train --seed {k}") for k in range(1, 41)]
    store.insert_runs(runs)
    rows = [MetricRow(step, "loss", 1 / step, 100.0 + step) for step in range(1, 2001)]
    store.replace_metrics("ws1", "run1.1", rows)  # in 20 documents of ~100 rows

    assert throttling_proxy.refused == 10 + 7
    # the server got every write exactly once: none applied was sent again
    assert throttling_proxy.forwarded[(name, "runs")] == 40 and throttling_proxy.forwarded[(name, "metrics")] == 20
    assert clock.waits == [0.005] * 3  # RetryAfterMs=5, as Cosmos asked: runs once, metrics twice
    direct = MongoStats(mongo_uri, database=name)  # read past the proxy
    assert direct.metrics.count_documents({}) == 20
    assert direct.get_metrics("ws1", "run1.1") == [{"step": r.step, "name": r.name, "value": r.value, "time": r.time}
                                                   for r in rows]
    assert direct.runs.count_documents({}) == 40
    assert [(r["name"], r["command"]) for r in direct.list_runs("ws1")] == [(r["name"], r["command"]) for r in runs]


def test_a_throttled_single_write_waits_as_long_as_cosmos_asks_else_backs_off(mongo_uri, clock):
    store = MongoStats(mongo_uri, database=database())
    store.insert_runs([run_doc("run1.1")])
    with fail_point(store.client, {"times": 2}, failCommands=["update", "findAndModify"], errorCode=16500,
                    errorMessage=THROTTLED.format(ms=7)):
        assert store.update_run("ws1", "run1.1", {"status": "running"}, only_if_status_in=["queued"])
    assert clock.waits == [0.007, 0.007]
    assert store.get_run("ws1", "run1.1")["status"] == "running"

    clock.waits.clear()
    with fail_point(store.client, {"times": 8}, failCommands=["update", "findAndModify"], errorCode=16500,
                    errorMessage=THROTTLED_WITHOUT_WAIT):
        store.update_run("ws1", "run1.1", {"heartbeat": 5.0})
    assert len(clock.waits) == 8 and store.get_run("ws1", "run1.1")["heartbeat"] == 5.0
    for attempt, wait in enumerate(clock.waits):  # exponential, jittered, capped
        exponential = mongo.BACKOFF_FIRST_SECONDS * 2 ** attempt
        assert wait <= mongo.BACKOFF_CAP_SECONDS
        assert wait == mongo.BACKOFF_CAP_SECONDS or 0.5 * exponential <= wait <= 1.5 * exponential
    assert clock.waits[-1] == mongo.BACKOFF_CAP_SECONDS


def test_throttling_past_the_bound_is_a_one_line_error_naming_the_collection(mongo_uri, clock):
    commands = Commands()
    store = MongoStats(mongo_uri, database=database(), client=mongo.connect(mongo_uri, event_listeners=[commands]))
    with fail_point(store.client, "alwaysOn", failCommands=["update"], errorCode=16500,
                    errorMessage=THROTTLED.format(ms=5)):
        with pytest.raises(mongo.StatsThrottled) as by_attempts:
            store.insert_job({"workspace": "ws1", "name": "job1", "number": 1, "status": "queued", "run_count": 1})
    message = str(by_attempts.value)
    assert "\n" not in message and "\r" not in message and "'jobs'" in message and "16500" in message
    assert commands.count("update", "jobs") == mongo.RETRY_ATTEMPTS
    assert not isinstance(by_attempts.value, ValueError)  # not a OneLineError: the pipeline retries the message later

    clock.waits.clear()
    with fail_point(store.client, "alwaysOn", failCommands=["update"], errorCode=16500,
                    errorMessage=THROTTLED.format(ms=20_000)):
        with pytest.raises(mongo.StatsThrottled, match="'runs'"):
            store.insert_runs([run_doc("run1.1")])
    assert sum(clock.waits) == mongo.RETRY_SECONDS  # bounded in time too: 20 s asked, then only what was left


def test_a_write_error_that_is_not_throttling_is_raised_at_once(throttling_proxy, mongo_uri, clock):
    name = database()
    commands = Commands()
    store = MongoStats(mongo_uri, database=name, client=mongo.connect(mongo_uri, event_listeners=[commands]))
    store.metrics.create_index([("run", 1)], unique=True)  # so a run's second document of rows clashes
    with pytest.raises(pymongo.errors.BulkWriteError) as clash:
        store.replace_metrics("ws1", "run1.1", [MetricRow(step, "loss", 0.5, 1.0) for step in range(150)])
    assert [error["code"] for error in clash.value.details["writeErrors"]] == [11000]
    assert commands.count("update", "metrics") == 1 and clock.waits == []

    # throttled and refused writes in one bulk: the refusal is raised, nothing is resent
    proxied = MongoStats(throttling_proxy.uri, database=database())
    throttling_proxy.refuse_writes(proxied.runs.database.name, "runs", every=2, times=3, code=2, message="BadValue")
    with pytest.raises(pymongo.errors.BulkWriteError) as refused:
        proxied.insert_runs([run_doc(f"run1.{k}") for k in range(1, 11)])
    assert {error["code"] for error in refused.value.details["writeErrors"]} == {2}
    assert throttling_proxy.forwarded[(proxied.runs.database.name, "runs")] == 7 and clock.waits == []

    # a single write: once
    store.insert_runs([run_doc("run1.1")])
    before = commands.count("findAndModify", "runs") + commands.count("update", "runs")
    with fail_point(store.client, {"times": 1}, failCommands=["update", "findAndModify"], errorCode=2,
                    errorMessage="BadValue"):
        with pytest.raises(pymongo.errors.OperationFailure, match="BadValue"):
            store.update_run("ws1", "run1.1", {"status": "running"})
    assert commands.count("findAndModify", "runs") + commands.count("update", "runs") == before + 1


# --- documents under 2 MB ----------------------------------------------------------------------------
def test_a_runs_metric_rows_go_many_to_a_document_and_a_huge_value_goes_alone(mongo_uri):
    """Cosmos DB charges a write by its document's size, not its rows: ~100 rows in an 8 KB document
    cost 7 RU where a document each cost 5 RU a row. A row too big for a chunk is one of its own, its
    rows set aside like any big value."""
    store = MongoStats(mongo_uri, database=database())
    rows = ([MetricRow(step, "loss", 1 / (step + 1), float(step)) for step in range(1000)]
            + [MetricRow(1000, "curve", "x" * 100_000, 1000.0), MetricRow(1001, "loss", None, None)])
    store.replace_metrics("ws1", "run1.1", rows)
    docs = list(store.metrics.find({}))
    assert 11 <= len(docs) <= 13  # ~100 rows each, the big row alone, the last row
    inline = [doc for doc in docs if mongo.OVERFLOW not in doc]
    assert len(inline) == len(docs) - 1
    assert all(len(bson.encode(doc)) <= mongo.VALUE_INLINE_BYTES + 256 for doc in inline)
    assert store.get_metrics("ws1", "run1.1") == [{"step": r.step, "name": r.name, "value": r.value, "time": r.time}
                                                  for r in rows]
    store.replace_metrics("ws1", "run1.1", rows[:3])  # a redelivered finish replaces every document and part
    assert store.metrics.count_documents({}) == 1 and store.overflow.count_documents({}) == 0
    assert [m["step"] for m in store.get_metrics("ws1", "run1.1")] == [0, 1, 2]


def test_a_big_hp_space_is_kept_apart_so_the_job_document_each_run_updates_stays_small(mongo_uri):
    """Cosmos DB prices a write by its document's size, and a job's document is written at every run's
    start and end: a sweep's values (here 2,000 seeds, ~20 KB) are kept apart, read back whole."""
    store = MongoStats(mongo_uri, database=database())
    space = {"lr": [0.001 * k for k in range(10)], "seed": list(range(2000))}
    store.insert_job({"workspace": "ws1", "name": "job1", "number": 1, "status": "queued", "run_count": 20000,
                      "hp_space": space})
    store.update_job("ws1", "job1", {"status": "running"})
    (doc,) = store.jobs.find({})
    assert len(bson.encode(doc)) < 1024 and doc["hp_space"] is None and "hp_space" in doc[mongo.OVERFLOW]
    assert store.get_job("ws1", "job1")["hp_space"] == space
    commands = Commands()
    light = MongoStats(mongo_uri, database=store.jobs.database.name,
                       client=mongo.connect(mongo_uri, event_listeners=[commands]))
    assert light.get_job("ws1", "job1", hp_space=False)["status"] == "running"
    assert commands.count("find", "overflow") == 0  # its parts are not read for a run's event
    small = {"lr": [0.1, 0.01]}
    store.insert_job({"workspace": "ws1", "name": "job2", "number": 2, "status": "queued", "run_count": 2,
                      "hp_space": small})
    assert store.jobs.find_one({"_id": "ws1/job2"})["hp_space"] == small  # a small one stays in place


def test_metric_rows_stored_a_row_to_a_document_still_read(mongo_uri):
    store = MongoStats(mongo_uri, database=database())
    store.metrics.insert_many([{"_id": f"ws1/run1.1/{seq}", "workspace": "ws1", "run": "run1.1", "seq": seq,
                                "step": seq, "name": "loss", "value": 1 / (seq + 1), "time": float(seq)}
                               for seq in (2, 0, 1)])  # as stores written before chunks hold them
    assert store.get_metrics("ws1", "run1.1") == [{"step": seq, "name": "loss", "value": 1 / (seq + 1), "time": float(seq)}
                                                  for seq in (0, 1, 2)]


def test_a_run_with_a_3_mb_metrics_map_stays_under_2_mb_and_reads_back_whole(mongo_uri):
    store = MongoStats(mongo_uri, database=database())
    store.insert_runs([run_doc("run1.1"), run_doc("run1.2")])
    metrics = {f"m{k:05d}": k / 8 for k in range(20_000)}  # many small metrics
    metrics.update({f"curve{k:02d}": "x" * 50_000 for k in range(52)})  # and some big ones
    assert 2.9e6 < len(bson.encode(metrics)) < 3.3e6
    store.update_run("ws1", "run1.1", {"status": "completed", "metrics": metrics})

    assert max(raw_sizes(store.runs)) < 2_000_000 and max(raw_sizes(store.overflow)) < 2_000_000
    run = store.get_run("ws1", "run1.1")
    assert run["metrics"] == metrics and list(run["metrics"]) == list(metrics)
    # the small metrics stay in the run document: the store still filters and sorts on them
    found = store.query_runs(RunQuery(workspace="ws1", filters=(parse_filter("metrics.m00008==1"),)))
    assert [r["name"] for r in found] == ["run1.1"] and found[0]["metrics"] == metrics
    ordered = store.query_runs(RunQuery(workspace="ws1", sort=SortKey("metrics", "m00016"), reverse=True))
    assert [r["name"] for r in ordered] == ["run1.1", "run1.2"]
    assert store.list_runs("ws1", status="completed")[0]["metrics"] == metrics

    # a later, small map replaces it: the values kept aside go with it
    store.update_run("ws1", "run1.1", {"metrics": {"loss": 0.5}})
    assert store.get_run("ws1", "run1.1")["metrics"] == {"loss": 0.5}
    assert store.overflow.count_documents({}) == 0


def test_every_document_a_user_can_grow_stays_under_2_mb(mongo_uri):
    store = MongoStats(mongo_uri, database=database())
    big = "y" * 3_000_000
    job = {"workspace": "ws1", "name": "job1", "number": 1, "status": "queued", "run_count": 1, "command": big,
           "hp_space": {"lr": list(range(300_000))}, "tags": {"note": big}}
    store.insert_job(job)
    store.insert_runs([run_doc("run1.1", hparams={"grid": big, "lr": 0.1})])
    store.replace_metrics("ws1", "run1.1", [MetricRow(1, "log", big, 1.0), MetricRow(2, "loss", 0.5, 2.0)])
    store.update_job("ws1", "job1", {"tags": {"note": big + "!"}})

    for collection in (store.jobs, store.runs, store.metrics, store.overflow):
        assert max(raw_sizes(collection)) < 2_000_000, collection.name
    got = store.get_job("ws1", "job1")
    assert (got["command"], got["hp_space"], got["tags"]) == (big, job["hp_space"], {"note": big + "!"})
    assert store.list_jobs("ws1")[0]["hp_space"] == job["hp_space"]
    assert store.get_run("ws1", "run1.1")["hparams"] == {"grid": big, "lr": 0.1}
    assert store.get_metrics("ws1", "run1.1") == [{"step": 1, "name": "log", "value": big, "time": 1.0},
                                                  {"step": 2, "name": "loss", "value": 0.5, "time": 2.0}]
    kept_aside = store.overflow.count_documents({})
    # a redelivered insert keeps the first record and leaves nothing of its own behind
    store.insert_runs([run_doc("run1.1", hparams={"grid": big + "z"})])
    store.insert_job(dict(job, command=big + "z"))
    assert store.get_run("ws1", "run1.1")["hparams"]["grid"] == big and store.get_job("ws1", "job1")["command"] == big
    assert store.overflow.count_documents({}) == kept_aside
    store.replace_metrics("ws1", "run1.1", [MetricRow(1, "loss", 0.5, 1.0)])
    store.clear_workspace("ws1")
    assert store.overflow.count_documents({}) == 0


def test_what_a_document_keeps_inline_cannot_add_up_to_the_limit():
    """By construction: every value a user can grow has a budget in its document, and the budgets of
    the fields of a run, a job or a metric record add up to less than Cosmos DB's 2 MB."""
    for collection, fields in (("runs", RUN_FIELDS), ("jobs", JOB_FIELDS),
                               ("metrics", ("workspace", "run", "seq", "step", "name", "value", "time"))):
        budgets = [mongo.MAP_INLINE_BYTES if field in MAPPING_FIELDS else mongo.VALUE_INLINE_BYTES
                   for field in fields if field not in mongo.IDENTITY_FIELDS[collection]]
        names = 4 * 1024 * len(mongo.IDENTITY_FIELDS[collection])  # identity: names and keys, a few KiB at most
        references = 128 * len(budgets)  # a reference to the overflow collection for each
        assert sum(budgets) + names + references < mongo.DOCUMENT_LIMIT <= 2_000_000, collection
