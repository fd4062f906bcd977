"""The run query model: parsing, and each store held to the reference semantics (run_query.matches
plus NULL-first ordering) on the same data."""
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xt_submit.adapters.stats.sqlite import SqliteStats
from xt_submit.domain.run_query import (Filter, QueryError, RunQuery, SortKey, parse_filter, parse_run_list, parse_sort,
                                 selects, window)

STATUSES = ["completed", "error", "running", "queued"]


def make_runs():
    rng = random.Random(5)
    runs = []
    for job in (1, 2):
        for k in range(1, 31):
            metrics = {}
            if rng.random() < 0.85:
                metrics["loss"] = round(rng.uniform(0, 2), 3)
            if rng.random() < 0.8:
                metrics["acc"] = rng.choice([round(rng.uniform(0, 1), 3), 1, 0])
            if rng.random() < 0.1:
                metrics["acc"] = "nan"  # a word where numbers usually are
            hparams = {"lr": rng.choice([0.01, 0.1, 1]), "opt": rng.choice(["sgd", "adam", "adamw"])}
            if rng.random() < 0.3:
                hparams["warm"] = rng.choice([True, False])
            tags = {"note": rng.choice(["base", "try-2", ""])} if rng.random() < 0.4 else {}
            runs.append({"workspace": "ws1", "name": f"run{job}.{k}", "job": f"job{job}", "job_number": job,
                         "run_index": k, "status": rng.choice(STATUSES), "hparams": hparams, "metrics": metrics,
                         "tags": tags, "exit_code": rng.choice([0, 1, None]),
                         "duration": rng.choice([None, round(rng.uniform(1, 9), 2)])})
    return runs


RUNS = make_runs()


def fill(store):
    store.insert_runs([{k: v for k, v in r.items() if k not in ("metrics",)} | {"metrics": {}} for r in RUNS])
    for r in RUNS:
        store.update_run("ws1", r["name"], {"metrics": r["metrics"]})
    # a run in another workspace never shows
    store.insert_runs([{"workspace": "ws2", "name": "run1.1", "job": "job1", "job_number": 1, "run_index": 1,
                        "status": "completed", "hparams": {}, "metrics": {}, "tags": {}}])
    return store


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    return fill(SqliteStats(str(tmp_path_factory.mktemp("q") / "stats.db")))


@pytest.fixture(scope="module")
def mongo_store(mongo_uri):
    from xt_submit.adapters.stats.mongo import MongoStats

    return fill(MongoStats(mongo_uri, database="xt_query_contract"))


@pytest.fixture(params=["sqlite", "mongo"])
def store(request):
    return request.getfixturevalue(f"{request.param}_store")


def _sort_value(record, key: SortKey):
    container = record if key.group is None else record.get(key.group) or {}
    value = container.get(key.name)
    if value is None:
        return (0, 0)
    if isinstance(value, str):
        return (2, value)
    return (1, float(value))


def reference(query: RunQuery):
    rows = [r for r in RUNS if selects(r, query)]
    rows.sort(key=lambda r: ((_sort_value(r, query.sort) if query.sort else (0, 0)), r["job_number"], r["run_index"]),
              reverse=query.reverse)
    return window(rows, query.first, query.last)


FILTER_TEXTS = [
    "metrics.loss>1", "metrics.loss<=0.5", "loss>=0.2", "metrics.acc=1", "metrics.acc!=1", "metrics.acc:exists:$true",
    "metrics.acc:exists:$false", "metrics.acc=nan", "metrics.acc:regex:^n", "metrics.loss=$none",
    "hparams.lr=0.1", "hparams.lr>0.05", "hparams.opt=adam", "hparams.opt:regex:^adam", "hparams.opt!=sgd",
    "hparams.warm=$true", "hparams.warm=$false", "hparams.warm:exists:$false", "hparams.warm!=$true",
    "tags.note:exists:$true", "tags.note=try-2", "tags.note:regex:-\\d$", "tags.note=''",
    "status=completed", "status<>error", "exit_code=0", "exit_code=$none", "duration>4", "name:regex:^run2\\.1",
]
SORTS = [None, "metrics.loss", "acc", "hparams.lr", "hparams.opt", "tags.note", "duration", "exit_code", "name"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(filters=st.lists(st.sampled_from(FILTER_TEXTS), max_size=3), sort=st.sampled_from(SORTS),
       reverse=st.booleans(), first=st.none() | st.integers(0, 70), last=st.none() | st.integers(0, 70),
       job=st.sampled_from([None, "job1", "job2"]), status=st.sampled_from([None, "completed", "error"]),
       run_list=st.sampled_from([(), ("run1.2-run1.9",), ("run2.*",), ("job1", "run2.3"), ("run1.4,run2.30",)]),
       any_tags=st.sampled_from([(), ("note",), ("note", "missing")]))
def test_store_agrees_with_reference(store, filters, sort, reverse, first, last, job, status, run_list, any_tags):
    runs, jobs = parse_run_list(list(run_list))
    query = RunQuery(workspace="ws1", job=job, status=status, filters=tuple(map(parse_filter, filters)),
                     sort=parse_sort(sort) if sort else None, reverse=reverse, first=first, last=last,
                     runs=runs, jobs=jobs, any_tags=any_tags)
    got = [r["name"] for r in store.query_runs(query)]
    assert got == [r["name"] for r in reference(query)]


def test_filter_on_sort_column_with_last_keeps_the_filter(store):
    """XT lost a filter on the sort column; here it holds."""
    query = RunQuery(workspace="ws1", filters=(parse_filter("metrics.loss<0.5"),), sort=parse_sort("metrics.loss"),
                     last=5)
    rows = store.query_runs(query)
    assert len(rows) == 5 and all(r["metrics"]["loss"] < 0.5 for r in rows)
    assert [r["metrics"]["loss"] for r in rows] == sorted(r["metrics"]["loss"] for r in rows)


@pytest.mark.parametrize("text,parsed", [
    ("metrics.loss>0.5", Filter("metrics", "loss", ">", 0.5)),
    ("loss < 2", Filter("metrics", "loss", "<", 2)),
    ("status=completed", Filter(None, "status", "==", "completed")),
    ("hparams.opt<>sgd", Filter("hparams", "opt", "!=", "sgd")),
    ("tags.note:exists:$false", Filter("tags", "note", "exists", False)),
    ("hparams.warm == $true", Filter("hparams", "warm", "==", True)),
    ("name:regex:^run1\\.", Filter(None, "name", "regex", "^run1\\.")),
])
def test_parse_filter(text, parsed):
    assert parse_filter(text) == parsed


@pytest.mark.parametrize("text,message", [
    ("loss", "expected 'prop op value'"),
    ("loss>", "missing a value after >"),
    ("foo.bar=1", "expected a run field or metrics.NAME"),
    ("tags.note:exists:yes", ":exists: takes $true or $false"),
    ("name:regex:[", "bad regular expression"),
    ("loss>$true", "> needs a number or a word"),
    ("metrics.a'b=1", "expected 'prop op value'"),
])
def test_malformed_filters_are_one_line_errors(text, message):
    with pytest.raises(QueryError, match=message.replace("$", r"\$").replace("[", r"\[")) as info:
        parse_filter(text)
    assert "\n" not in str(info.value)


def test_run_lists():
    assert parse_run_list(["run23.1-run23.3", "run302.*", "job7,run23.2"]) == (
        ("run23.1", "run23.2", "run23.3"), ("job302", "job7"))
    for bad in ("run23.3-run23.1", "run1.1-run2.5", "runx", "job0"):
        with pytest.raises(QueryError, match="run list"):
            parse_run_list([bad])
