"""The run query model shared by every stats store: filters, sort and a window.

A filter is `prop op value`: prop is a run field (`status`, `exit_code`, `duration`, ...) or a
nested one (`metrics.loss`, `hparams.lr`, `tags.note`); op is one of = == != <> < <= > >=
:regex: :exists:; value is a number, a word, or $true $false $none. Stores translate the
query to their own language; values missing a sort key order first (as NULL does in SQL and
MongoDB), so `--last N` is "the N largest".
"""
from __future__ import annotations

import re
from typing import Any, List, Optional, Tuple

import msgspec

from xt_submit.domain.errors import OneLineError

RUN_FIELDS = ("name", "job", "workspace", "experiment", "username", "target", "status", "exit_code", "node_id",
              "reason", "created", "queued", "started", "ended", "duration", "command", "run_index", "job_number")
NESTED_GROUPS = ("metrics", "hparams", "tags")
OPERATORS = ("==", "=", "!=", "<>", "<=", ">=", "<", ">", ":regex:", ":exists:")
_FILTER = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(==|!=|<>|<=|>=|=|<|>|:regex:|:exists:)\s*(.*?)\s*$")
_SPECIAL_VALUES = {"$true": True, "$false": False, "$none": None}


class QueryError(OneLineError):
    pass


# The query's parts are msgspec structs, not dataclasses: a struct's class is made in C, a
# dataclass's by generating and compiling its methods, which every `xt list runs` paid at start-up.
class Filter(msgspec.Struct, frozen=True):
    """One `prop op value`; equal to (and hashed as) any other that selects the same, however written."""

    group: Optional[str]  # None for a run field, else metrics / hparams / tags
    name: str
    op: str  # normalised: == != < <= > >= regex exists
    value: Any
    # Written without a group (`lr=0.1`): a metric until services/run_reports resolves it against
    # what the runs have (the hparam when there is one). Stores ignore it.
    bare: bool = False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Filter):
            return NotImplemented
        return (self.group, self.name, self.op, self.value) == (other.group, other.name, other.op, other.value)

    def __hash__(self) -> int:
        return hash((self.group, self.name, self.op, self.value))


class SortKey(msgspec.Struct, frozen=True):
    """The column to sort by; equal to (and hashed as) any other naming it, however written."""

    group: Optional[str]
    name: str
    bare: bool = False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SortKey):
            return NotImplemented
        return (self.group, self.name) == (other.group, other.name)

    def __hash__(self) -> int:
        return hash((self.group, self.name))


class RunQuery(msgspec.Struct, frozen=True):
    workspace: str
    job: Optional[str] = None
    status: Optional[str] = None
    filters: Tuple[Filter, ...] = ()
    sort: Optional[SortKey] = None
    reverse: bool = False
    first: Optional[int] = None
    last: Optional[int] = None
    runs: Tuple[str, ...] = ()  # these run names only (with `jobs`: either)
    jobs: Tuple[str, ...] = ()  # runs of these jobs
    any_tags: Tuple[str, ...] = ()  # runs carrying at least one of these tags


def parse_value(text: str) -> Any:
    if text in _SPECIAL_VALUES:
        return _SPECIAL_VALUES[text]
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


_NAME = re.compile(r"^[A-Za-z0-9_][\w.\-/]*$")


def parse_prop(prop: str, option: str = "--filter") -> Tuple[Optional[str], str]:
    group, dot, name = prop.partition(".")
    if dot:
        if group not in NESTED_GROUPS or not _NAME.match(name):
            raise QueryError(f"{option}: {prop!r}: expected a run field or metrics.NAME, hparams.NAME, tags.NAME")
        return group, name
    if prop in RUN_FIELDS:
        return None, prop
    if not _NAME.match(prop):
        raise QueryError(f"{option}: {prop!r}: expected a run field or metrics.NAME, hparams.NAME, tags.NAME")
    return "metrics", prop  # bare: a metric, unless services/run_reports finds an hparam of that name


