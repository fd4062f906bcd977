"""Report columns resolved against what the runs have (services/run_reports.py)."""
import pytest

from xt_submit.domain.run_query import QueryError, RunQuery, parse_filter, parse_sort
from xt_submit.services import run_reports


@pytest.fixture
def stats(parts):
    store = parts.ports.stats
    store.insert_runs([{"workspace": "ws1", "name": "run1.1", "job": "job1", "job_number": 1, "run_index": 1,
                        "status": "queued", "hparams": {"lr": 0.1, "width": 64}, "metrics": {}, "tags": {}}])
    store.update_run("ws1", "run1.1", {"status": "completed", "metrics": {"loss": 0.5, "width": 60}})
    return store


def resolved(stats, *filters, sort=None):
    query = RunQuery(workspace="ws1", filters=tuple(map(parse_filter, filters)), sort=parse_sort(sort) if sort else None)
    return run_reports.resolve(stats, query)


def test_a_bare_name_is_the_field_then_the_hparam_then_the_metric(stats):
    query, notes = resolved(stats, "lr=0.1", "loss<1", "status=completed", sort="loss")
    assert [(f.group, f.name) for f in query.filters] == [("hparams", "lr"), ("metrics", "loss"), (None, "status")]
    assert (query.sort.group, query.sort.name) == ("metrics", "loss") and notes == []


def test_a_bare_name_that_is_both_says_which_it_took(stats):
    query, notes = resolved(stats, "width>32")
    assert (query.filters[0].group, query.filters[0].name) == ("hparams", "width")
    assert notes == ["--filter width: runs have both hparams.width and metrics.width; using hparams.width "
                     "(write metrics.width for the metric)"]


@pytest.mark.parametrize(("filters", "sort", "message"), [
    ((), "nope", "--sort: unknown column 'nope' (no run has a field, hparam or metric of that name)"),
    (("metrics.los<0.5",), None, "--filter: unknown column 'metrics.los' (no run has it)"),
    (("hparams.loss=1",), None, "--filter: unknown column 'hparams.loss' (no run has it)"),
    (("lrr=0.1",), None, "--filter: unknown column 'lrr' (no run has a field, hparam or metric of that name)"),
])
def test_a_column_no_run_has_is_an_error(stats, filters, sort, message):
    with pytest.raises(QueryError) as error:
        resolved(stats, *filters, sort=sort)
    assert str(error.value) == message


def test_exists_filters_may_ask_about_names_no_run_has(stats):
    query, _ = resolved(stats, "metrics.nope:exists:$true", "nope:exists:$false")
    assert [(f.group, f.name) for f in query.filters] == [("metrics", "nope"), ("metrics", "nope")]
