"""Semantic checks of a job manifest and its compiled plan, shared by `xt run` (fail before
upload), the upload handler and dispatch. Each compiles the sweep once. And the manifest's
published JSON Schema, the contract of a zip dropped into uploads/."""
from __future__ import annotations

import posixpath
from typing import Any, Dict, List

import msgspec

from xt_submit.domain import adaptive_search, layout, sweep
from xt_submit.domain.messages import (INT64_MAX, INT64_MIN, MAX_CONCURRENT, MAX_RETRIES, MAX_SECONDS, ContractError,
                                       JobManifest, out_of_range)

SEARCH_TYPES = ("grid", "random") + adaptive_search.ADAPTIVE_SEARCH_TYPES
EARLY_POLICIES = ("bandit", "median", "truncation")
MANIFEST_NAME = "xt_manifest.json"  # at the top of a dropped zip
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def manifest_schema() -> bytes:
    """The JSON Schema of xt_manifest.json, generated from JobManifest (shipped as
    xt_submit/schemas/xt_manifest.schema.json and printed by `xt schema manifest`). It says each
    field's type and whether it is required; check_manifest's rules are in the descriptions."""
    schema = {"$schema": JSON_SCHEMA_DIALECT, "title": MANIFEST_NAME, **msgspec.json.schema(JobManifest)}
    return msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n"


def check_manifest(manifest: JobManifest, source: str = "xt_manifest.json") -> None:
    """Raise ContractError naming the first field that cannot be dispatched."""
    _check_fields(manifest, source)
    if manifest.hp_points is None:
        _check_search(manifest, _compiled_space(manifest, source), source)


def _check_points(manifest: JobManifest, source: str) -> None:
    """hp_points: a non-empty list, within the run limit, of hparams a command line can carry."""
    points = manifest.hp_points
    if points is None:
        return
    if manifest.hp_space:
        raise ContractError(f"{source}: hp_points: expected no hp_space beside it (the points are the runs)")
    if not points or len(points) > sweep.MAX_PLANNED_RUNS:
        raise ContractError(f"{source}: hp_points: expected 1 to {sweep.MAX_PLANNED_RUNS:,} runs, got {len(points):,}")
    for index, point in enumerate(points):
        try:
            sweep.validate_space({name: [value] for name, value in point.items()})
            sweep.format_hparam_args(point)
        except sweep.SweepError as exc:
            raise ContractError(f"{source}: hp_points[{index}]: {exc}") from None
        for name, value in point.items():
            wide = out_of_range(value)
            if wide is not None:
                raise ContractError(f"{source}: hp_points[{index}].{name}: {_shown(wide)} is a whole number outside "
                                    "the 64-bit range every stats store keeps: write it as a float or as text")


def compile_manifest(manifest: JobManifest, source: str = "xt_manifest.json") -> List[Dict[str, Any]]:
    """check_manifest, then the hparams of each run: deterministic for a manifest (its seed
    travels with it, so a redelivered message plans the very same runs)."""
    _check_fields(manifest, source)
    if manifest.hp_points is not None:
        return [dict(point) for point in manifest.hp_points]  # checked by _check_fields
    params = _compiled_space(manifest, source)
    if adaptive_search.is_adaptive(manifest.search_type):
        _check_search(manifest, params, source)
        first = min(manifest.concurrent, adaptive_search.budget(params, manifest.search_type, manifest.max_runs))
        return adaptive_search.first_points(params, search_type=manifest.search_type, count=first, seed=manifest.seed)
    try:
        return sweep.plan_compiled(params, search_type=manifest.search_type, runs=manifest.runs,
                                   max_runs=manifest.max_runs, seed=manifest.seed)
    except sweep.SweepError as exc:
        raise ContractError(f"xt_manifest.json: {exc}") from None


def search_budget(manifest: JobManifest) -> int:
    """How many runs an adaptive job may create at most (a checked manifest)."""
    return adaptive_search.budget(_compiled_space(manifest, "xt_manifest.json"), manifest.search_type,
                                  manifest.max_runs)


def _check_search(manifest: JobManifest, params: list, source: str) -> None:
    if not adaptive_search.is_adaptive(manifest.search_type):
        return
    if manifest.runs is not None:
        raise ContractError(f"{source}: runs: a {manifest.search_type} search decides its runs as results "
                            "arrive: give max_runs instead")
    try:
        adaptive_search.check_space(params, manifest.search_type, manifest.max_runs)
    except sweep.SweepError as exc:
        raise ContractError(f"{source}: {exc}") from None


def _check_early_stopping(manifest: JobManifest, source: str) -> None:
    policy = manifest.early_stopping
    if policy is None:
        return
    where = f"{source}: early_stopping"
    if policy.policy not in EARLY_POLICIES:
        raise ContractError(f"{where}.policy: expected one of {', '.join(EARLY_POLICIES)}, got {policy.policy!r}")
    if not 0 <= policy.delay_evaluation <= INT64_MAX:
        raise ContractError(f"{where}.delay_evaluation: expected a whole number >= 0, got {_shown(policy.delay_evaluation)}")
    if not 1 <= policy.evaluation_interval <= INT64_MAX:
        raise ContractError(f"{where}.evaluation_interval: expected a whole number >= 1, "
                            f"got {_shown(policy.evaluation_interval)}")
    for field in ("slack_factor", "slack_amount"):
        value = getattr(policy, field)
        if not 0 <= value < float("inf"):  # NaN fails too
            raise ContractError(f"{where}.{field}: expected a finite number >= 0, got {value}")
    if policy.policy == "bandit" and policy.slack_factor == 0 and policy.slack_amount == 0:
        raise ContractError(f"{where}: bandit needs slack_factor or slack_amount above 0")
    if not 1 <= policy.truncation_percentage <= 99:
        raise ContractError(f"{where}.truncation_percentage: expected a whole number from 1 to 99, "
                            f"got {_shown(policy.truncation_percentage)}")
    if not manifest.primary_metric:
        raise ContractError(f"{where}: needs primary_metric (general.primary-metric): the metric it compares")


