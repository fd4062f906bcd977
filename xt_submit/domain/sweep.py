"""Hyperparameter sweeps in XT syntax: parse them, validate them, expand them into runs.

A *space* maps a parameter name to a spec, and is plain JSON so it can travel in a job manifest:

- a list of values (a choice); a `"$linspace(a,b,n)"` or `"$choice(...)"` element expands in
  place, and a list holding a single random distribution string means that distribution;
- a scalar (a fixed value);
- a `"$func(args)"` string (a distribution).

`plan_runs` is deterministic for a given seed: a redelivered submit message must re-plan the
very same runs.
"""
from __future__ import annotations

import functools
import itertools
import math
import operator
import random
import re
import shlex
import sys
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

from xt_submit.domain.errors import OneLineError


_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

class SweepError(OneLineError):
    """A sweep argument, hp-config file or space that cannot be expanded (one-line message)."""


HP_CONFIG_KEY = "hyperparameter-distributions"
SEARCH_TYPES = ("grid", "random")
RANDINT_DEFAULT_HIGH = 2**31 - 1
MAX_LINSPACE_COUNT = 1_000_000  # guards against a typo allocating millions of grid values
# A job's runs are recorded and queued one by one: past MAX_PLANNED_RUNS, a typo (a 4-parameter x100
# grid is 10^8 runs) would take the planner's memory and the store with it. Checked before any is planned.
from xt_submit.domain.limits import MAX_PLANNED_RUNS  # noqa: E402,F401

_INT_RE = re.compile(r"[+-]?[0-9]+")
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_CALL_RE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)\((.*)\)", re.DOTALL)
_MAX_EXP_ARG = math.log(sys.float_info.max)  # exp() of anything larger overflows
# random.normalvariate never returns more than ~12.2 sigma from mu (its u2 is >= 2**-53).
_NORMAL_MAX_SIGMAS = 13

Value = Union[int, float, str, bool]
Sampler = Callable[[random.Random], Value]


class _Param(NamedTuple):
    name: str
    values: Optional[Tuple[Value, ...]]  # discrete params (grid axes); None for distributions
    draw: Sampler  # one random pick, used by random search and for distributions in a grid


# --- command line and hp-config file -------------------------------------------------------


def is_sweep_arg(arg: str) -> bool:
    """`--name=[...]`: a swept parameter, not a fixed argument."""
    option, has_value, value = arg.partition("=")
    return arg.startswith("--") and bool(has_value) and value.startswith("[")


def split_script_args(script_args: List[str]) -> Tuple[List[str], Dict[str, object]]:
    """Separate `--name=[...]` sweep args from the fixed ones (kept in order).

    Returns (fixed_args, space)."""
    fixed: List[str] = []
    space: Dict[str, object] = {}
    for arg in script_args:
        if not is_sweep_arg(arg):
            fixed.append(arg)
            continue
        option, _, value = arg.partition("=")
        name = option[2:]
        if name in space:
            raise SweepError(f"--{name}: sweep given more than once")
        space[name] = _parse_bracket_list(f"--{name}", value)
    _compile_space(space, "--")
    return fixed, space


def _parse_bracket_list(label: str, text: str) -> List[Value]:
    """'[0.01,sgd,$linspace(.1,.9,5)]' -> [0.01, 'sgd', '$linspace(.1,.9,5)'] (no eval)."""
    malformed = SweepError(f"{label}: expected a list like [0.01,0.1] or $func(args), got {text!r}")
    if len(text) < 3 or not text.endswith("]"):
        raise malformed
    body = text[1:-1]
    items: List[str] = []
    depth = start = 0
    for index, char in enumerate(body):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise malformed
        elif char in "[]":
            raise malformed
        elif char == "," and depth == 0:  # commas inside $func(...) belong to the call
            items.append(body[start:index])
            start = index + 1
    items.append(body[start:])
    items = [item.strip() for item in items]
    if depth or not all(items):
        raise malformed
    return [item if item.startswith("$") else _typed(item) for item in items]


def parse_set_values(items: List[str], option: str) -> Dict[str, Value]:
    """`name=value` items (xt rerun --set lr=0.2) as fixed hparams, typed as sweep values are."""
    values: Dict[str, Value] = {}
    for item in items:
        name, equals, text = item.partition("=")
        if not equals or not _PARAM_NAME.fullmatch(name) or not text or text.startswith(("[", "$")):
            raise SweepError(f"{option}: expected name=value (one fixed value), got {item!r}")
        values[name] = _typed(text)
    return values


