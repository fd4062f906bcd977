import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xt_submit.domain import sweep
from xt_submit.domain.sweep import (
    SweepError,
    format_hparam_args,
    load_hp_config,
    plan_runs,
    split_script_args,
    validate_space,
)

ACCEPTANCE_ARGS = ["--lr=[0.01,0.03,0.1]", "--opt=[sgd,adam]", "--beta=[$linspace(.1,.9,5)]", "--seed=[$randint()]"]


def acceptance_space():
    return split_script_args(ACCEPTANCE_ARGS)[1]


def grid(space, runs=None, max_runs=None, seed=0):
    return plan_runs(space, search_type="grid", runs=runs, max_runs=max_runs, seed=seed)


def random_search(space, runs=None, max_runs=None, seed=0):
    return plan_runs(space, search_type="random", runs=runs, max_runs=max_runs, seed=seed)


def sample_values(spec, seed, runs=50):
    return [run["x"] for run in random_search({"x": spec}, runs=runs, seed=seed)]


# --- split_script_args ----------------------------------------------------------------------


def test_split_keeps_fixed_args_in_order_and_types_sweep_values():
    fixed, space = split_script_args(
        ["train.py", "--epochs=3", *ACCEPTANCE_ARGS, "-v", "--name", "[not-a-sweep]", "--data=x.csv"]
    )
    assert fixed == ["train.py", "--epochs=3", "-v", "--name", "[not-a-sweep]", "--data=x.csv"]
    assert space == {
        "lr": [0.01, 0.03, 0.1],
        "opt": ["sgd", "adam"],
        "beta": ["$linspace(.1,.9,5)"],
        "seed": ["$randint()"],
    }
    assert list(space) == ["lr", "opt", "beta", "seed"]


def test_split_types_values_int_float_then_string():
    _, space = split_script_args(["--x=[1,-2,2.5,.5,1e-3,true,False,nan,relu(x)]"])
    values = space["x"]
    assert values == [1, -2, 2.5, 0.5, 0.001, "true", "False", "nan", "relu(x)"]
    assert [type(v) for v in values[:5]] == [int, int, float, float, float]


def test_split_does_not_split_commas_inside_function_parens():
    _, space = split_script_args(["--x=[$uniform(0, 1)]", "--y=[1,$linspace(0,1,3),5]"])
    assert space == {"x": ["$uniform(0, 1)"], "y": [1, "$linspace(0,1,3)", 5]}
    assert grid(space) == [{"x": run["x"], "y": y} for run, y in zip(grid(space), [1, 0, 0.5, 1, 5])]


def test_split_with_no_sweep_args():
    assert split_script_args(["a.py", "--lr=0.1"]) == (["a.py", "--lr=0.1"], {})


@pytest.mark.parametrize(
    "arg",
    ["--lr=[0.1,", "--lr=[]", "--lr=[", "--lr=[0.1,,0.2]", "--lr=[0.1,]", "--lr=[ ]", "--lr=[[1,2]]",
     "--lr=[$uniform(0,1]", "--lr=[1)]", "--lr=[a]b"],
)
def test_split_malformed_bracket_value_names_the_arg(arg):
    with pytest.raises(SweepError) as info:
        split_script_args(["train.py", arg])
    message = str(info.value)
    assert message.startswith("--lr: expected a list like [0.01,0.1] or $func(args), got ")
    assert repr(arg.partition("=")[2]) in message


def test_split_rejects_duplicate_sweep_arg():
    with pytest.raises(SweepError, match=r"^--lr: sweep given more than once$"):
        split_script_args(["--lr=[1]", "--lr=[2]"])


# --- counting rules -------------------------------------------------------------------------


def test_acceptance_grid_counts():
    space = acceptance_space()
    assert len(grid(space)) == 30
    assert len(grid(space, max_runs=25)) == 25
    assert len(grid(space, runs=150, max_runs=200)) == 150
    assert len(grid(space, max_runs=1000)) == 30


