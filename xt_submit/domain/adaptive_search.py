"""Adaptive sweeps: Bayesian (Optuna's TPE through ask/tell) and DGD (XT's distributed grid descent).

There is no controller process: each run's hparams are a pure function of the job's manifest and
the results of earlier runs, so whoever reacts to a RunFinished (the local host, any Functions
instance, a redelivery) computes the very same next run. The rule that makes it so:

    run k (k > concurrent) is planned from the results of runs 1 .. k - concurrent, told in run order.

Those runs have all ended before run k may start, so at most `concurrent` runs are live, and the
plan does not depend on the order in which runs finish or their events arrive. The price: a slow
run holds back the run `concurrent` places after it.
"""
from __future__ import annotations

import math
import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

from xt_submit.domain import sweep

ADAPTIVE_SEARCH_TYPES = ("bayesian", "dgd")
# Optuna's default for TPE: random points until this many runs have a result, then the model.
TPE_STARTUP_RUNS = 10

Point = Dict[str, Any]
# One earlier run for the optimizer: its hparams, and its primary metric (None: no usable result).
Result = Tuple[Point, Optional[float]]


class SearchError(sweep.SweepError):
    """A space the chosen search cannot work on."""


def is_adaptive(search_type: str) -> bool:
    return search_type in ADAPTIVE_SEARCH_TYPES


def check_space(params: List[Any], search_type: str, max_runs: Optional[int]) -> None:
    """What an adaptive search needs from the space and the options, as one-line errors."""
    if search_type == "bayesian" and max_runs is None:
        raise SearchError("bayesian search needs --max-runs (hyperparameter-search.max-runs): "
                          "the number of runs it may try")
    if search_type == "dgd":
        sampled = [p.name for p in params if p.values is None]
        if sampled:
            raise SearchError(f"dgd search walks a discrete grid: {', '.join(sampled)} "
                              "is a random distribution; give a list of values or $linspace(start,stop,count)")


def budget(params: List[Any], search_type: str, max_runs: Optional[int]) -> int:
    """How many runs the search may create at most."""
    if search_type == "dgd":
        grid = math.prod(len(p.values) for p in params) if params else 1
        return grid if max_runs is None else min(grid, max_runs)
    assert max_runs is not None  # check_space
    return max_runs


def first_points(params: List[Any], *, search_type: str, count: int, seed: int) -> List[Point]:
    """The runs planned at dispatch: random points (distinct grid points for dgd)."""
    if search_type == "dgd":
        rng = _rng(seed, 0)
        points: List[Point] = []
        while len(points) < count:
            point = _random_grid_point(params, rng, points)
            if point is None:
                break
            points.append(point)
        return points
    return sweep.plan_compiled(params, search_type="random", runs=count, max_runs=None, seed=seed)


def next_point(params: List[Any], *, search_type: str, index: int, seed: int, maximize: bool,
               results: Sequence[Result], planned: Sequence[Point]) -> Optional[Point]:
    """The hparams of run `index` (1-based), from `results` (runs 1 .. index - concurrent, in order)
    and `planned` (every run so far, 1 .. index - 1). None: the search has nothing left to try."""
    if search_type == "dgd":
        return _dgd_point(params, _rng(seed, index), maximize, results, planned)
    return _tpe_point(params, seed, index, maximize, results)


def best(results: Sequence[Result], maximize: bool) -> Optional[Result]:
    """The run with the best usable result (the first of equals), or None."""
    usable = [(point, value) for point, value in results if value is not None]
    if not usable:
        return None
    return max(usable, key=lambda r: r[1]) if maximize else min(usable, key=lambda r: r[1])


