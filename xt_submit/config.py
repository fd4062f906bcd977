"""Layered configuration: built-in defaults < xt_config.yaml < command-line overrides.

The file is `--config PATH`, else $XT_CONFIG, else `xt_config.yaml` in the working directory.
Sections merge with the defaults key by key, and a dict under a key (say compute-targets.local)
one level deeper; lists and scalars replace. Every problem becomes a one-line ConfigError,
`<source>: <dotted.path>: <what was expected>`, because it is shown to a person at the CLI.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, get_args, get_origin

import msgspec

from xt_submit.domain.layout import NAME_PATTERN, NO_SHARE, ShareAction, share_problems
from xt_submit.domain.errors import OneLineError
from xt_submit.domain.limits import (INT64_MAX, INT64_MIN, MAX_CONCURRENT, MAX_PLANNED_RUNS, MAX_RETRIES,  # noqa: F401
                                     MAX_ROWS, MAX_SECONDS)

CONFIG_FILE_NAME = "xt_config.yaml"
CONFIG_ENV_VAR = "XT_CONFIG"
COMMAND_LINE = "command line"
EMBEDDED = "embedded"

# Every number has both ends: what the stores, the task table and the queues carry, and what makes sense.
MAX_PRECISION = 20  # decimals shown: a float has no more to show
MAX_WIDTH = 10_000
MAX_SIZE_MB = 1_000_000  # a code snapshot of a terabyte
Concurrency = Annotated[int, msgspec.Meta(ge=1, le=MAX_CONCURRENT)]  # runs at once; nodes of a pool
RunCount = Annotated[int, msgspec.Meta(ge=1, le=MAX_PLANNED_RUNS)]
RowCount = Annotated[int, msgspec.Meta(ge=1, le=MAX_ROWS)]
Precision = Annotated[int, msgspec.Meta(ge=0, le=MAX_PRECISION)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=MAX_SECONDS)]
Seed = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
SHOWN_TEXT_LIMIT = 24


class ConfigError(OneLineError):
    """A configuration problem, as one line naming its source and dotted path."""


class _Section(msgspec.Struct, rename="kebab", forbid_unknown_fields=True, kw_only=True):
    pass


class General(_Section):
    workspace: str = "ws1"
    experiment: str = "exper1"
    primary_metric: str = "loss"
    maximize_metric: bool = False
    step_name: str = "step"
    authentication: Literal["auto", "browser", "device-code", "service-principal"] = "auto"
    xt_home: str | None = None  # None: the per-user platformdirs folder


class XtServices(_Section):
    # Each names "embedded" or an external-services entry; target names a compute target.
    storage: str = EMBEDDED
    stats: str = EMBEDDED
    queue: str = EMBEDDED
    target: str = "local"
    vault: str | None = None  # an external-services entry of type vault: where `$vault` values come from


class ComputeTarget(_Section):
    service: Literal["local", "pool", "batch"]
    concurrent: Concurrency = 1  # one run per pool/batch node unless asked; local says 2
    setup: str | None = None
    boxes: list[str] = []  # pool only: the boxes to run on; empty: every entry of `boxes`
    vm_size: str | None = None
    image: str | None = None
    nodes: Concurrency | None = None
    low_pri: bool = False
    account: str | None = None  # batch only: the external-services entry (type batch) of the Batch account
    preemption_retries: Annotated[int, msgspec.Meta(ge=0, le=MAX_RETRIES)] = 3  # batch only: requeues after preemptions
    # batch only: the pool mounts the storage container (blobfuse), so jobs may use share action mount;
    # off by default, as a mount that fails (no role, no blobfuse on the image) leaves nodes unusable
    mount_shares: bool = False
    max_time: Seconds | None = None


class Setup(_Section):
    activate: str | None = None
    pip_packages: list[str] = []
    conda_packages: list[str] = []
    environment: dict[str, str] = {}


class Code(_Section):
    code_dirs: list[str] = msgspec.field(default_factory=lambda: ["."])
    code_omit: list[str] = []
    max_size_mb: Annotated[int, msgspec.Meta(ge=1, le=MAX_SIZE_MB)] = 500


class AfterFiles(_Section):
    after_dirs: list[str] = msgspec.field(default_factory=lambda: ["output/**"])
    after_omit: list[str] = []


class HyperparameterSearch(_Section):
    search_type: Literal["grid", "random", "bayesian", "dgd"] = "grid"
    max_runs: RunCount | None = None
    runs: RunCount | None = None
    seed: Seed | None = None
    hp_config: str | None = None


class EarlyStopping(_Section):
    early_policy: Literal["none", "bandit", "median", "truncation"] = "none"
    delay_evaluation: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)] = 10
    evaluation_interval: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)] = 1
    slack_factor: Annotated[float, msgspec.Meta(ge=0, le=1e300)] = 0.05
    slack_amount: Annotated[float, msgspec.Meta(ge=0, le=1e300)] = 0.0
    truncation_percentage: Annotated[int, msgspec.Meta(ge=1, le=99)] = 5


class DataShare(_Section):
    """XT's `data:` section: a folder of the workspace's data share that each run sees as XT_DATA_DIR."""

    data_share_path: str | None = None
    data_action: ShareAction = "none"
    data_options: list[str] = []  # none are defined yet: validated empty
    data_writable: bool = False


class ModelShare(_Section):
    """XT's `model:` section: the same for the model share and XT_MODEL_DIR."""

    model_share_path: str | None = None
    model_action: ShareAction = "none"
    model_options: list[str] = []
    model_writable: bool = False