def test_runs_above_max_runs_is_an_error():
    with pytest.raises(SweepError, match=r"^--runs: 300 exceeds --max-runs 200$"):
        grid(acceptance_space(), runs=300, max_runs=200)
    with pytest.raises(SweepError, match=r"^--runs: 300 exceeds --max-runs 200$"):
        random_search(acceptance_space(), runs=300, max_runs=200)


def test_random_counts():
    space = acceptance_space()
    assert len(random_search(space, runs=7)) == 7
    assert len(random_search(space, max_runs=12)) == 12
    assert len(random_search(space, runs=5, max_runs=12)) == 5
    with pytest.raises(SweepError, match=r"^random search needs --runs or --max-runs$"):
        random_search(space)


@pytest.mark.parametrize("search_type", ["grid", "random"])
def test_empty_space_is_one_run_or_runs_copies(search_type):
    assert plan_runs({}, search_type=search_type, runs=None, max_runs=None, seed=0) == [{}]
    plan = plan_runs({}, search_type=search_type, runs=3, max_runs=None, seed=0)
    assert plan == [{}, {}, {}]
    plan[0]["x"] = 1
    assert plan[1] == {}  # separate dicts, not one aliased dict


def test_unknown_search_type():
    with pytest.raises(SweepError, match=r"^--search-type: expected one of grid, random, got 'bayesian'$"):
        plan_runs({"x": [1]}, search_type="bayesian", runs=None, max_runs=None, seed=0)


@pytest.mark.parametrize("option,kwargs", [("--runs", {"runs": 0}), ("--max-runs", {"max_runs": -1}),
                                           ("--runs", {"runs": True}), ("--max-runs", {"max_runs": 2.0})])
def test_bad_run_counts(option, kwargs):
    with pytest.raises(SweepError, match=rf"^{option}: expected a positive integer, got "):
        grid({"x": [1]}, **kwargs)


def test_bad_seed():
    with pytest.raises(SweepError, match=r"^--seed: expected an integer, got '1'$"):
        plan_runs({"x": [1]}, search_type="grid", runs=None, max_runs=None, seed="1")


# --- grid order and wrapping ----------------------------------------------------------------


def test_grid_order_last_param_varies_fastest():
    space = {"a": [1, 2], "b": ["x", "y", "z"], "c": 7}
    assert grid(space) == [
        {"a": 1, "b": "x", "c": 7}, {"a": 1, "b": "y", "c": 7}, {"a": 1, "b": "z", "c": 7},
        {"a": 2, "b": "x", "c": 7}, {"a": 2, "b": "y", "c": 7}, {"a": 2, "b": "z", "c": 7},
    ]


def test_grid_max_runs_truncates_in_order():
    space = {"a": [1, 2], "b": ["x", "y", "z"]}
    assert grid(space, max_runs=4) == grid(space)[:4]


def test_grid_wraps_when_runs_exceed_product():
    space = {"a": [1, 2], "b": ["x", "y"]}
    full = grid(space)
    assert grid(space, runs=10) == full + full + full[:2]
    assert grid(space, runs=3) == full[:3]


def test_grid_keeps_space_order_with_distribution_in_the_middle():
    space = {"a": [1, 2], "r": "$uniform(0,1)", "b": ["x", "y"]}
    plan = grid(space)
    assert [list(run) for run in plan] == [["a", "r", "b"]] * 4
    assert [(run["a"], run["b"]) for run in plan] == [(1, "x"), (1, "y"), (2, "x"), (2, "y")]
    assert len({run["r"] for run in plan}) == 4  # sampled per run
    assert format_hparam_args(plan[0]).startswith(" --a=1 --r=")


def test_grid_only_distributions_is_one_run_unless_runs_given():
    assert len(grid({"r": "$uniform(0,1)"})) == 1
    plan = grid({"r": "$uniform(0,1)"}, runs=5)
    assert len({run["r"] for run in plan}) == 5


def test_grid_expands_linspace_and_choice_as_discrete():
    space = {"a": "$linspace(0,1,3)", "b": ["$choice(x,2)", 3.5], "c": "$choice(p,q)"}
    plan = grid(space)
    assert len(plan) == 3 * 3 * 2
    assert plan[:3] == [{"a": 0, "b": "x", "c": "p"}, {"a": 0, "b": "x", "c": "q"}, {"a": 0, "b": 2, "c": "p"}]


