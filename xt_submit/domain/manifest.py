"""Semantic checks of a job manifest and its compiled plan, shared by `xt run` (fail before
upload), the upload handler and dispatch. Each compiles the sweep once. And the manifest's
published JSON Schema, the contract of a zip dropped into uploads/."""
from __future__ import annotations

from typing import Any, Dict, List

import msgspec

from xt_submit.domain import layout, sweep
from xt_submit.domain.messages import ContractError, JobManifest

SEARCH_TYPES = ("grid", "random")
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
