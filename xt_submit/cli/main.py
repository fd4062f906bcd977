"""The `xt` command line (and `xt-submit`, which is `xt run`): one module per command group, each
with `add_parsers` and `COMMANDS`; a new group is one module plus one line in GROUPS."""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from types import ModuleType
from typing import Dict, List, Optional

from xt_submit.cli.common import EXIT_USAGE, SHARED_HELP
from xt_submit.domain.errors import NotFound, OneLineError
from xt_submit.domain.msgspec_import import import_msgspec

GROUP_NAMES = ["job_commands", "report_commands", "storage_commands", "admin_commands"]  # as `xt --help` lists them
# The group that defines each command, so `xt list runs` imports and builds one group's parsers, not
# every group's (tests/unit/test_cli_polish.py holds this equal to the groups' COMMANDS).
COMMAND_GROUP = {"run": "job_commands", "rerun": "job_commands", "cancel": "job_commands",
                 "list": "report_commands", "view": "report_commands", "plot": "report_commands",
                 "report": "report_commands", "export": "report_commands", "monitor": "report_commands",
                 "download": "report_commands", "set": "report_commands", "clear": "report_commands",
                 "upload": "storage_commands", "delete": "storage_commands", "import": "storage_commands",
                 "extract": "storage_commands", "serve": "admin_commands", "admin": "admin_commands",
                 "create": "admin_commands", "config": "admin_commands", "schema": "admin_commands",
                 "completion": "admin_commands"}


# Commands that only read and print, whose process ends once its output is out (run)
READ_ONLY_COMMANDS = {"list"}


def group(name: str) -> ModuleType:
    return importlib.import_module(f"xt_submit.cli.{name}")


def _terminal_columns() -> int:
    """shutil.get_terminal_size().columns, without importing shutil (and the compression modules it
    loads, ~3 ms of every command's start): $COLUMNS, else stdout's terminal, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):  # no stdout, or not a terminal
            columns = 0
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    """argparse's own, given the width it would have asked shutil for (argparse checks each option
    with a formatter as it is added, so this runs for every command, not only for --help)."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        super().__init__(prog, indent_increment, max_help_position, _terminal_columns() - 2 if width is None else width)


class _Parser(argparse.ArgumentParser):
    """Every (sub)command accepts --config, so `xt run --config F` and `xt --config F run` both work."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        # never abbreviate: `xt run train.py --t=[1,2]` is the script's sweep, not --target or --tags
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.add_argument("--config", default=argparse.SUPPRESS if self.prog != "xt" else None,
                          help="config file (default: ./xt_config.yaml, or $XT_CONFIG)")

    def add_argument(self, *names, **kwargs):
        if kwargs.get("help") is None and names and names[0] in SHARED_HELP:
            kwargs["help"] = SHARED_HELP[names[0]]
        return super().add_argument(*names, **kwargs)

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: {message}{_suggestion(self, message)}\n")  # one line, not the usage


_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (\S+)")


def _suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    """'; did you mean ...?' for a mistyped command, kind or option (the closest known one)."""
    import difflib

    choice = _INVALID_CHOICE.search(message)
    if choice:
        wrong, known = choice.group(1), re.findall(r"'([^']*)'", choice.group(2))
    else:
        option = _UNRECOGNIZED.search(message)
        if not option or not option.group(1).startswith("--"):
            return ""
        wrong, known = option.group(1).split("=", 1)[0], sorted(_options(parser))
    close = difflib.get_close_matches(wrong, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _options(parser: argparse.ArgumentParser) -> set:
    """Every --option of the parser and of its subcommands (argparse reports a subcommand's unknown
    option from the top parser)."""
    found = {s for action in parser._actions for s in action.option_strings if s.startswith("--")}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                found |= _options(sub)
    return found


class _Unbuilt:
    """A parser not built: what a group's add_parsers is handed for the commands other than the one
    being parsed. Every call (add_argument, add_subparsers, add_parser, ...) returns it again, so the
    group's code runs unchanged and argparse builds nothing (a group's ~100 options cost ~5 ms)."""

    def __getattr__(self, name: str):
        return self._anything

    def _anything(self, *args, **kwargs) -> "_Unbuilt":
        return self


class _OnlyCommand:
    """The subcommands action, as a group sees it when one command is parsed: that command's parser
    is built, the others' are _Unbuilt."""

    def __init__(self, commands, command: str):
        self._commands, self._command = commands, command

    def add_parser(self, name: str, **kwargs):
        return self._commands.add_parser(name, **kwargs) if name == self._command else _Unbuilt()


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """Every group's parsers, or only the parser of `command` (enough to parse it)."""
    from xt_submit import __version__

    parser = _Parser(prog="xt", description="XT: run and track ML experiments.")
    parser.add_argument("--version", action="version", version=f"xt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    if command in COMMAND_GROUP:
        group(COMMAND_GROUP[command]).add_parsers(_OnlyCommand(commands, command))
    else:
        for name in GROUP_NAMES:
            group(name).add_parsers(commands)
    return parser


def command_in(argv: List[str]) -> Optional[str]:
    """The command argv names (its first word that is not the top parser's option), else None."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return word
        elif not word.startswith("--config="):
            return None  # --help, --version, or a mistake the whole parser should answer
    return None


def cmd_completion(args: argparse.Namespace) -> int:
    sys.stdout.write(group("admin_commands").completion_script(build_parser(), args.shell))
    return 0


def commands_of(names: List[str]) -> Dict[str, object]:
    found = {command: function for name in names for command, function in group(name).COMMANDS.items()}
    found["completion"] = cmd_completion  # its parser is admin_commands'; the script needs every group's
    return found


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(command_in(argv)).parse_args(argv)
    import_msgspec()  # every command reads the config, whose schema is msgspec's (a --help exits before)
    try:
        return commands_of([COMMAND_GROUP.get(args.command, "admin_commands")])[args.command](args)
    except OneLineError as exc:  # every error meant for a person: config, sweep, contract, archive, query...
        print(f"xt: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NotFound as exc:
        print(f"xt: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("xt: interrupted (runs already submitted keep going)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `xt ... | head`: the reader has what it wanted
        # no flush of what is left at exit, which would fail the same way (as Python's docs advise)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a process killed by SIGPIPE
    except OSError as exc:  # the file system said no (XT_HOME is a file, a disk full, no permission): one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"xt: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


def run() -> None:
    """The `xt` console script: main, and the process's end. A read-only command's process ends as
    soon as its output is out (os._exit), without the interpreter's teardown: freeing every module
    and closing the SQLite files (a checkpoint, and their -wal and -shm deleted, to be made again by
    the next command) cost ~9 ms, a sixth of `xt list runs` (bench/startup.py). A reader leaves
    nothing to finish: its reads need no commit, and it is done only with no other thread alive."""
    code = main()
    if command_in(sys.argv[1:]) in READ_ONLY_COMMANDS and _alone():
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BrokenPipeError:  # `xt list runs | head`, as main answers it
            code = 141
        os._exit(code)
    sys.exit(code)


def _alone() -> bool:
    threading = sys.modules.get("threading")  # not imported: no other thread was started
    return threading is None or threading.active_count() == 1


def submit_main(argv: Optional[List[str]] = None) -> int:
    """`xt-submit ARGS` is `xt run ARGS`."""
    return main(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    run()