def test_random_search_picks_only_listed_values_and_covers_them():
    space = {"a": [1, 2, 3], "b": "fixed", "c": "$linspace(.1,.9,5)"}
    plan = random_search(space, runs=300, seed=3)
    assert {run["a"] for run in plan} == {1, 2, 3}
    assert {run["b"] for run in plan} == {"fixed"}
    assert {run["c"] for run in plan} == {0.1, 0.3, 0.5, 0.7, 0.9}


# --- functions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("$linspace(.1,.9,5)", [0.1, 0.3, 0.5, 0.7, 0.9]),
        ("$linspace(0,1,11)", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
        ("$linspace(1,5,5)", [1, 2, 3, 4, 5]),
        ("$linspace(10,0,3)", [10, 5, 0]),
        ("$linspace(0,1,2)", [0, 1]),
        ("$linspace(0.5,2,1)", [0.5]),
        ("$choice(sgd, adam, 3, 0.5)", ["sgd", "adam", 3, 0.5]),
    ],
)
def test_discrete_functions_values(spec, expected):
    values = [run["x"] for run in grid({"x": spec})]
    assert values == expected
    assert [type(v) for v in values] == [type(v) for v in expected]


def test_linspace_with_int_ends_but_fractional_step_gives_floats():
    assert [run["x"] for run in grid({"x": "$linspace(0,1,3)"})] == [0, 0.5, 1]
    assert [type(run["x"]) for run in grid({"x": "$linspace(0,1,3)"})] == [float] * 3


def test_list_with_one_distribution_means_that_distribution():
    values = [run["x"] for run in grid({"x": ["$uniform(5,6)"]}, runs=20)]
    assert all(5 <= v <= 6 for v in values) and len(set(values)) == 20


def test_randint_defaults():
    values = sample_values("$randint()", seed=0, runs=200)
    assert all(type(v) is int and 0 <= v < 2**31 - 1 for v in values)
    assert max(values) > 2**30  # really uses the wide default range
    assert set(sample_values("$randint(3)", seed=0, runs=200)) == {0, 1, 2}
    assert set(sample_values("$randint(-2, 1)", seed=0, runs=200)) == {-2, -1, 0}


SEEDS = st.integers(min_value=0, max_value=2**64)


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, low=st.integers(-1000, 1000), width=st.integers(1, 1000))
def test_randint_range_property(seed, low, width):
    values = sample_values(f"$randint({low},{low + width})", seed)
    assert all(type(v) is int and low <= v < low + width for v in values)


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, low=st.floats(-1e6, 1e6), width=st.floats(0, 1e6))
def test_uniform_range_property(seed, low, width):
    high = low + width
    values = sample_values(f"$uniform({low!r},{high!r})", seed)
    assert all(type(v) is float and low <= v <= high for v in values)


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, low=st.floats(-20, 5), width=st.floats(0, 10))
def test_loguniform_range_property(seed, low, width):
    high = low + width
    values = sample_values(f"$loguniform({low!r},{high!r})", seed)
    assert all(math.exp(low) * (1 - 1e-12) <= v <= math.exp(high) * (1 + 1e-12) for v in values)


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, low=st.integers(-100, 100), width=st.integers(0, 1000), q=st.sampled_from([1, 2, 5, 0.5, 0.1, 0.25]))
def test_quniform_range_property(seed, low, width, q):
    high = low + width
    values = sample_values(f"$quniform({low},{high},{q})", seed)
    for v in values:
        assert low - q / 2 <= v <= high + q / 2
        assert abs(v / q - round(v / q)) < 1e-9  # a multiple of q
        assert type(v) is (int if isinstance(q, int) else float)
        assert v == float(f"{v:.12g}")  # no float noise like 0.30000000000000004


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, q=st.sampled_from([1, 3, 0.5]))
def test_q_distributions_are_multiples_of_q(seed, q):
    for spec in (f"$qnormal(10,3,{q})", f"$qloguniform(0,3,{q})", f"$qlognormal(0,1,{q})"):
        for v in sample_values(spec, seed):
            assert abs(v / q - round(v / q)) < 1e-9
            assert type(v) is (int if isinstance(q, int) else float)
    assert all(v >= 0 for v in sample_values(f"$qlognormal(0,1,{q})", seed))