def _compiled_space(manifest: JobManifest, source: str):
    try:
        return sweep.compile_space(manifest.hp_space, source=f"{source}: hp_space")
    except sweep.SweepError as exc:
        raise ContractError(str(exc)) from None


def _check_script(script: str, source: str) -> None:
    """A script given by path runs from the code snapshot, so it must be inside it: relative, and not
    climbing out with `..`. A bare command name (`python`, `bash`) is looked up on the run's PATH."""
    if not (script.endswith(".py") or "/" in script or "\\" in script):
        return
    path = script.replace("\\", "/")
    if path.startswith("/") or path[1:2] == ":" and path[:1].isalpha():  # /x.py, C:/x.py
        where = "an absolute path"
    elif posixpath.normpath(path).split("/")[0] == "..":
        where = "outside the project"
    else:
        return
    raise ContractError(f"{source}: script: {script} is {where}, so it is not in the code snapshot the run gets; "
                        "expected a path relative to the project folder, inside it (e.g. train.py or src/train.py)")


def _check_fields(manifest: JobManifest, source: str) -> None:
    _check_points(manifest, source)
    for field in ("workspace", "experiment"):
        try:
            layout.check_name(field, getattr(manifest, field))
        except ValueError as exc:
            raise ContractError(f"{source}: {exc}") from None
    if not manifest.command.strip():
        raise ContractError(f"{source}: command: expected a command to run, got an empty string")
    _check_script(manifest.script, source)
    if manifest.search_type not in SEARCH_TYPES:
        raise ContractError(f"{source}: search_type: expected one of {', '.join(SEARCH_TYPES)}, got {manifest.search_type!r}")
    for field in ("runs", "max_runs"):
        value = getattr(manifest, field)
        if value is not None and value < 1:
            raise ContractError(f"{source}: {field}: expected a whole number >= 1, got {value}")
    if manifest.concurrent < 1:
        raise ContractError(f"{source}: concurrent: expected a whole number >= 1, got {manifest.concurrent}")
    if manifest.max_time is not None and manifest.max_time <= 0:
        raise ContractError(f"{source}: max_time: expected seconds > 0, got {manifest.max_time}")
    if manifest.hp_points is not None and adaptive_search.is_adaptive(manifest.search_type):
        raise ContractError(f"{source}: search_type: hp_points name the runs; expected grid beside them, "
                            f"got {manifest.search_type}")
    _check_ranges(manifest, source)
    _check_early_stopping(manifest, source)
    if not 0 <= manifest.retries <= MAX_RETRIES:
        raise ContractError(f"{source}: retries: expected a whole number from 0 to {MAX_RETRIES}, "
                            f"got {_shown(manifest.retries)}")
    if manifest.retries and adaptive_search.is_adaptive(manifest.search_type):
        raise ContractError(f"{source}: retries: a {manifest.search_type} search plans its own runs; "
                            "expected 0 retries beside it")
    if manifest.resume_from and not layout.RUN_PATTERN.match(manifest.resume_from):
        raise ContractError(f"{source}: resume_from: expected a run name like run3.2, got {manifest.resume_from!r}")
    _check_shares(manifest, source)


def _check_shares(manifest: JobManifest, source: str) -> None:
    """layout's share rules (the config's too): a manifest dropped into uploads/ never passed the config."""
    for share in layout.SHARES:
        spec = getattr(manifest, share)
        if spec is None:
            continue
        fields = {name: f"{share}.{name}" for name in ("action", "path", "writable")}
        for problem in layout.share_problems(share, spec.action, spec.path, spec.writable, fields):
            raise ContractError(f"{source}: {problem}")


def _check_ranges(manifest: JobManifest, source: str) -> None:
    """The upper ends: what the stores, the task table and the queues carry (a 64-bit whole number at most)."""
    for field, most in (("runs", sweep.MAX_PLANNED_RUNS), ("max_runs", sweep.MAX_PLANNED_RUNS),
                        ("concurrent", MAX_CONCURRENT)):
        value = getattr(manifest, field)
        if value is not None and value > most:
            raise ContractError(f"{source}: {field}: expected a whole number from 1 to {most}, got {_shown(value)}")
    if not INT64_MIN <= manifest.seed <= INT64_MAX:
        raise ContractError(f"{source}: seed: expected a 64-bit whole number, got {_shown(manifest.seed)}")
    if manifest.max_time is not None and not manifest.max_time <= MAX_SECONDS:  # NaN is no number of seconds
        raise ContractError(f"{source}: max_time: expected seconds > 0, at most {MAX_SECONDS}, got {manifest.max_time}")
    for name, value in manifest.hp_space.items():
        wide = out_of_range(value)
        if wide is not None:
            raise ContractError(f"{source}: hp_space.{name}: {_shown(wide)} is a whole number outside the 64-bit range "
                                "every stats store keeps: write it as a float or as text")


def _shown(number: int) -> str:
    text = str(number)
    return text if len(text) <= 30 else f"a {len(text)}-digit number"
