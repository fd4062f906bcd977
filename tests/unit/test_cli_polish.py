"""The CLI's human output, --json on every read command, help on everything, colour on a terminal
only, and the shell completion script (issue 14's CLI polish)."""
import argparse
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from support.cli_project import Project
from xt_submit.cli import admin_commands, report_commands, reports
from xt_submit.cli.main import build_parser

# --- human output ------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds, shown", [
    (0.25, "250ms"), (12.34, "12.3s"), (59.9, "59.9s"), (59.97, "1m00s"), (245, "4m05s"), (3720, "1h02m"),
    (3 * 86400 + 4 * 3600 + 59, "3d04h"), (-5, "-5.0s"),
])
def test_durations_are_shown_with_units(seconds, shown):
    assert reports.format_duration(seconds) == shown


def test_mappings_and_lists_read_as_pairs_never_as_python_reprs():
    assert reports.readable({"lr": 0.1, "opt": "sgd"}) == "lr=0.1, opt=sgd"
    assert reports.readable(["a", "b"]) == "a, b"
    assert reports.readable({"name": "run1.2", "hparams": {"lr": 0.1, "bs": 32}, "seen": [1, 2]}) \
        == "name=run1.2, hparams=(lr=0.1, bs=32), seen=[1, 2]"
    assert reports.readable({}) == "-" and reports.readable(None) == "-"


def table_cells(text):
    """{header: [cell, ...]} of a format_table table (its columns are two spaces apart)."""
    header, rule, *rows = text.splitlines()
    starts = [0] + [i + 2 for i, c in enumerate(rule) if rule[i:i + 2] == "  " and rule[i + 2:i + 3] == "-"]
    bounds = list(zip(starts, starts[1:] + [None]))
    return {header[a:b].strip(): [row[a:b].strip() for row in rows] for a, b in bounds}


def test_table_cells_show_tags_lists_durations_and_local_times():
    created = time.mktime((2026, 3, 4, 5, 6, 7, 0, 0, -1))
    rows = [{"name": "run1.1", "tags": {"note": "first", "baseline": ""}, "duration": 245.0, "created": created,
             "outputs": ["a.txt", "b.txt"], "search": {"type": "grid"}},
            {"name": "run1.2", "tags": {}, "duration": 12.34, "created": None, "outputs": [], "search": None}]
    columns = [reports.Column(key, key) for key in ("name", "tags", "duration", "created", "outputs", "search")]
    cells = table_cells(reports.format_table(rows, columns, max_width=60))
    assert cells["tags"] == ["note=first, baseline=", ""]
    assert cells["duration"] == ["4m05s", "12.3s"]
    assert cells["created"] == ["2026-03-04 05:06:07", ""]
    assert cells["outputs"] == ["a.txt, b.txt", ""]
    assert cells["search"] == ["type=grid", ""]


def test_fields_show_counts_and_search_as_pairs_and_seconds_with_units():
    shown = reports.format_fields({"name": "job3", "counts": {"completed": 4, "error": 1}, "duration": 3720.0,
                                   "max_time": 30, "best_run": {"name": "run3.2", "loss": 0.5, "hparams": {"lr": 0.1}}})
    fields = dict(line.strip().split(": ", 1) for line in shown.splitlines())
    assert fields == {"name": "job3", "counts": "completed=4, error=1", "duration": "1h02m", "max_time": "30.0s",
                      "best_run": "name=run3.2, loss=0.5, hparams=(lr=0.1)"}
    assert "{" not in shown and "'" not in shown


# --- colour ------------------------------------------------------------------------------------