def test_normal_and_lognormal_shapes():
    normal = sample_values("$normal(10, 2)", seed=1, runs=2000)
    assert all(type(v) is float for v in normal)
    mean = sum(normal) / len(normal)
    std = math.sqrt(sum((v - mean) ** 2 for v in normal) / len(normal))
    assert abs(mean - 10) < 0.3 and abs(std - 2) < 0.3
    lognormal = sample_values("$lognormal(0, 1)", seed=1, runs=2000)
    assert all(v > 0 for v in lognormal)
    logs = sorted(math.log(v) for v in lognormal)
    assert abs(logs[len(logs) // 2]) < 0.15  # median of exp(N(0,1)) is 1


# --- determinism ----------------------------------------------------------------------------


ALL_FUNCTIONS_SPACE = {
    "c": [1, 2, 3],
    "ri": "$randint(100)",
    "u": "$uniform(0,1)",
    "n": "$normal(0,1)",
    "lu": "$loguniform(-5,0)",
    "ln": "$lognormal(0,1)",
    "qu": "$quniform(0,100,5)",
    "qn": "$qnormal(0,10,0.5)",
    "qlu": "$qloguniform(0,5,1)",
    "qln": "$qlognormal(0,1,0.1)",
    "ls": ["$linspace(0,1,4)"],
}


@pytest.mark.parametrize("search_type", ["grid", "random"])
def test_same_seed_same_plan_different_seed_different_plan(search_type):
    def plan(seed):
        return plan_runs(ALL_FUNCTIONS_SPACE, search_type=search_type, runs=50, max_runs=None, seed=seed)

    assert plan(42) == plan(42)
    assert plan(42) != plan(43)
    for name in ("ri", "u", "n", "lu", "ln"):
        assert [r[name] for r in plan(42)] != [r[name] for r in plan(43)]


def test_plan_does_not_touch_global_random_state():
    import random

    random.seed(5)
    expected = random.random()
    random.seed(5)
    plan_runs(ALL_FUNCTIONS_SPACE, search_type="random", runs=20, max_runs=None, seed=1)
    assert random.random() == expected


@pytest.mark.parametrize("search_type", ["grid", "random"])
def test_shorter_plan_is_a_prefix_of_longer_plan(search_type):
    def plan(runs):
        return plan_runs(ALL_FUNCTIONS_SPACE, search_type=search_type, runs=runs, max_runs=None, seed=9)

    assert plan(100)[:37] == plan(37)


def test_space_survives_manifest_round_trip():
    space = {**acceptance_space(), **ALL_FUNCTIONS_SPACE, "flag": True, "rate": 1.0}
    decoded = msgspec.json.decode(msgspec.json.encode(space))
    assert decoded == space
    for search_type in ("grid", "random"):
        before = plan_runs(space, search_type=search_type, runs=40, max_runs=None, seed=4)
        after = plan_runs(decoded, search_type=search_type, runs=40, max_runs=None, seed=4)
        assert before == after
        assert msgspec.json.decode(msgspec.json.encode(before)) == before


def test_ten_thousand_runs_plan_correctly():
    space = acceptance_space()
    plan = grid(space, runs=10_000, seed=7)
    assert len(plan) == 10_000
    first_cycle = grid(space, seed=7)
    assert [{k: v for k, v in run.items() if k != "seed"} for run in plan[:30]] == [
        {k: v for k, v in run.items() if k != "seed"} for run in first_cycle
    ]
    assert all(plan[i]["lr"] == plan[i % 30]["lr"] and plan[i]["beta"] == plan[i % 30]["beta"] for i in range(10_000))
    assert all(0 <= run["seed"] < 2**31 - 1 for run in plan)
    assert len({run["seed"] for run in plan}) > 9_900

    plan = random_search(space, max_runs=10_000, seed=7)
    assert len(plan) == 10_000
    assert {run["opt"] for run in plan} == {"sgd", "adam"}
    assert {run["beta"] for run in plan} == {0.1, 0.3, 0.5, 0.7, 0.9}


# --- hp-config files ------------------------------------------------------------------------


def test_load_hp_config_good_file(tmp_path):
    path = tmp_path / "hp.yaml"
    path.write_text(
        "hyperparameter-distributions:\n"
        "  lr: [0.01, 0.03, 0.1]\n"
        "  opt: [sgd, adam]\n"
        "  beta: $linspace(.1,.9,5)\n"
        "  seed: [$randint()]\n"
        "  epochs: 5\n"
        "  dropout: $uniform(0, 0.5)\n"
    )
    space = load_hp_config(str(path))
    assert space == {
        "lr": [0.01, 0.03, 0.1],
        "opt": ["sgd", "adam"],
        "beta": "$linspace(.1,.9,5)",
        "seed": ["$randint()"],
        "epochs": 5,
        "dropout": "$uniform(0, 0.5)",
    }
    assert len(grid(space)) == 30
    assert {run["epochs"] for run in grid(space)} == {5}


@pytest.mark.parametrize(
    "text,expected",
    [
        ("hyperparameter-distributions:\n  lr: [0.1,\n", "invalid YAML at line "),
        ("", "expected the top-level key hyperparameter-distributions:"),
        ("- 1\n- 2\n", "expected the top-level key hyperparameter-distributions:"),
        ("lr: [1, 2]\n", "expected the top-level key hyperparameter-distributions:"),
        ("hyperparameter-distributions:\n  lr: [1]\nruns: 3\n", "unexpected top-level key 'runs'"),
        ("hyperparameter-distributions:\n", "hyperparameter-distributions: expected a mapping of name -> values"),
        ("hyperparameter-distributions: [1, 2]\n", "hyperparameter-distributions: expected a mapping"),
        ("hyperparameter-distributions:\n  lr: $foo(1)\n",
         "hyperparameter-distributions.lr: unknown function $foo (expected one of choice, randint, "),
        ("hyperparameter-distributions:\n  lr: []\n", "hyperparameter-distributions.lr: empty list"),
        ("hyperparameter-distributions:\n  lr:\n", "hyperparameter-distributions.lr: expected a number"),
        ("hyperparameter-distributions:\n  lr: {a: 1}\n", "hyperparameter-distributions.lr: expected a number"),
        ("hyperparameter-distributions:\n  lr: [1, [2]]\n", "hyperparameter-distributions.lr[1]: expected a number"),
        ("hyperparameter-distributions:\n  lr: [1, .inf]\n",
         "hyperparameter-distributions.lr[1]: expected a finite number"),
        ("hyperparameter-distributions:\n  lr: $uniform(1, 0)\n", "hyperparameter-distributions.lr: $uniform needs low <= high"),
        ("hyperparameter-distributions:\n  bad name: [1]\n",
         "hyperparameter-distributions.bad name: parameter name must be letters"),
        ("hyperparameter-distributions:\n  1: [1]\n", "hyperparameter-distributions.1: parameter name must be"),
    ],
)
def test_load_hp_config_bad_files(tmp_path, text, expected):
    path = tmp_path / "hp.yaml"
    path.write_text(text)
    with pytest.raises(SweepError) as info:
        load_hp_config(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_load_hp_config_missing_file(tmp_path):
    path = tmp_path / "missing.yaml"
    with pytest.raises(SweepError, match=r"missing\.yaml: hp-config file not found$"):
        load_hp_config(str(path))


def test_load_hp_config_directory(tmp_path):
    with pytest.raises(SweepError, match=r"cannot read hp-config file"):
        load_hp_config(str(tmp_path))


# --- validation errors: one line, naming the parameter --------------------------------------


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("$foo(1)", "x: unknown function $foo (expected one of choice, randint, uniform"),
        ("$uniform", "x: expected $func(args), got '$uniform'"),
        ("$HOME", "x: expected $func(args), got '$HOME'"),
        ("$uniform(0)", "x: $uniform(low, high) takes 2 arguments, got 1"),
        ("$uniform(0,1,2)", "x: $uniform(low, high) takes 2 arguments, got 3"),
        ("$uniform(0,)", "x: $uniform high: expected a finite number, got ''"),
        ("$uniform(0,abc)", "x: $uniform high: expected a finite number, got 'abc'"),
        ("$uniform(0,__import__('os'))", "x: $uniform high: expected a finite number"),
        ("$uniform(0,inf)", "x: $uniform high: expected a finite number, got 'inf'"),
        ("$uniform(0,1e999)", "x: $uniform high: expected a finite number, got '1e999'"),
        ("$uniform(2,1)", "x: $uniform needs low <= high, got low=2, high=1"),
        ("$loguniform(2,1)", "x: $loguniform needs low <= high"),
        ("$loguniform(0,1000)", "x: $loguniform takes log-space bounds; exp(1000) overflows"),
        ("$normal(0,0)", "x: $normal needs sigma > 0, got 0"),
        ("$lognormal(0,-1)", "x: $lognormal needs sigma > 0"),
        ("$lognormal(700,1)", "x: $lognormal(700, 1) can overflow"),
        ("$randint(5,5)", "x: $randint needs low < high (the range is [low, high)), got low=5, high=5"),
        ("$randint(0)", "x: $randint needs low < high"),
        ("$randint(1,2,3)", "x: $randint(low=0, high=2147483647) takes 0 to 2 arguments, got 3"),
        ("$randint(1.5)", "x: $randint high: expected an integer, got '1.5'"),
        ("$quniform(0,1)", "x: $quniform(low, high, q) takes 3 arguments, got 2"),
        ("$quniform(0,1,0)", "x: $quniform needs q > 0, got 0"),
        ("$qnormal(0,1,-1)", "x: $qnormal needs q > 0"),
        ("$qloguniform(1,0,1)", "x: $qloguniform needs low <= high"),
        ("$qlognormal(0,0,1)", "x: $qlognormal needs sigma > 0"),
        ("$linspace(0,1)", "x: $linspace(start, stop, count) takes 3 arguments, got 2"),
        ("$linspace(0,1,0)", "x: $linspace count must be between 1 and 1000000, got 0"),
        ("$linspace(0,1,2.0)", "x: $linspace count: expected an integer, got '2.0'"),
        ("$linspace(0,1,10000000)", "x: $linspace count must be between 1 and 1000000"),
        ("$choice()", "x: $choice(v1, v2, ...) needs at least one value"),
        ("$choice(a,,b)", "x: $choice(v1, v2, ...) needs at least one value and no empty ones"),
        ("$choice($uniform(0,1))", "x: $choice arguments must be plain values"),
        ([], "x: empty list (expected at least one value)"),
        (["$uniform(0,1)", 2], "x: random distribution '$uniform(0,1)' must be the only element of its list"),
        (["$randint()", "$randint()"], "x: random distribution '$randint()' must be the only element"),
        ([1, None], "x[1]: expected a number, string, bool, list or $func(args), got NoneType"),
        (None, "x: expected a number, string, bool, list or $func(args), got NoneType"),
        ({"a": 1}, "x: expected a number, string, bool, list or $func(args), got dict"),
        (float("nan"), "x: expected a finite number, got nan"),
    ],
)
def test_validate_space_errors_name_the_parameter(spec, expected):
    with pytest.raises(SweepError) as info:
        validate_space({"x": spec})
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)
    with pytest.raises(SweepError) as info:
        validate_space({"x": spec}, source="job.json")
    assert str(info.value).startswith("job.json: " + expected)
    with pytest.raises(SweepError):  # plan_runs refuses the same space
        grid({"x": spec})