class RunReports(_Section):
    columns: list[str] = msgspec.field(
        default_factory=lambda: ["name", "job", "status", "exit_code", "duration", "hparams.*", "metrics.*"]
    )
    sort: str = "name"
    reverse: bool = False
    precision: Precision = 4
    max_width: Annotated[int, msgspec.Meta(ge=1, le=MAX_WIDTH)] = 30
    first: RowCount | None = None
    last: RowCount | None = None


class JobReports(_Section):
    columns: list[str] = msgspec.field(
        default_factory=lambda: ["name", "workspace", "experiment", "status", "runs", "completed", "error", "created"]
    )
    sort: str = "name"
    reverse: bool = False
    precision: Precision = 4
    first: RowCount | None = None
    last: RowCount | None = None


class Box(_Section):
    address: str
    max_runs: Concurrency = 1
    setup: str | None = None
    key: str | None = None
    host_key: str | None = None


class Config(_Section):
    general: General = msgspec.field(default_factory=General)
    xt_services: XtServices = msgspec.field(default_factory=XtServices)
    # Free-form per service kind for now; each entry must still say its `type`.
    external_services: dict[str, dict[str, Any]] = {}
    compute_targets: dict[str, ComputeTarget] = msgspec.field(
        default_factory=lambda: {"local": ComputeTarget(service="local", concurrent=2),
                                 "pool": ComputeTarget(service="pool")}
    )
    setups: dict[str, Setup] = {}
    code: Code = msgspec.field(default_factory=Code)
    after_files: AfterFiles = msgspec.field(default_factory=AfterFiles)
    hyperparameter_search: HyperparameterSearch = msgspec.field(default_factory=HyperparameterSearch)
    early_stopping: EarlyStopping = msgspec.field(default_factory=EarlyStopping)
    data: DataShare = msgspec.field(default_factory=DataShare)
    model: ModelShare = msgspec.field(default_factory=ModelShare)
    run_reports: RunReports = msgspec.field(default_factory=RunReports)
    job_reports: JobReports = msgspec.field(default_factory=JobReports)
    boxes: dict[str, Box] = {}


# ----------------------------------------------------------------------------- public API