def test_status_words_are_coloured_only_when_asked_and_the_columns_stay_aligned():
    rows = [{"name": "run1.1", "status": "completed"}, {"name": "run1.22", "status": "error"},
            {"name": "run1.3", "status": "cancelled"}, {"name": "run1.4", "status": "running"},
            {"name": "run1.5", "status": "queued"}]
    columns = [reports.Column("name", "name"), reports.Column("status", "status"), reports.Column("name", "again")]
    plain = reports.format_table(rows, columns)
    painted = reports.format_table(rows, columns, colour=True)
    assert "\x1b" not in plain
    lines = painted.splitlines()
    assert "\x1b[32mcompleted\x1b[0m" in lines[2] and "\x1b[31merror    \x1b[0m" in lines[3]
    assert "\x1b[33mcancelled\x1b[0m" in lines[4] and "\x1b[36mrunning  \x1b[0m" in lines[5]
    assert "\x1b" not in lines[6] and "\x1b" not in lines[0]  # queued, and the header, are plain
    unpainted = "\n".join(line.replace("\x1b[0m", "").replace("\x1b[32m", "").replace("\x1b[31m", "")
                          .replace("\x1b[33m", "").replace("\x1b[36m", "") for line in lines)
    assert unpainted == plain
    assert reports.format_fields({"status": "stopped"}, colour=True) == "status: \x1b[33mstopped\x1b[0m"


CHILD = textwrap.dedent("""
    import sys
    from xt_submit.cli import reports
    print(reports.colour_on(sys.stdout), repr(reports.format_fields({"status": "completed"},
          colour=reports.colour_on(sys.stdout))))
""")


def child_output(stdout_is_a_terminal: bool, **env) -> str:
    """What CHILD prints with its stdout a pseudo-terminal (read back from the pty) or a pipe."""
    environment = {name: value for name, value in os.environ.items() if name != "NO_COLOR"}
    environment.update(env)
    if not stdout_is_a_terminal:
        return subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=environment,
                              timeout=60, check=True).stdout
    import pty

    main_fd, terminal_fd = pty.openpty()
    try:
        child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=terminal_fd, stderr=subprocess.PIPE,
                                 env=environment)
        os.close(terminal_fd)
        chunks = []
        while True:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert child.wait(timeout=60) == 0, child.stderr.read()
    finally:
        os.close(main_fd)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_a_terminal_gets_colour_a_pipe_and_no_color_do_not():
    assert child_output(True, TERM="xterm") == "True 'status: \\x1b[32mcompleted\\x1b[0m'\n"
    assert child_output(True, TERM="xterm", NO_COLOR="1") == "False 'status: completed'\n"
    assert child_output(False, TERM="xterm") == "False 'status: completed'\n"


# --- the parser tree ---------------------------------------------------------------------------