@pytest.mark.parametrize("name", ["-lr", "1lr", "", "a b", "a\nb", "lr;rm"])
def test_validate_space_rejects_non_identifier_names(name):
    with pytest.raises(SweepError, match="parameter name must be letters") as info:
        validate_space({name: [1]})
    assert "\n" not in str(info.value)


def test_validate_space_rejects_non_mapping():
    with pytest.raises(SweepError, match=r"^hp: expected a mapping of name -> spec, got list$"):
        validate_space([1, 2], source="hp")


def test_validate_space_accepts_all_spec_kinds():
    validate_space(ALL_FUNCTIONS_SPACE)
    validate_space({"a": 1, "b": "text", "c": True, "d": 0.5, "e": [True, "x", 1, 2.5], "f": ["$randint()"]})
    validate_space({})


@pytest.mark.parametrize(
    "arg,expected",
    [
        ("--lr=[$foo(1)]", "--lr: unknown function $foo (expected one of"),
        ("--lr=[$uniform(1,0)]", "--lr: $uniform needs low <= high"),
        ("--learning rate=[1,2]", "--learning rate: parameter name must be letters"),
        ("--=[1,2]", "--: parameter name must be letters"),
        ("--lr=[$uniform(0,1),0.5]", "--lr: random distribution '$uniform(0,1)' must be the only element"),
    ],
)
def test_split_validates_specs_and_names_the_arg(arg, expected):
    with pytest.raises(SweepError) as info:
        split_script_args([arg])
    assert str(info.value).startswith(expected)


