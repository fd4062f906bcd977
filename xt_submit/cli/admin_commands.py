"""`xt serve`, `xt admin`, `xt create team`, `xt config`, `xt schema` and `xt completion`: running this
machine's host or agent, maintenance, setting things up, and the contracts other systems rely on."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xt_submit.cli.common import CliError, embedded_parts, load, number_in, print_json
from xt_submit.domain import layout
from xt_submit.domain.limits import MAX_SECONDS


def add_parsers(commands) -> None:
    serve_parser = commands.add_parser("serve", help="run the local host (or, with a team's services, the compute agent) in the foreground")
    serve_parser.add_argument("--idle-exit", type=number_in(float, 0, MAX_SECONDS),
                              help="stop after this many idle seconds")

    admin_parser = commands.add_parser("admin", help="maintenance: rebuild the stats index, set up batch targets")
    admin_kinds = admin_parser.add_subparsers(dest="kind", required=True, metavar="reindex|batch-settings")
    reindex_parser = admin_kinds.add_parser(
        "reindex", help="rebuild the stats index from storage; what cannot be read is listed and skipped "
                        "(exit status 1 if anything was)")
    reindex_parser.add_argument("--workspace", help="one workspace (default: every workspace in storage)")
    batch_parser = admin_kinds.add_parser("batch-settings", help="upload the nodes' xt wheel; print the Functions "
                                                                 "app settings for this config's batch targets")
    batch_parser.add_argument("--wheel", required=True, help="the xt-pipeline wheel (pip wheel --no-deps -w dist .)")
    batch_parser.add_argument("--json", action="store_true")

    create_parser = commands.add_parser("create", help="create a workspace, or the template of a team's Azure services")
    create_parser.add_argument("what", choices=["team", "workspace"], help="team or workspace")
    create_parser.add_argument("name", help="the workspace's name; a team's: 3-12 lowercase letters and digits")
    create_parser.add_argument("--out", help="team: the template file (default: xt_team_NAME.json)")

    config_parser = commands.add_parser("config", help="write a starter xt_config.yaml")
    config_parser.add_argument("--create", action="store_true", required=True,
                               help="write the starter file (an existing one is never overwritten)")
    config_parser.add_argument("--path", default="xt_config.yaml", help="where (default: xt_config.yaml)")

    schema_parser = commands.add_parser("schema", help="print a contract's JSON Schema (manifest: the "
                                                       "xt_manifest.json of a zip dropped into uploads/)")
    schema_parser.add_argument("what", choices=["manifest"], help="manifest")

    completion_parser = commands.add_parser(
        "completion", help="print a shell completion script: eval \"$(xt completion bash)\" in ~/.bashrc "
                           "(zsh: ~/.zshrc)")
    completion_parser.add_argument("shell", choices=SHELLS, help="bash or zsh")


# --- xt completion: a static script, generated from the parser, so no command pays for completion ---
SHELLS = ("bash", "zsh")
_BASH_COMPLETE = """\
_xt_complete() {
    local cur="${COMP_WORDS[COMP_CWORD]}" command="" next i
    for ((i = 1; i < COMP_CWORD; i++)); do
        next="${command:+$command }${COMP_WORDS[i]}"
        _xt_words "$next" >/dev/null && command="$next"
    done
    COMPREPLY=($(compgen -W "$(_xt_words "$command")" -- "$cur"))
}
complete -o default -F _xt_complete xt xt-submit
"""
_ZSH_COMPLETE = """\
_xt() {
    local command="" next i
    for ((i = 2; i < CURRENT; i++)); do
        next="${command:+$command }${words[i]}"
        _xt_words "$next" >/dev/null && command="$next"
    done
    compadd -- ${=$(_xt_words "$command")} || _files
}
compdef _xt xt xt-submit
"""


def _completion_words(parser: argparse.ArgumentParser, path: str = "") -> dict:
    """{"list runs": "--workspace --job ...", ...}: each command's subcommands, options and choices."""
    words: list = []
    found = {path: words}
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words.append(name)
                found.update(_completion_words(sub, f"{path} {name}".strip()))
        elif action.option_strings:
            words += [s for s in action.option_strings if s.startswith("--")]
        elif action.choices:
            words += [str(choice) for choice in action.choices]
    return found


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The script `eval "$(xt completion SHELL)"` loads: a word list per command path, and the
    shell's function that finds the path typed so far and offers its words."""
    cases = "".join(f'        "{path}") echo "{" ".join(words)}" ;;\n'
                    for path, words in _completion_words(parser).items())
    lookup = f"_xt_words() {{\n    case \"$1\" in\n{cases}        *) return 1 ;;\n    esac\n}}\n"
    head = f"# xt {shell} completion, generated by `xt completion {shell}` (regenerate after upgrading xt)\n"
    return head + lookup + (_BASH_COMPLETE if shell == "bash" else _ZSH_COMPLETE)