def commands_of(parser, path=()):
    """(path, parser, help given to it by its parent) for the parser and every subcommand below."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                sub._help_from_parent = helps.get(name)
                yield from commands_of(sub, path + (name,))


# job_commands.py is edited by others at the time of writing; these are its last gaps
KNOWN_GAPS = {("cancel", "run"), ("cancel", "job")}


def test_every_subcommand_and_option_has_help():
    missing = []
    for path, parser in commands_of(build_parser()):
        if path and not parser._help_from_parent and path not in KNOWN_GAPS:
            missing.append(" ".join(path))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help and path not in KNOWN_GAPS:
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


READ_COMMANDS_WITHOUT_JSON = {("view", "tensorboard")}  # it runs TensorBoard: nothing to print as records


def test_every_read_command_accepts_json():
    read = [path for path, parser in commands_of(build_parser())
            if len(path) == 2 and path[0] in ("list", "view") and path not in READ_COMMANDS_WITHOUT_JSON]
    assert len(read) >= 15
    lacking = [path for path, parser in commands_of(build_parser()) if path in read
               and not any("--json" in action.option_strings for action in parser._actions)]
    assert lacking == []


def test_read_commands_print_valid_json_on_an_empty_home(tmp_path):
    project = Project(tmp_path)
    assert project.json("list", "runs") == []
    assert project.json("list", "jobs") == []
    assert project.json("list", "workspaces") == []
    assert project.json("list", "experiments") == []
    assert project.json("list", "blobs") == []
    assert project.json("list", "boxes") == []
    targets = project.json("list", "targets")
    assert [t["name"] for t in targets if t["default"]] == ["local"]
    assert json.loads(project.xt("view", "status", "--json").stdout)["service"]
    project.xt("upload", str(project.code / "train.py"), "shares/train.py")
    blob = project.json("view", "blob", "shares/train.py")
    assert blob["path"] == "shares/train.py" and blob["text"] == (project.code / "train.py").read_text()
    assert blob["bytes"] == len(blob["text"].encode())


def test_the_parsers_defaults_are_the_services_defaults():
    """cli/report_commands.py repeats them so the parser names them without importing the services."""
    from xt_submit.services import html_report, tensorboard_export

    assert (report_commands.REPORT_DEFAULT_POINTS, report_commands.REPORT_DEFAULT_CONSOLE_BYTES,
            report_commands.TENSORBOARD_DEFAULT_PORT) == (html_report.MAX_POINTS, html_report.CONSOLE_BYTES,
                                                          tensorboard_export.DEFAULT_PORT)


# --- shell completion --------------------------------------------------------------------------


def bash_completes(script: str, *words: str) -> list:
    """What the bash script offers for the command line `xt WORDS`, the last word being completed."""
    line = " ".join(f"'{w}'" for w in ("xt", *words))
    code = f'{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words)}; _xt_complete; printf "%s\\n" "${{COMPREPLY[@]}}"'
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return sorted(filter(None, out.stdout.splitlines()))


def test_the_bash_completion_offers_commands_kinds_options_and_choices():
    script = admin_commands.completion_script(build_parser(), "bash")
    assert bash_completes(script, "li") == ["list"]
    assert bash_completes(script, "list", "r") == ["runs"]
    assert bash_completes(script, "list", "runs", "--la") == ["--last"]
    assert bash_completes(script, "--config", "x.yaml", "view", "me") == ["metrics"]
    assert bash_completes(script, "plot", "--ag") == ["--aggregate"]
    assert bash_completes(script, "completion", "") == ["--config", "--help", "bash", "zsh"]
    assert "--poll" not in script  # a hidden option stays hidden


def test_xt_completion_prints_the_scripts():
    bash = subprocess.run([sys.executable, "-m", "xt_submit.cli", "completion", "bash"], capture_output=True,
                          text=True, timeout=60, check=True).stdout
    assert bash == admin_commands.completion_script(build_parser(), "bash")
    zsh = admin_commands.completion_script(build_parser(), "zsh")
    assert "compdef _xt xt xt-submit" in zsh and '"list runs") echo "' in zsh


def test_a_run_log_line_keeps_nested_values_in_brackets_and_durations_in_units():
    assert reports.compact({"hparams": {"lr": 0.1, "opt": "sgd"}, "duration": 65.0, "exit_code": 0, "__seq": 3}) \
        == "hparams=(lr=0.1, opt=sgd) duration=1m05s exit_code=0"


def test_the_command_map_names_the_group_that_defines_each_command():
    from xt_submit.cli import main

    defined = {command: name for name in main.GROUP_NAMES for command in main.group(name).COMMANDS}
    assert main.COMMAND_GROUP == {**defined, "completion": "admin_commands"}
    every = {a.dest: a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)}["command"]
    assert set(every.choices) == set(main.COMMAND_GROUP)
    def options(parser) -> set:  # every option of a parser and its subcommands, by path
        found = {(parser.prog, s) for a in parser._actions for s in a.option_strings}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found |= options(sub)
        return found

    for command in main.COMMAND_GROUP:  # a command's parser built alone: the same parser, and nothing else
        only = {a.dest: a for a in build_parser(command)._actions if isinstance(a, argparse._SubParsersAction)}
        assert set(only["command"].choices) == {command}
        assert options(only["command"].choices[command]) == options(every.choices[command])


@pytest.mark.parametrize("argv, command", [
    (["list", "runs"], "list"), (["--config", "x.yaml", "view", "run"], "view"), (["--config=x.yaml", "run"], "run"),
    (["--help"], None), (["--version"], None), ([], None), (["--config"], None),
])
def test_the_command_is_found_past_the_top_parsers_options(argv, command):
    from xt_submit.cli.main import command_in

    assert command_in(argv) == command
