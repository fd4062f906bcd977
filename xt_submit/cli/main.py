"""The `xt` command line (and `xt-submit`, which is `xt run`): one module per command group, each
with `add_parsers` and `COMMANDS`; a new group is one module plus one line in GROUPS."""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import List, Optional

from xt_submit.cli import admin_commands, job_commands, report_commands, storage_commands
from xt_submit.cli.common import EXIT_USAGE, SHARED_HELP
from xt_submit.domain.errors import NotFound, OneLineError

GROUPS = [job_commands, report_commands, storage_commands, admin_commands]  # in the order `xt --help` lists them


class _Parser(argparse.ArgumentParser):
    """Every (sub)command accepts --config, so `xt run --config F` and `xt --config F run` both work."""

    def __init__(self, *args, **kwargs):
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


def build_parser() -> argparse.ArgumentParser:
    from xt_submit import __version__

    parser = _Parser(prog="xt", description="XT: run and track ML experiments.")
    parser.add_argument("--version", action="version", version=f"xt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for group in GROUPS:
        group.add_parsers(commands)
    return parser


def cmd_completion(args: argparse.Namespace) -> int:
    sys.stdout.write(admin_commands.completion_script(build_parser(), args.shell))
    return 0


COMMANDS = {name: command for group in GROUPS for name, command in group.COMMANDS.items()}
COMMANDS["completion"] = cmd_completion  # its parser is admin_commands'; the script needs every group's


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
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


def submit_main(argv: Optional[List[str]] = None) -> int:
    """`xt-submit ARGS` is `xt run ARGS`."""
    return main(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
