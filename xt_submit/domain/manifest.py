"""Semantic checks of a job manifest and its compiled plan, shared by `xt run` (fail before
upload), the upload handler and dispatch. Each compiles the sweep once."""
from __future__ import annotations

from typing import Any, Dict, List

from xt_submit.domain import layout, sweep
from xt_submit.domain.messages import ContractError, JobManifest

SEARCH_TYPES = ("grid", "random")


def check_manifest(manifest: JobManifest, source: str = "xt_manifest.json") -> None:
    """Raise ContractError naming the first field that cannot be dispatched."""
    _check_fields(manifest, source)
    _compiled_space(manifest, source)


def compile_manifest(manifest: JobManifest, source: str = "xt_manifest.json") -> List[Dict[str, Any]]:
    """check_manifest, then the hparams of each run: deterministic for a manifest (its seed
    travels with it, so a redelivered message plans the very same runs)."""
    _check_fields(manifest, source)
    params = _compiled_space(manifest, source)
    try:
        return sweep.plan_compiled(params, search_type=manifest.search_type, runs=manifest.runs,
                                   max_runs=manifest.max_runs, seed=manifest.seed)
    except sweep.SweepError as exc:
        raise ContractError(f"xt_manifest.json: {exc}") from None


def _compiled_space(manifest: JobManifest, source: str):
    try:
        return sweep.compile_space(manifest.hp_space, source=f"{source}: hp_space")
    except sweep.SweepError as exc:
        raise ContractError(str(exc)) from None


def _check_fields(manifest: JobManifest, source: str) -> None:
    for field in ("workspace", "experiment"):
        try:
            layout.check_name(field, getattr(manifest, field))
        except ValueError as exc:
            raise ContractError(f"{source}: {exc}") from None
    if not manifest.command.strip():
        raise ContractError(f"{source}: command: expected a command to run, got an empty string")
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
