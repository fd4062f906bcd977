"""What every `xt` subcommand shares: the user-facing error, config loading, output helpers."""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Sequence

from xt_submit.domain.errors import OneLineError

EXIT_USAGE = 2
# the options many commands share, said the same way everywhere (cli/main._Parser gives them to any
# option added without help)
SHARED_HELP = {
    "--workspace": "the workspace (default: general.workspace in the config)",
    "--experiment": "the experiment (default: general.experiment in the config)",
    "--json": "print JSON (the records, machine-readable) instead of text",
    "names": "the runs or jobs by name (run7.2, job7)",
}


class CliError(OneLineError):
    """A one-line message for the user; exit status 2."""


def load(args: argparse.Namespace, overrides: Optional[Dict[str, Any]] = None):
    workspace = getattr(args, "workspace", None)
    overrides = dict(overrides or {})
    if workspace is not None:
        overrides["general.workspace"] = workspace
    from xt_submit import config as xt_config  # here, not at the top: `xt --help` never loads a config

    return xt_config.load_config(args.config, overrides, on_warning=xt_config.warn_once)


def embedded_parts(cfg):
    """The parts the config selects: the embedded default unless `xt-services` names others."""
    from xt_submit.bootstrap import from_config

    return from_config(cfg)


def print_json(data: Any) -> None:
    import json  # here: a table or `xt --help` never needs it

    print(json.dumps(data, indent=2, default=str))


def number_in(kind: type, low: int, high: int, *, above: bool = False):
    """An argparse type: a number of `kind` (int or float) from `low` (or, with `above`, more than it)
    to `high`; anything else is argparse's one-line error naming the option. NaN is never in range."""
    what = "a whole number" if kind is int else "a number"
    expected = f"{what} > {low}, at most {high}" if above else f"{what} from {low} to {high}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:  # not a number, or an int of more digits than Python converts
            value = None
        if value is None or not ((low < value) if above else (low <= value)) or not value <= high:
            from xt_submit import config as xt_config

            raise argparse.ArgumentTypeError(f"expected {expected}, got {xt_config.show(text)}")
        return value

    parse.__name__ = kind.__name__
    return parse


def check_name(kind: str, value: str, pattern) -> str:
    if not pattern.match(value):
        raise CliError(f"{kind}: expected a name like {'job7' if kind == 'job' else 'run7.1'}, got {value!r}")
    return value


def ensure_local_host(parts, *, only_if_unfinished: bool = False, warm: Sequence[str] = ()) -> None:
    """With the embedded queue, a local host must be serving it; with Service Bus, Functions do.
    only_if_unfinished: for a command that reads run state, a host only when there is work waiting
    for one (its host was killed), so that a read after a host's death does not show stale states for ever.
    warm: what a host started now loads for the job on its way (host_control.ensure_host)."""
    from xt_submit.runtime.host_control import ensure_host, ensure_host_for_unfinished_work

    if not parts.served_here:
        return
    if only_if_unfinished:
        ensure_host_for_unfinished_work(parts)
    else:
        ensure_host(parts.home, warm=warm)


def progress_on_screen() -> bool:
    """Progress bars are for a terminal: in a log file or a pipe each redraw would be a line."""
    return sys.stderr.isatty()


@contextmanager
def transfer_progress(storage, label: str, enabled: bool) -> Iterator[None]:
    """A progress bar for the transfers of a storage that reports them (Blob Storage does)."""
    if not enabled or not storage.reports_progress or not progress_on_screen():
        yield
        return
    from tqdm import tqdm

    bar = tqdm(unit="B", unit_scale=True, desc=label, file=sys.stderr, leave=False)

    def report(done: int, total: Optional[int]) -> None:
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    previous, storage.progress = storage.progress, report
    try:
        yield
    finally:
        storage.progress = previous
        bar.close()