def load_config(
    config_path: str | os.PathLike | None = None,
    overrides: dict[str, object] | None = None,
    cwd: str | os.PathLike | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> Config:
    """Defaults, then the config file (if any), then `overrides` (dotted path -> value; None skipped).

    XT's own settings that this pipeline does not use are dropped, and `on_warning` (if given) gets
    one line naming them, once the file has loaded; the CLI passes `warn_once`."""
    cfg = Config()
    path, label = _find_config_file(config_path, cwd)
    if path is not None:
        file_data, ignored = _xt_settings(_read_yaml_mapping(path, label))
        cfg = _validate(_merge_file(default_config_dict(), file_data), label)
        if ignored and on_warning is not None:
            on_warning(f"{label}: ignored XT settings this pipeline does not use: {', '.join(ignored)}")
    given = {dotted: value for dotted, value in (overrides or {}).items() if value is not None}
    if given:
        # The file already passed on its own, so anything failing now came from the command line.
        cfg = _validate(_apply_overrides(config_to_dict(cfg), given), COMMAND_LINE)
    return cfg


_WARNED: set[str] = set()


def warn_once(line: str) -> None:
    """A config warning on stderr, once per process however often the config is loaded."""
    if line not in _WARNED:
        _WARNED.add(line)
        print(line, file=sys.stderr, flush=True)


def default_config_dict() -> dict:
    return config_to_dict(Config())


def config_to_dict(cfg: Config) -> dict:
    return msgspec.to_builtins(cfg)


def starter_config_text() -> str:
    return _STARTER_TEXT


def write_starter_config(path: str | os.PathLike) -> None:
    try:
        with open(path, "x", encoding="utf-8") as out:  # "x": never clobber someone's settings
            out.write(_STARTER_TEXT)
    except FileExistsError:
        raise ConfigError(f"{os.fspath(path)}: already exists; not overwriting it") from None
    except OSError as exc:
        raise ConfigError(f"{os.fspath(path)}: cannot write ({exc.strerror or exc})") from None


# ----------------------------------------------------------------------------- finding and reading


def _find_config_file(
    config_path: str | os.PathLike | None, cwd: str | os.PathLike | None
) -> tuple[Path | None, str]:
    base = Path(cwd) if cwd is not None else Path.cwd()
    if config_path:
        named, named_by = os.fspath(config_path), "--config"
    elif os.environ.get(CONFIG_ENV_VAR):
        named, named_by = os.environ[CONFIG_ENV_VAR], CONFIG_ENV_VAR
    else:
        path = base / CONFIG_FILE_NAME
        return (path if path.exists() else None), CONFIG_FILE_NAME
    path = base / Path(named).expanduser()  # an absolute path ignores base
    if not path.exists():
        raise ConfigError(f"{named}: config file not found (named by {named_by})")
    return path, named


def _read_yaml_mapping(path: Path, label: str) -> dict:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read ({exc.strerror or exc})") from None
    import yaml  # lazily: most CLI calls have no config file, and the import is not free

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(raw, Loader=loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: {_yaml_problem(exc)}") from None
    if data is None:  # empty or all comments
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping of sections at the top level, got {_kind(data)}")
    return data


def _yaml_problem(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    problem = problem.splitlines()[0] if problem.strip() else "invalid YAML"
    return f"line {mark.line + 1}: {problem}" if mark is not None else problem


# ----------------------------------------------------------------------------- an XT user's own file

# XT's config schema: the sections and keys XT itself accepts. From microsoft/ExperimentTools (MIT),
# xtlib/helpers/xt_config_schema.yaml at 765d811d48a6eef5e95195c45dcaff4ee66b2ddf (what XT validates
# every config file against), checked against its defaults, xtlib/helpers/default_config.yaml at
# 801e63ef3f8ede7daab0705ff59adba8d90d170f. Section -> its keys; "section.*" -> the keys of each named
# entry; "" -> content not listed (free-form, or a list). Only what this pipeline lacks is looked up
# here: a section or key of XT's that it does not have is dropped and named in one warning, and one
# that is not XT's either (a typo) stays an error.
XT_SCHEMA: dict[str, str] = {
    "external-services": "", "dockers": "", "commands": "", "azure-batch-images": "", "providers": "",
    "xt-services": "storage mongo vault target",
    "compute-targets.*": "service vm-size azure-image low-pri box-class docker setup boxes vc cluster queue sku "
                         "compute nodes name",
    "setups.*": "activate conda-packages pip-packages",
    "general": "advanced-mode username azure-tenant-id workspace experiment feedback run-cache-dir distributed "
               "direct-run quick-start env-vars authentication xt-team-name remote-control monitor "
               "primary-metric maximize-metric step-name",
    "code": "code-dirs code-upload code-zip code-omit xtlib-upload working-dir",
    "after-files": "after-dirs after-upload after-omit",
    "data": "data-local data-upload data-share-path data-action data-omit data-writable data-options",
    "model": "model-local model-share-path model-action model-writable model-options",
    "logging": "log notes mirror-files mirror-dest",
    "internal": "console stack-trace auto-start pip-freeze",
    "aml-options": "use-gpu framework fw-version user-managed distributed-training max-seconds",
    "early-stopping": "early-policy delay-evaluation evaluation-interval slack-factor slack-amount "
                      "truncation-percentage",
    "hyperparameter-search": "option-prefix aggregate-dest search-type max-minutes max-runs concurrent hp-config "
                             "fn-generated-config",
    "hyperparameter-explorer": "hx-cache-dir steps-name log-interval-name time-name sample-efficiency-name "
                               "success-rate-name",
    "run-reports": "sort group number-groups reverse max-width precision uppercase-hdr right-align-numeric "
                   "truncate-with-ellipses status report-rollup columns last",
    "job-reports": "sort reverse max-width precision uppercase-hdr right-align-numeric truncate-with-ellipses "
                   "columns last",
    "tensorboard": "template",
    "script-launch-prefix": "windows linux dsvm azureml philly",
    "boxes.*": "address max-runs os actions box-class setup",
}
XT_SECTIONS = frozenset(path.split(".")[0] for path in XT_SCHEMA)
# XT's kinds of external service (its schema's $select-records) that a compute target may run on but
# this pipeline has no compute target kind for: such a target is dropped and named.
XT_ONLY_COMPUTE = ("aml", "philly")


def _xt_settings(data: dict) -> tuple[dict, list[str]]:
    """The file as this pipeline reads it, and the XT settings it drops (dotted, in file order).

    XT's spellings with the same meaning become ours first (each mapping below says why); then every
    section or key that is XT's and not ours is dropped. Anything else is left for validation."""
    order = {section: place for place, section in enumerate(data)}
    data, ignored = dict(data), list[str]()
    _map_xt_spellings(data, ignored)
    ours = {field.encode_name: field.type for field in msgspec.structs.fields(Config)}
    for section in list(data):
        if section not in ours:
            if section in XT_SECTIONS:
                del data[section]
                ignored.append(str(section))
            continue
        typ, value = ours[section], data[section]
        if not isinstance(value, dict):
            continue
        if isinstance(typ, type) and issubclass(typ, msgspec.Struct):
            data[section] = _without_xt_keys(value, typ, XT_SCHEMA.get(section, ""), section, ignored)
        elif get_origin(typ) is dict and f"{section}.*" in XT_SCHEMA:
            item_type, xt_keys = get_args(typ)[1], XT_SCHEMA[f"{section}.*"]
            data[section] = {
                name: _without_xt_keys(entry, item_type, xt_keys, _join(section, name), ignored)
                if isinstance(entry, dict) else entry
                for name, entry in value.items()
            }
    ignored.sort(key=lambda dotted: order.get(dotted.split(".")[0], 0))  # stable: in file order
    return data, ignored


def _without_xt_keys(entry: dict, typ: type, xt_keys: str, path: str, ignored: list[str]) -> dict:
    ours = {field.encode_name for field in msgspec.structs.fields(typ)}
    xt = xt_keys.split()
    kept = {}
    for key, value in entry.items():
        if key not in ours and key in xt:
            ignored.append(_join(path, key))
        else:
            kept[key] = value
    return kept


def _map_xt_spellings(data: dict, ignored: list[str]) -> None:
    """XT's spellings and shapes of settings this pipeline has, as ours (in place, on copies)."""
    services = data.get("xt-services")
    if isinstance(services, dict):
        services = data["xt-services"] = dict(services)
        # XT writes `storage: null` / `mongo: null` for "no service chosen" (its defaults do): here,
        # the embedded default.
        for key in ("storage", "mongo"):
            if key in services and services[key] is None:
                del services[key]
        # XT's `mongo` names the MongoDB service that indexes jobs, runs and metrics: our `stats`.
        # (Given both, `stats` wins and `mongo` is named as ignored.)
        if "mongo" in services and "stats" not in services:
            services["stats"] = services.pop("mongo")
    externals = data.get("external-services")
    if isinstance(externals, dict):
        # XT's MongoDB entry spells its connection string `mongo-connection-string`; ours
        # `connection-string` (a `$vault` value then reads the secret `<name>-connection-string`).
        externals = data["external-services"] = {
            name: ({**{k: v for k, v in entry.items() if k != "mongo-connection-string"},
                    "connection-string": entry["mongo-connection-string"]}
                   if isinstance(entry, dict) and entry.get("type") == "mongo"
                   and "mongo-connection-string" in entry and "connection-string" not in entry else entry)
            for name, entry in externals.items()
        }
    targets = data.get("compute-targets")
    if isinstance(targets, dict):
        # XT's target `service` is `pool` or the name of an external-services entry. An entry of type
        # batch is our `service: batch` with that entry as its `account`; a target on a kind this
        # pipeline does not have (XT_ONLY_COMPUTE) is dropped and named.
        kinds = get_args(next(f.type for f in msgspec.structs.fields(ComputeTarget) if f.name == "service"))
        kept = {}
        for name, target in targets.items():
            service = target.get("service") if isinstance(target, dict) else None
            entry = externals.get(service) if isinstance(externals, dict) and isinstance(service, str) else None
            kind = entry.get("type") if isinstance(entry, dict) and service not in kinds else None
            if kind == "batch":
                target = {"account": service, **target, "service": "batch"}
            elif kind in XT_ONLY_COMPUTE:
                ignored.append(f"{_join('compute-targets', name)} ({kind} target)")
                continue
            kept[name] = target
        data["compute-targets"] = kept
    setups = data.get("setups")
    if not (isinstance(setups, dict) and "local" in setups):
        # XT's defaults give every user a setup `local` ("the local machine is self-managed": activate
        # the current conda environment, install nothing), which its `local` target and box name. Where
        # the file does not define `local` itself, that is running in the environment as it is: no setup.
        for section in ("compute-targets", "boxes"):
            entries = data.get(section)
            if isinstance(entries, dict):
                data[section] = {name: _without_xt_local_setup(entry, _join(section, name), ignored)
                                 for name, entry in entries.items()}


def _without_xt_local_setup(entry: Any, path: str, ignored: list[str]) -> Any:
    if not (isinstance(entry, dict) and entry.get("setup") == "local"):
        return entry
    ignored.append(f"{path}.setup (XT's default setup 'local')")
    return {key: value for key, value in entry.items() if key != "setup"}


# ----------------------------------------------------------------------------- layering


def _merge_file(merged: dict, file_data: dict) -> dict:
    """Merge the file into (a fresh copy of) the defaults, in place."""
    for section, value in file_data.items():
        base = merged.get(section)
        if value is None and isinstance(base, dict):
            continue  # `section:` with every key commented out means "keep the defaults"
        if not (isinstance(base, dict) and isinstance(value, dict)):
            merged[section] = value
            continue
        for key, item in value.items():
            inner = base.get(key)
            if isinstance(inner, dict) and isinstance(item, dict):
                inner.update(item)
            else:
                base[key] = item
    return merged


def _apply_overrides(merged: dict, overrides: dict[str, object]) -> dict:
    for dotted, value in overrides.items():
        keys = str(dotted).split(".")
        if not all(keys):
            raise ConfigError(f"{COMMAND_LINE}: {dotted!r}: expected a dotted path such as general.workspace")
        node = merged
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                # Validation then reports the real clash, e.g. "general.workspace: expected str".
                child = node[key] = {}
            node = child
        node[keys[-1]] = value
    return merged


# ----------------------------------------------------------------------------- validation


def _validate(merged: dict, source: str) -> Config:
    try:
        cfg = msgspec.convert(merged, Config)
    except msgspec.ValidationError as exc:
        # msgspec hides dict keys ("$.compute-targets[...]") and lists no alternatives, so
        # walk the data ourselves to say exactly where and what.
        problem = _structural_problem(merged, Config, "") or _readable(str(exc), "", None)
        raise ConfigError(f"{source}: {problem}") from None
    reference_problem = next(_reference_problems(cfg), None)
    if reference_problem:
        raise ConfigError(f"{source}: {reference_problem}")
    return cfg


def _structural_problem(value: Any, typ: Any, path: str) -> str | None:
    """The first `path: problem` for `value` against `typ`, or None if it converts."""
    if isinstance(typ, type) and issubclass(typ, msgspec.Struct):
        if not isinstance(value, dict):
            return f"{path}: expected mapping, got {_kind(value)}"
        fields = {f.encode_name: f for f in msgspec.structs.fields(typ)}
        for key in value:
            if key not in fields:
                what = "key" if path else "section"
                return f"{_join(path, key)}: unknown {what} (expected one of {', '.join(sorted(fields))})"
        for name, field in fields.items():
            if field.required and name not in value:
                return f"{_join(path, name)}: required key missing"
        for key, item in value.items():
            problem = _structural_problem(item, fields[key].type, _join(path, key))
            if problem:
                return problem
        return None
    if get_origin(typ) is dict:
        if not isinstance(value, dict):
            return f"{path}: expected mapping, got {_kind(value)}"
        item_type = get_args(typ)[1]
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path}: expected text keys, got {_kind(key)} {show(key)}"
            problem = _structural_problem(item, item_type, _join(path, key))
            if problem:
                return problem
        return None
    try:
        msgspec.convert(value, typ)
    except msgspec.ValidationError as exc:
        if get_origin(typ) is Literal:
            return f"{path}: expected one of {', '.join(get_args(typ))}, got {show(value)}"
        return _readable(str(exc), path, value)
    return None


def _readable(text: str, path: str, value: Any) -> str:
    """'Expected `int` >= 1 - at `$[2]`' -> 'path[2]: expected int >= 1, got 0'."""
    message, _, where = text.splitlines()[0].partition(" - at `")
    where = where.rstrip("`").removeprefix("$")
    message = re.sub(r"`([^`]*)`", lambda m: _plain_type_words(m.group(1)), message)
    message = message[:1].lower() + message[1:]
    if ", got " not in message and not where:  # constraint failures do not say what they got
        message += f", got {show(value)}"
    return f"{path}{where}: {message}" if path or where else message


def _plain_type_words(msgspec_types: str) -> str:
    words = {"object": "mapping", "array": "list"}
    return " or ".join(words.get(word, word) for word in msgspec_types.split(" | "))


def _reference_problems(cfg: Config):
    """Checks that span keys: names that must exist, names that become storage paths."""
    for key in ("workspace", "experiment"):
        name = getattr(cfg.general, key)
        if not NAME_PATTERN.match(name):
            yield (
                f"general.{key}: expected a name of letters, digits, '_' or '-' starting with a letter "
                f"(at most 63 characters), got {show(name)}"
            )
    for name, service in cfg.external_services.items():
        if "type" not in service:
            yield f"external-services.{name}.type: required key missing"
        elif not isinstance(service["type"], str):
            yield f"external-services.{name}.type: expected str, got {_kind(service['type'])}"
    for role in ("storage", "stats", "queue"):
        chosen = getattr(cfg.xt_services, role)
        if chosen != EMBEDDED and chosen not in cfg.external_services:
            yield (
                f"xt-services.{role}: expected {EMBEDDED!r} or an external-services name "
                f"({names_of(cfg.external_services)}), got {show(chosen)}"
            )
    vault = cfg.xt_services.vault
    if vault is not None and (vault not in cfg.external_services or cfg.external_services[vault].get("type") != "vault"):
        yield (f"xt-services.vault: expected an external-services entry of type vault "
               f"({names_of(cfg.external_services)}), got {show(vault)}")
    if cfg.xt_services.target not in cfg.compute_targets:
        yield (
            f"xt-services.target: expected a compute-targets name ({names_of(cfg.compute_targets)}), "
            f"got {show(cfg.xt_services.target)}"
        )
    for name, box in cfg.boxes.items():
        from xt_submit.domain.boxes import BoxAddress, BoxError

        try:
            BoxAddress.parse(box.address, name)
        except BoxError as exc:
            yield str(exc)
    yield from _share_problems(cfg)
    for section, entries in (("compute-targets", cfg.compute_targets), ("boxes", cfg.boxes)):
        for name, entry in entries.items():
            if entry.setup is not None and entry.setup not in cfg.setups:
                yield (
                    f"{section}.{name}.setup: expected a setups name ({names_of(cfg.setups)}), "
                    f"got {show(entry.setup)}"
                )


def _share_problems(cfg: Config):
    """data: and model: beyond their types: no options, then layout's share rules (a manifest's too)."""
    for share in ("data", "model"):
        section = getattr(cfg, share)
        if getattr(section, f"{share}_options"):
            yield f"{share}.{share}-options: no options are defined for data and model shares; expected []"
        action = getattr(section, f"{share}_action")
        if action == NO_SHARE:
            continue
        fields = {"action": f"{share}.{share}-action", "path": f"{share}.{share}-share-path",
                  "writable": f"{share}.{share}-writable"}
        yield from share_problems(share, action, getattr(section, f"{share}_share_path"),
                                  getattr(section, f"{share}_writable"), fields)


# ----------------------------------------------------------------------------- small helpers


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def show(value: Any, limit: int = 60) -> str:
    """A value as an error message may quote it (never a long string: it may be a secret)."""
    if isinstance(value, str) and len(value) > SHOWN_TEXT_LIMIT:
        # a long string may be a key or a connection string put in the wrong place: never echo it
        return f"a {len(value)}-character string"
    text = repr(value)  # repr keeps it on one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def names_of(entries: dict) -> str:
    return "one of " + ", ".join(sorted(entries)) if entries else "none defined"


# Kept as literal text so it reads as a hand-written file; a test checks it loads to the defaults.
_STARTER_TEXT = """\
# XT configuration. Precedence: built-in defaults < this file < command-line options.
# XT reads ./xt_config.yaml, or the file named by --config or $XT_CONFIG.
# Sections merge with the defaults key by key (entries such as compute-targets.local one level
# deeper); lists and single values replace. Keys you delete keep their default values.

general:
  workspace: ws1              # storage area for jobs and runs (letters, digits, _ or -)
  experiment: exper1          # label that groups related jobs in reports
  primary-metric: loss        # metric used to rank runs
  maximize-metric: false      # true when a higher primary-metric is better
  step-name: step             # metric that counts training progress
  authentication: auto        # auto | browser | device-code | service-principal
  xt-home: null               # local XT data folder; null: the per-user default folder

xt-services:                  # each is "embedded" (local) or a name from external-services
  storage: embedded           # experiment storage: code, logs, outputs
  stats: embedded             # index of jobs, runs, hparams and metrics for reports
  queue: embedded             # queue that carries jobs and run events
  target: local               # compute target used when a command names none
  vault: null                 # an external-services entry of type vault: where `$vault` values come from

external-services: {}         # name -> settings of a cloud service; each needs a `type`
#  mystore:
#    type: storage

compute-targets:              # name -> where runs execute
  local:
    service: local            # local | pool | batch
    concurrent: 2             # runs at once on each node (pool/batch default: 1)
  pool:                       # xt run --target pool: your own machines, listed under `boxes`
    service: pool
    boxes: []                 # the boxes to run on; empty: every box
#    setup: mysetup           # setups entry that prepares the node
#  gpu:
#    service: batch
#    vm-size: Standard_NC6    # machine size
#    image: my-image          # machine or container image
#    nodes: 2                 # number of nodes
#    low-pri: true            # use cheaper, preemptible nodes
#    account: team-batch      # external-services entry (type: batch) of the Batch account
#    preemption-retries: 3    # times a preempted run is requeued before it ends as an error
#    mount-shares: false      # true: the pool mounts storage, so data-/model-action mount works
#    max-time: 3600           # seconds a run may take before it is stopped
#    boxes: [mybox]           # pool only: boxes to run on

setups: {}                    # name -> how to prepare a node before its runs
#  mysetup:
#    activate: null           # command run first, e.g. to activate an environment
#    pip-packages: [numpy]    # installed with pip
#    conda-packages: []       # installed with conda
#    environment: {OMP_NUM_THREADS: "1"}   # environment variables for each run

code:
  code-dirs: ["."]            # folders packed into the job's code snapshot
  code-omit: []               # glob patterns left out of the snapshot
  max-size-mb: 500            # refuse a snapshot larger than this

after-files:
  after-dirs: ["output/**"]   # files captured from each run when it ends
  after-omit: []              # glob patterns not captured

hyperparameter-search:
  # grid: every combination | random: sampled combinations | bayesian: each run from the results so
  # far (Optuna's TPE; needs max-runs) | dgd: neighbours of the best grid point so far.
  # grid, not XT's random, by default: `xt run train.py --lr=[0.01,0.1]` then runs each value
  # once, where random would need max-runs to know how many runs to sample.
  search-type: grid
  max-runs: null              # upper limit on runs in a job; null: no limit
  runs: null                  # runs to create; null: as many as the search yields
  seed: null                  # random-search seed; null: a fresh one each job
  hp-config: null             # YAML file of hyperparameter values to search

early-stopping:               # stop runs whose primary-metric falls behind, as they log it
  early-policy: none          # none | bandit | median | truncation
  delay-evaluation: 10        # reports of the primary metric before the first check
  evaluation-interval: 1      # check at every N-th report
  slack-factor: 0.05          # bandit: allowed ratio behind the best run at the same report
  slack-amount: 0             # bandit: allowed amount behind it (0: use slack-factor)
  truncation-percentage: 5    # truncation: stop the lowest N percent at each check

run-reports:                  # run listings
  columns: [name, job, status, exit_code, duration, "hparams.*", "metrics.*"]
  sort: name                  # column to sort by
  reverse: false              # true: sort descending
  precision: 4                # decimal places shown for floats
  max-width: 30               # longer values are cut to this width
  first: null                 # show only the first N rows; null: all
  last: null                  # show only the last N rows; null: all

job-reports:                  # job listings
  columns: [name, workspace, experiment, status, runs, completed, error, created]
  sort: name                  # column to sort by
  reverse: false              # true: sort descending
  precision: 4                # decimal places shown for floats
  first: null                 # show only the first N rows; null: all
  last: null                  # show only the last N rows; null: all

data:                         # the data share: xt upload --share data LOCAL PATH fills it
  data-share-path: null       # its folder each run sees as XT_DATA_DIR
  data-action: none           # none | download (a copy cached per node) | mount (the storage itself)
  data-options: []            # none defined yet
  data-writable: false        # mount only: the run may write into the share

model:                        # the model share, the same way: XT_MODEL_DIR
  model-share-path: null
  model-action: none          # none | download | mount
  model-options: []
  model-writable: false

boxes: {}                     # name -> a machine runs can be sent to over SSH
#  mybox:
#    address: user@host       # user@host[:port]; `localhost` runs here without SSH
#    max-runs: 1              # runs at once on this box
#    setup: null              # setups entry that prepares the box (replaces the target's there)
#    key: null                # SSH private key file (else ssh-agent or ~/.ssh)
#    host-key: null           # expected SSH host key, "ssh-ed25519 AAAA..." (else ~/.ssh/known_hosts)
"""