def usable_value(value: Any) -> Optional[float]:
    """A recorded metric as the optimizer's number: finite int or float, else None (a failed trial)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _rng(seed: int, index: int) -> random.Random:
    """One stream per (seed, run index): planning run k never depends on how often run k-1 was planned."""
    import hashlib  # here: OpenSSL's binding (~3 ms) is for the searches that pick points, not every `xt run`

    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# --- DGD ------------------------------------------------------------------------------------


def _random_grid_point(params: List[Any], rng: random.Random, avoid: Sequence[Point]) -> Optional[Point]:
    """A random grid point not in `avoid` (None once the whole grid is taken)."""
    grid = math.prod(len(p.values) for p in params) if params else 1
    taken = {_key(point) for point in avoid}
    if len(taken) >= grid:
        return None
    for _ in range(64):  # rejection is quick while the grid is mostly free
        point = {p.name: rng.choice(p.values) for p in params}
        if _key(point) not in taken:
            return point
    # a mostly taken grid: walk it in a random rotation (bounded by the planned-runs limit)
    start = rng.randrange(grid)
    for offset in range(grid):
        point = _grid_point(params, (start + offset) % grid)
        if _key(point) not in taken:
            return point
    return None


def _grid_point(params: List[Any], number: int) -> Point:
    point = {}
    for p in reversed(params):
        number, position = divmod(number, len(p.values))
        point[p.name] = p.values[position]
    return {p.name: point[p.name] for p in params}


def _dgd_point(params: List[Any], rng: random.Random, maximize: bool, results: Sequence[Result],
               planned: Sequence[Point]) -> Optional[Point]:
    """A neighbour (one value one step along one axis) of the best point so far that no run has
    had; failing that, of the next best; failing that, any point not yet tried."""
    taken = {_key(point) for point in planned}
    usable = [(point, value) for point, value in results if value is not None]
    ranked = sorted(range(len(usable)), key=lambda i: (-usable[i][1] if maximize else usable[i][1], i))
    for i in ranked:
        neighbours = _neighbours(params, usable[i][0])
        rng.shuffle(neighbours)
        for point in neighbours:
            if _key(point) not in taken:
                return point
    return _random_grid_point(params, rng, planned)


def _neighbours(params: List[Any], point: Point) -> List[Point]:
    found = []
    for p in params:
        try:
            position = p.values.index(point[p.name])
        except (KeyError, ValueError):
            continue  # a point from outside the grid (an edited manifest): no neighbours there
        for step in (-1, 1):
            if 0 <= position + step < len(p.values):
                found.append({**point, p.name: p.values[position + step]})
    return found


def _key(point: Point) -> Tuple:
    return tuple(sorted((name, type(value).__name__, value) for name, value in point.items()))


# --- Bayesian (TPE) -------------------------------------------------------------------------


def _tpe_point(params: List[Any], seed: int, index: int, maximize: bool, results: Sequence[Result]) -> Point:
    """Ask a TPE study rebuilt from `results`: the study is a function of them, never a process's memory."""
    import optuna  # only an adaptive job's handler pays for it

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = _distributions(params, optuna.distributions)
    sampler = optuna.samplers.TPESampler(seed=_rng(seed, index).randrange(2**32), n_startup_trials=TPE_STARTUP_RUNS)
    study = optuna.create_study(direction="maximize" if maximize else "minimize", sampler=sampler)
    for point, value in results:
        known = {name: point[name] for name in distributions if name in point}
        if len(known) != len(distributions) or not all(_fits(distributions[n], v) for n, v in known.items()):
            continue  # not a point of this space (an edited manifest): the study cannot use it
        state = optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.FAIL
        study.add_trial(optuna.trial.create_trial(params=known, distributions=distributions, state=state,
                                                  value=value if value is not None else None))
    asked = study.ask(fixed_distributions=distributions).params if distributions else {}
    rng = _rng(seed, index)
    point = {}
    for p in params:
        shape = sweep.search_shape(p)
        if p.name in asked:
            value = asked[p.name]
            point[p.name] = sweep.quantize(value, shape[4]) if shape and len(shape) > 4 else value
        else:
            point[p.name] = p.draw(rng)  # a fixed value, or a distribution TPE has no shape for (normal)
    return point


def _fits(distribution: Any, value: Any) -> bool:
    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return any(type(value) is type(choice) and value == choice for choice in choices)
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and distribution.low <= value <= distribution.high)


def _distributions(params: List[Any], dists: Any) -> Dict[str, Any]:
    found: Dict[str, Any] = {}
    for p in params:
        if p.values is not None:
            if len(p.values) > 1:
                found[p.name] = dists.CategoricalDistribution(list(p.values))
            continue
        shape = sweep.search_shape(p)
        if shape is None:
            continue
        if shape[0] == "int":
            found[p.name] = dists.IntDistribution(shape[1], shape[2])
        else:
            found[p.name] = dists.FloatDistribution(shape[1], shape[2], log=shape[3])
    return found