def cmd_serve(args: argparse.Namespace) -> int:
    from xt_submit import bootstrap
    from xt_submit.runtime.local_host import run_host

    cfg = load(args)
    home = bootstrap.xt_home(cfg.general.xt_home)
    if cfg.xt_services.queue != "embedded":  # the team's services: run the tasks the Functions app hands out
        from xt_submit.runtime.agent import run_agent

        print(f"xt agent serving the tasks queue of {cfg.xt_services.queue} from {home} (Ctrl-C to stop)", file=sys.stderr)
        if run_agent(home, lambda: bootstrap.agent_parts(cfg), cfg) == 1:
            raise CliError(f"another xt host or agent is already serving {home}")
        return 0
    print(f"xt host serving {home} (Ctrl-C to stop)", file=sys.stderr)
    if run_host(home, lambda: bootstrap.embedded(home), idle_exit_seconds=args.idle_exit) == 1:
        raise CliError(f"another xt host is already serving {home}")
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    from xt_submit import config as xt_config
    from xt_submit.handlers.reindex import rebuild_workspace, workspaces_in_storage
    from xt_submit.runtime.host_control import host_running

    cfg = xt_config.load_config(args.config)
    if args.kind == "batch-settings":
        from xt_submit.services.batch_target import app_settings

        settings = app_settings(cfg, embedded_parts(cfg).ports.storage, args.wheel)
        if args.json:
            print_json(settings)
        else:
            print("\n".join(f"{name}={value}" for name, value in settings.items()))
        return 0
    parts = embedded_parts(cfg)
    if host_running(parts.home):
        raise CliError(f"a host is serving {parts.home}: wait until it is idle (it exits by itself) and run again")
    workspaces = [args.workspace] if args.workspace else workspaces_in_storage(parts.ports)
    skipped = 0
    for ws in workspaces:
        try:
            layout.check_name("--workspace", ws)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        counts = rebuild_workspace(parts.ports, ws)
        for item, reason in counts["skipped"]:
            print(f"{ws}: skipped {item}: {reason}")
        skipped += len(counts["skipped"])
        note = f"; skipped {len(counts['skipped'])} (listed above)" if counts["skipped"] else ""
        print(f"{ws}: reindexed {counts['jobs']} jobs, {counts['runs']} runs, {counts['metric_records']} metric records"
              f"{note}")
    return 1 if skipped else 0  # everything readable is indexed either way; 1 says the index lacks something


def cmd_create(args: argparse.Namespace) -> int:
    import json

    if args.what == "workspace":
        from xt_submit.cli.storage_commands import cmd_create_workspace

        return cmd_create_workspace(args)
    from xt_submit.services.team_template import build_template, next_steps

    template = build_template(args.name)
    path = Path(args.out or f"xt_team_{args.name}.json")
    if path.exists():
        raise CliError(f"{path}: exists; name another file with --out")
    path.write_text(json.dumps(template, indent=2) + "\n")
    print(next_steps(args.name, str(path)))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from xt_submit import config as xt_config

    xt_config.write_starter_config(args.path)
    print(f"wrote {args.path}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from xt_submit.domain.manifest import manifest_schema

    sys.stdout.write(manifest_schema().decode())
    return 0


COMMANDS = {"serve": cmd_serve, "admin": cmd_admin, "create": cmd_create, "config": cmd_config,
            "schema": cmd_schema}  # `completion`: cli/main.py runs it (the script is of the whole parser)