def _typed(text: str) -> Value:
    """int if it reads as an int, else float, else the bare string ('true' stays a string)."""
    if _INT_RE.fullmatch(text):
        try:
            return int(text)
        except ValueError:  # more digits than int() accepts from a string
            return text
    if _NUMBER_RE.fullmatch(text):
        number = float(text)
        if math.isfinite(number):
            return number
    return text


def load_hp_config(path: str) -> Dict[str, object]:
    """Read an hp-config YAML file (`hyperparameter-distributions:` name -> spec) into a space."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        raise SweepError(f"{path}: hp-config file not found") from None
    except UnicodeDecodeError:
        raise SweepError(f"{path}: hp-config file is not UTF-8 text") from None
    except OSError as exc:
        raise SweepError(f"{path}: cannot read hp-config file ({exc.strerror or exc})") from None
    import yaml  # only an hp-config file needs it: dispatch and the CLI's other paths do not pay for it

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SweepError(f"{path}: invalid YAML{_yaml_problem(exc)}") from None

    if not isinstance(document, dict) or HP_CONFIG_KEY not in document:
        raise SweepError(f"{path}: expected the top-level key {HP_CONFIG_KEY}:")
    for key in document:
        if key != HP_CONFIG_KEY:
            raise SweepError(f"{path}: unexpected top-level key {key!r} (only {HP_CONFIG_KEY} is allowed)")
    space = document[HP_CONFIG_KEY]
    if not isinstance(space, dict) or not space:
        raise SweepError(f"{path}: {HP_CONFIG_KEY}: expected a mapping of name -> values, got {space!r}")
    _compile_space(space, f"{path}: {HP_CONFIG_KEY}.")
    return {name: list(spec) if isinstance(spec, list) else spec for name, spec in space.items()}


def _yaml_problem(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None)
    return f"{where}: {problem}" if problem else where


# --- validation: a space compiles to one _Param per name ------------------------------------


def validate_space(space: Dict[str, object], source: str = "") -> None:
    """Raise SweepError for any spec that cannot be expanded; messages start with `source: `."""
    _compile(space, source)


def compile_space(space: Dict[str, object], source: str = "") -> List[_Param]:
    """The space checked and compiled, for plan_compiled (compile a submission's space once)."""
    return _compile(space, source)


def _compile(space: Any, source: str) -> List[_Param]:
    if not isinstance(space, dict):
        raise SweepError(f"{source or 'hyperparameter space'}: expected a mapping of name -> spec, "
                         f"got {type(space).__name__}")
    return _compile_space(space, f"{source}: " if source else "")


def _compile_space(space: Dict[str, Any], prefix: str) -> List[_Param]:
    params = []
    for name, spec in space.items():
        label = prefix + (name if isinstance(name, str) and name.isprintable() else repr(name))
        if not (isinstance(name, str) and _PARAM_NAME.match(name)):
            raise SweepError(f"{label}: parameter name must be letters, digits, '_' or '-', "
                             "starting with a letter or '_'")
        compiled = _compile_spec(label, spec)
        if callable(compiled):
            params.append(_Param(name, None, compiled))
        else:
            params.append(_Param(name, compiled, _choice_sampler(compiled)))
    return params


def _compile_spec(label: str, spec: Any) -> Union[Tuple[Value, ...], Sampler]:
    """-> the discrete values, or a sampler for a random distribution."""
    if isinstance(spec, (list, tuple)):
        return _compile_list(label, spec)
    if _is_call(spec):
        return _compile_call(label, spec)
    _check_value(label, spec)
    return (spec,)


def _compile_list(label: str, items: Union[list, tuple]) -> Union[Tuple[Value, ...], Sampler]:
    if not items:
        raise SweepError(f"{label}: empty list (expected at least one value)")
    values: List[Value] = []
    for index, item in enumerate(items):
        if not _is_call(item):
            _check_value(f"{label}[{index}]", item)
            values.append(item)
            continue
        compiled = _compile_call(label, item)
        if not callable(compiled):
            values.extend(compiled)
        elif len(items) == 1:
            return compiled
        else:
            raise SweepError(f"{label}: random distribution {item!r} must be the only element of its list")
    return tuple(values)


def _is_call(spec: Any) -> bool:
    return isinstance(spec, str) and spec.lstrip().startswith("$")


def _check_value(label: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise SweepError(f"{label}: expected a finite number, got {value!r}")
    if not isinstance(value, (int, float, str)):  # bool is an int
        raise SweepError(f"{label}: expected a number, string, bool, list or $func(args), "
                         f"got {type(value).__name__}")


def _choice_sampler(values: Tuple[Value, ...]) -> Sampler:
    if len(values) == 1:  # a fixed value consumes no randomness, so it never shifts other params
        only = values[0]
        return lambda rng: only
    return lambda rng: rng.choice(values)


# --- $func(args) --------------------------------------------------------------------------


def _compile_call(label: str, text: str) -> Union[Tuple[Value, ...], Sampler]:
    match = _CALL_RE.fullmatch(text.strip())
    if not match:
        raise SweepError(f"{label}: expected $func(args), got {text!r}")
    func, arg_text = match.groups()
    if func not in _FUNCTIONS:
        raise SweepError(f"{label}: unknown function ${func} (expected one of {', '.join(_FUNCTIONS)})")
    args = [arg.strip() for arg in arg_text.split(",")] if arg_text.strip() else []
    return _FUNCTIONS[func](label, args)


def _number(label: str, func: str, arg_name: str, text: str) -> Union[int, float]:
    if _INT_RE.fullmatch(text):
        try:
            return int(text)
        except ValueError:  # too many digits: fall through to the error
            pass
    elif _NUMBER_RE.fullmatch(text) and math.isfinite(float(text)):
        return float(text)
    raise SweepError(f"{label}: ${func} {arg_name}: expected a finite number, got {text!r}")


def _whole(label: str, func: str, arg_name: str, text: str) -> int:
    if _INT_RE.fullmatch(text):
        try:
            return int(text)
        except ValueError:  # too many digits: fall through to the error
            pass
    raise SweepError(f"{label}: ${func} {arg_name}: expected an integer, got {text!r}")


def _numbers(label: str, func: str, args: List[str], arg_names: Tuple[str, ...]) -> List[Union[int, float]]:
    if len(args) != len(arg_names):
        raise SweepError(f"{label}: ${func}({', '.join(arg_names)}) takes {len(arg_names)} arguments, "
                         f"got {len(args)}")
    return [_number(label, func, name, text) for name, text in zip(arg_names, args)]


def _require(condition: bool, label: str, message: str) -> None:
    if not condition:
        raise SweepError(f"{label}: {message}")


def _round12(value: float) -> float:
    """Drop float noise (0.30000000000000004 -> 0.3) by keeping 12 significant digits."""
    return float(f"{value:.12g}")


def _quantize(x: float, q: Union[int, float]) -> Union[int, float]:
    """q*round(x/q) as in hyperopt; an integer q gives an int, so `--batch=32` not `32.0`."""
    steps = round(x / q)
    return q * steps if isinstance(q, int) else _round12(q * steps)


def quantize(x: float, q: Union[int, float]) -> Union[int, float]:
    """The q-distributions' rounding, for a value an optimizer proposed in their range."""
    return _quantize(x, q)


def _choice(label: str, args: List[str]) -> Tuple[Value, ...]:
    _require(bool(args) and all(args), label, "$choice(v1, v2, ...) needs at least one value and no empty ones")
    for arg in args:
        _require(not arg.startswith("$"), label, f"$choice arguments must be plain values, got {arg!r}")
    return tuple(_typed(arg) for arg in args)


def _linspace(label: str, args: List[str]) -> Tuple[Value, ...]:
    if len(args) != 3:
        raise SweepError(f"{label}: $linspace(start, stop, count) takes 3 arguments, got {len(args)}")
    start = _number(label, "linspace", "start", args[0])
    stop = _number(label, "linspace", "stop", args[1])
    count = _whole(label, "linspace", "count", args[2])
    _require(1 <= count <= MAX_LINSPACE_COUNT, label,
             f"$linspace count must be between 1 and {MAX_LINSPACE_COUNT}, got {count}")
    if count == 1:
        return (start,)
    if isinstance(start, int) and isinstance(stop, int) and (stop - start) % (count - 1) == 0:
        whole_step = (stop - start) // (count - 1)  # whole steps between int ends: keep ints
        return tuple(start + i * whole_step for i in range(count))
    step = (stop - start) / (count - 1)
    return tuple(_round12(start + i * step) for i in range(count - 1)) + (_round12(stop),)


def _shaped(sampler: Sampler, shape: Tuple) -> Sampler:
    """Mark a sampler with what an optimizer needs to search its range itself (adaptive_search):
    ("int", low, high_inclusive) or ("float", low, high, log). Unmarked ones are only sampled."""
    sampler.search_shape = shape  # type: ignore[attr-defined]
    return sampler


def search_shape(param: "_Param") -> Optional[Tuple]:
    """The marked range of a distribution parameter (None: discrete, or sampled only)."""
    return getattr(param.draw, "search_shape", None) if param.values is None else None


def _randint(label: str, args: List[str]) -> Sampler:
    arg_names = {0: (), 1: ("high",), 2: ("low", "high")}.get(len(args))
    if arg_names is None:
        raise SweepError(f"{label}: $randint(low=0, high={RANDINT_DEFAULT_HIGH}) takes 0 to 2 arguments, "
                         f"got {len(args)}")
    bounds = [_whole(label, "randint", name, text) for name, text in zip(arg_names, args)]
    low, high = [0, RANDINT_DEFAULT_HIGH][: 2 - len(bounds)] + bounds
    _require(low < high, label, f"$randint needs low < high (the range is [low, high)), got low={low}, high={high}")
    return _shaped(lambda rng: rng.randrange(low, high), ("int", low, high - 1))


def _uniform(label: str, args: List[str], func: str = "uniform", extra: Tuple[str, ...] = ()) -> Sampler:
    low, high, *_ = _numbers(label, func, args, ("low", "high") + extra)
    _require(low <= high, label, f"${func} needs low <= high, got low={low}, high={high}")
    return _shaped(lambda rng: rng.uniform(low, high), ("float", float(low), float(high), False))


def _loguniform(label: str, args: List[str], func: str = "loguniform", extra: Tuple[str, ...] = ()) -> Sampler:
    low, high, *_ = _numbers(label, func, args, ("low", "high") + extra)
    _require(low <= high, label, f"${func} needs low <= high, got low={low}, high={high}")
    _require(high <= _MAX_EXP_ARG, label, f"${func} takes log-space bounds; exp({high}) overflows")
    sampler: Sampler = lambda rng: math.exp(rng.uniform(low, high))  # noqa: E731
    if math.exp(low) > 0:  # log-space bounds far below zero underflow: that range is only sampled
        _shaped(sampler, ("float", math.exp(low), math.exp(high), True))
    return sampler


def _normal(label: str, args: List[str], func: str = "normal", extra: Tuple[str, ...] = ()) -> Sampler:
    mu, sigma, *_ = _numbers(label, func, args, ("mu", "sigma") + extra)
    _require(sigma > 0, label, f"${func} needs sigma > 0, got {sigma}")
    return lambda rng: rng.normalvariate(mu, sigma)


def _lognormal(label: str, args: List[str], func: str = "lognormal", extra: Tuple[str, ...] = ()) -> Sampler:
    mu, sigma, *_ = _numbers(label, func, args, ("mu", "sigma") + extra)
    _require(sigma > 0, label, f"${func} needs sigma > 0, got {sigma}")
    _require(mu + _NORMAL_MAX_SIGMAS * sigma <= _MAX_EXP_ARG, label,
             f"${func}({mu}, {sigma}) can overflow: mu + {_NORMAL_MAX_SIGMAS}*sigma must be <= 709")
    return lambda rng: rng.lognormvariate(mu, sigma)


def _quantized(base: Callable[..., Sampler], func: str) -> Callable[[str, List[str]], Sampler]:
    """The q-variant of a distribution: its checks plus q > 0, then q*round(x/q)."""

    def build(label: str, args: List[str]) -> Sampler:
        sample = base(label, args, func=func, extra=("q",))
        q = _number(label, func, "q", args[2])
        _require(q > 0, label, f"${func} needs q > 0, got {q}")
        quantized: Sampler = lambda rng: _quantize(float(sample(rng)), q)  # noqa: E731  (the bases draw floats)
        shape = getattr(sample, "search_shape", None)
        return _shaped(quantized, (*shape, q)) if shape else quantized

    return build


_FUNCTIONS: Dict[str, Callable[[str, List[str]], Union[Tuple[Value, ...], Sampler]]] = {
    "choice": _choice,
    "randint": _randint,
    "uniform": _uniform,
    "normal": _normal,
    "loguniform": _loguniform,
    "lognormal": _lognormal,
    "quniform": _quantized(_uniform, "quniform"),
    "qnormal": _quantized(_normal, "qnormal"),
    "qloguniform": _quantized(_loguniform, "qloguniform"),
    "qlognormal": _quantized(_lognormal, "qlognormal"),
    "linspace": _linspace,
}


# --- expansion -----------------------------------------------------------------------------


def plan_runs(space: Dict[str, object], *, search_type: str, runs: Optional[int],
              max_runs: Optional[int], seed: int) -> List[Dict[str, object]]:
    """One hparams dict per run (keys in space order), identical for identical inputs."""
    return plan_compiled(_compile(space, ""), search_type=search_type, runs=runs, max_runs=max_runs, seed=seed)


def plan_compiled(params: List[_Param], *, search_type: str, runs: Optional[int],
                  max_runs: Optional[int], seed: int) -> List[Dict[str, object]]:
    """plan_runs for a space compile_space already compiled."""
    if search_type not in SEARCH_TYPES:
        raise SweepError(f"--search-type: expected one of {', '.join(SEARCH_TYPES)}, got {search_type!r}")
    _check_run_count("--runs", runs)
    _check_run_count("--max-runs", max_runs)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SweepError(f"--seed: expected an integer, got {seed!r}")
    if runs is not None and max_runs is not None and runs > max_runs:
        raise SweepError(f"--runs: {runs} exceeds --max-runs {max_runs}")
    _check_planned(_planned_count(params, search_type, runs, max_runs))
    if not params:
        return [{} for _ in range(runs or 1)]
    rng = random.Random(seed)
    if search_type == "grid":
        return _grid_runs(params, runs, max_runs, rng)
    count = runs if runs is not None else max_runs
    if count is None:
        raise SweepError("random search needs --runs or --max-runs")
    return _random_runs(params, count, rng)


def _planned_count(params: List[_Param], search_type: str, runs: Optional[int], max_runs: Optional[int]) -> Optional[int]:
    """How many runs the plan will hold, from the space's sizes alone (nothing expanded)."""
    if runs is not None or not params:
        return runs or 1
    if search_type != "grid":
        return max_runs
    combinations = math.prod([len(param.values) for param in params if param.values is not None])
    return combinations if max_runs is None else min(combinations, max_runs)


def _check_planned(count: Optional[int]) -> None:
    if count is not None and count > MAX_PLANNED_RUNS:
        raise SweepError(f"the sweep plans {count:,} runs, more than the limit of {MAX_PLANNED_RUNS:,} per job: "
                         f"narrow the space, or set --runs / --max-runs")


def _check_run_count(option: str, count: Optional[int]) -> None:
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise SweepError(f"{option}: expected a positive integer, got {count!r}")


def _grid_runs(params: List[_Param], runs: Optional[int], max_runs: Optional[int],
               rng: random.Random) -> List[Dict[str, object]]:
    axes = [param for param in params if param.values is not None]
    axis_values = [param.values for param in params if param.values is not None]
    draws = [param.draw for param in params if param.values is None]
    if runs is not None:
        count = runs
    else:
        count = math.prod([len(values) for values in axis_values])
        if max_runs is not None:
            count = min(count, max_runs)
    # product varies the last axis fastest; cycle wraps when more runs than combinations
    combos = itertools.islice(itertools.cycle(itertools.product(*axis_values)), count)

    names = [param.name for param in params]
    produced = [param.name for param in axes] + [param.name for param in params if param.values is None]
    if not draws:
        return [dict(zip(names, combo)) for combo in combos]
    # values come out as (axes..., distributions...); put them back in space order
    reorder = None if produced == names else operator.itemgetter(*[produced.index(name) for name in names])
    plan = []
    for combo in combos:
        values = combo + tuple([draw(rng) for draw in draws])
        plan.append(dict(zip(names, reorder(values) if reorder else values)))
    return plan


def _random_runs(params: List[_Param], count: int, rng: random.Random) -> List[Dict[str, object]]:
    names = [param.name for param in params]
    draws = [param.draw for param in params]
    return [dict(zip(names, [draw(rng) for draw in draws])) for _ in range(count)]


def format_hparam_args(hparams: Dict[str, object]) -> str:
    """' --name=value' per param, in order: floats via repr, bools as True/False, strings
    shell-quoted only when they need it (the command runs through a shell)."""
    return "".join([_format_arg(name, type(value).__name__, value) if isinstance(value, _SCALARS) else
                    f" --{name}={_format_value(name, value)}"  # raises SweepError
                    for name, value in hparams.items()])


_SCALARS = (bool, int, float, str)


@functools.lru_cache(maxsize=65536)
def _format_arg(name: str, kind: str, value: object) -> str:
    # A sweep repeats each value across many runs: format each (name, value) once. The type is
    # part of the key because True == 1 and 1 == 1.0 would otherwise share an entry.
    return f" --{name}={shlex.quote(_format_value(name, value))}"


def _format_value(name: str, value: object) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (bool, int, str)):  # str(True) == 'True', which argparse type=str keeps
        return str(value)
    raise SweepError(f"{name}: cannot format a {type(value).__name__} as a command-line value")