# --- format_hparam_args ---------------------------------------------------------------------


def test_format_hparam_args():
    assert format_hparam_args({"lr": 0.01, "opt": "sgd"}) == " --lr=0.01 --opt=sgd"
    assert format_hparam_args({}) == ""
    hparams = {"a": 3, "b": 1e-05, "c": 0.1 + 0.2, "d": True, "e": False, "f": "true", "g": 100000.0, "h": -2}
    assert format_hparam_args(hparams) == (
        " --a=3 --b=1e-05 --c=0.30000000000000004 --d=True --e=False --f=true --g=100000.0 --h=-2"
    )


@settings(max_examples=100, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_format_floats_round_trip(value):
    text = format_hparam_args({"x": value})
    assert float(text.removeprefix(" --x=")) == value


def test_format_rejects_unformattable_values():
    with pytest.raises(SweepError, match=r"^x: cannot format a list as a command-line value$"):
        format_hparam_args({"x": [1]})


def test_split_then_plan_then_format_end_to_end():
    fixed, space = split_script_args(["train.py", "--epochs=3", "--lr=[0.01,0.1]", "--opt=[sgd,adam]"])
    commands = [" ".join(fixed) + format_hparam_args(run) for run in grid(space)]
    assert commands == [
        "train.py --epochs=3 --lr=0.01 --opt=sgd",
        "train.py --epochs=3 --lr=0.01 --opt=adam",
        "train.py --epochs=3 --lr=0.1 --opt=sgd",
        "train.py --epochs=3 --lr=0.1 --opt=adam",
    ]


@pytest.mark.parametrize("space, runs, max_runs, planned", [
    ({"a": list(range(100)), "b": list(range(100)), "c": list(range(100)), "d": list(range(100))}, None, None,
     "100,000,000"),
    ({"a": "$linspace(0,1,1000000)", "b": "$linspace(0,1,1000000)"}, None, None, "1,000,000,000,000"),
    ({"lr": "$uniform(0,1)"}, None, 10**12, "1,000,000,000,000"),
    ({"lr": [0.1, 0.2]}, 200_001, None, "200,001"),
])
def test_a_sweep_past_the_run_limit_is_refused_before_anything_is_planned(space, runs, max_runs, planned):
    with pytest.raises(sweep.SweepError) as caught:
        sweep.plan_runs(space, search_type="random" if max_runs else "grid", runs=runs, max_runs=max_runs, seed=1)
    assert str(caught.value) == (f"the sweep plans {planned} runs, more than the limit of "
                                 f"{sweep.MAX_PLANNED_RUNS:,} per job: narrow the space, or set --runs / --max-runs")


def test_a_huge_grid_capped_by_max_runs_plans_only_those():
    space = {"a": list(range(100)), "b": list(range(100)), "c": list(range(100)), "d": list(range(100))}
    plan = sweep.plan_runs(space, search_type="grid", runs=None, max_runs=3, seed=1)
    assert plan == [{"a": 0, "b": 0, "c": 0, "d": 0}, {"a": 0, "b": 0, "c": 0, "d": 1}, {"a": 0, "b": 0, "c": 0, "d": 2}]