def parse_filter(text: str) -> Filter:
    match = _FILTER.match(text)
    if not match:
        raise QueryError(f"--filter: {text!r}: expected 'prop op value' with op one of {' '.join(OPERATORS)}")
    prop, op, raw = match.groups()
    if raw == "":
        raise QueryError(f"--filter: {text!r}: missing a value after {op}")
    if raw[0] in "<>=!":  # 'loss >> 2', 'loss =< 2': a mistyped operator, not a word to compare with
        raise QueryError(f"--filter: {text!r}: unknown operator (expected one of {' '.join(OPERATORS)}; quote a value that starts with {raw[0]})")
    group, name = parse_prop(prop)
    op = {"=": "==", "<>": "!="}.get(op, op).strip(":")
    bare = "." not in prop and group is not None
    value = parse_value(raw)
    if op == "regex":
        import regex

        try:
            regex.compile(str(value))
        except regex.error as exc:
            raise QueryError(f"--filter: {text!r}: bad regular expression ({exc})") from None
        value = str(value)
    if op == "exists" and not isinstance(value, bool):
        raise QueryError(f"--filter: {text!r}: :exists: takes $true or $false")
    if op in ("<", "<=", ">", ">=") and (value is None or isinstance(value, bool)):
        raise QueryError(f"--filter: {text!r}: {op} needs a number or a word, got {raw}")
    return Filter(group, name, op, value, bare=bare)


def parse_sort(column: str) -> SortKey:
    group, name = parse_prop(column, "--sort")
    return SortKey(group, name, bare="." not in column and group is not None)


def selects(record: dict, query: RunQuery) -> bool:
    """The reference semantics of a whole query's selection (what every store must return)."""
    if query.job is not None and record.get("job") != query.job:
        return False
    if query.status is not None and record.get("status") != query.status:
        return False
    if (query.runs or query.jobs) and not (record.get("name") in query.runs or record.get("job") in query.jobs):
        return False
    tags = record.get("tags") or {}
    if query.any_tags and not any(tags.get(tag) is not None for tag in query.any_tags):
        return False
    return all(matches(record, flt) for flt in query.filters)


# One value's regex match may take this long: a pattern that backtracks catastrophically fails in
# a second instead of running for minutes (the `regex` engine takes a timeout; `re` cannot).
REGEX_SECONDS = 1.0


def regex_search(pattern: str, value: str) -> bool:
    import regex

    try:
        return regex.search(pattern, value, timeout=REGEX_SECONDS) is not None
    except TimeoutError:
        raise QueryError(f"--filter: :regex: {pattern!r} took more than {REGEX_SECONDS:g} s on one value "
                         "(it backtracks without end): simplify it") from None


def matches(record: dict, flt: Filter) -> bool:
    """The reference semantics of one filter on a run record (stores must agree with this)."""
    container = record if flt.group is None else (record.get(flt.group) or {})
    present = flt.name in container and container[flt.name] is not None
    if flt.op == "exists":
        return present == flt.value
    value = container.get(flt.name)
    if flt.op == "regex":
        return isinstance(value, str) and regex_search(flt.value, value)
    if flt.op in ("==", "!="):
        return _equal(value, flt.value) == (flt.op == "==")
    if value is None or isinstance(value, bool) or isinstance(value, str) != isinstance(flt.value, str):
        return False
    return {"<": value < flt.value, "<=": value <= flt.value, ">": value > flt.value, ">=": value >= flt.value}[flt.op]


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):  # True is not the number 1 here
        return a is b
    return a == b


_RUN_RANGE = re.compile(r"^run(\d+)\.(\d+)-run(\d+)\.(\d+)$")
_RUN_NAME = re.compile(r"^run[1-9]\d*\.[1-9]\d*$")
_JOB_NAME = re.compile(r"^job[1-9]\d*$")
_JOB_WILDCARD = re.compile(r"^run([1-9]\d*)\.\*$")
MAX_RANGE = 100_000


def parse_run_list(items: List[str]) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """XT run lists: `run23.1-run23.10`, `run302.*`, `run7.2`, `job12` -> (run names, job names)."""
    runs: List[str] = []
    jobs: List[str] = []
    for item in (piece.strip() for text in items for piece in text.split(",")):
        if not item:
            continue
        if _RUN_NAME.match(item):
            runs.append(item)
        elif _JOB_NAME.match(item):
            jobs.append(item)
        elif wildcard := _JOB_WILDCARD.match(item):
            jobs.append("job" + wildcard.group(1))
        elif run_range := _RUN_RANGE.match(item):
            first_job, first, last_job, last = map(int, run_range.groups())
            if first_job != last_job or first > last or last - first >= MAX_RANGE or first < 1:
                raise QueryError(f"run list: {item!r}: expected runN.a-runN.b within one job, a <= b")
            runs += [f"run{first_job}.{k}" for k in range(first, last + 1)]
        else:
            raise QueryError(f"run list: {item!r}: expected a run (run7.2), a range (run7.1-run7.10), "
                             f"a job's runs (run7.* or job7)")
    return tuple(dict.fromkeys(runs)), tuple(dict.fromkeys(jobs))


def window(records: List[dict], first: Optional[int], last: Optional[int]) -> List[dict]:
    if first is not None:
        records = records[:first]
    if last is not None:
        records = records[-last:] if last > 0 else []
    return records
