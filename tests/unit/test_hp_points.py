"""A manifest's hp_points (exactly these runs, what xt rerun submits) and --set values."""
import msgspec
import pytest

from xt_submit.domain.manifest import check_manifest, compile_manifest
from xt_submit.domain.messages import ContractError, JobManifest
from xt_submit.domain.sweep import SweepError, parse_set_values

BASE = JobManifest(workspace="ws1", experiment="e", script="t.py", command="python t.py")


def test_hp_points_are_the_runs_in_their_order():
    points = [{"lr": 0.3, "opt": "sgd"}, {"lr": 0.1}, {"lr": 0.3, "opt": "sgd"}]
    assert compile_manifest(msgspec.structs.replace(BASE, hp_points=points)) == points


@pytest.mark.parametrize("points, hp_space, expected", [
    ([], {}, "hp_points: expected 1 to 100,000 runs, got 0"),
    ([{"lr": [1, 2]}], {}, "hp_points[0]: lr[0]: expected a number"),
    ([{"lr": 1}, {"bad name": 1}], {}, "hp_points[1]: bad name: parameter name must be"),
    ([{"lr": 1}], {"lr": [1, 2]}, "hp_points: expected no hp_space beside it"),
])
def test_bad_hp_points_are_refused_naming_the_point(points, hp_space, expected):
    with pytest.raises(ContractError) as caught:
        check_manifest(msgspec.structs.replace(BASE, hp_points=points, hp_space=hp_space))
    assert f"xt_manifest.json: {expected}" in str(caught.value)


def test_set_values_are_typed_as_sweep_values():
    assert parse_set_values(["lr=0.2", "layers=3", "opt=adam", "tag=1e-3x"], "--set") == {
        "lr": 0.2, "layers": 3, "opt": "adam", "tag": "1e-3x"}


@pytest.mark.parametrize("item", ["lr", "=1", "lr=", "lr=[1,2]", "lr=$uniform(0,1)", "bad name=1"])
def test_a_set_value_must_be_one_fixed_value(item):
    with pytest.raises(SweepError, match=r"--set: expected name=value \(one fixed value\)"):
        parse_set_values([item], "--set")
