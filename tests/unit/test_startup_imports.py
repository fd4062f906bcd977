"""What starting up loads, by module name (never by timing): a training script's `from xt_submit
import Run`, building the CLI's parser (`xt --help`, and the first step of every command) and a
whole `xt list runs` (msgspec aside: it reads the records) leave the heavy libraries alone. The
start-up times themselves are measured by bench/startup.py against `python -c pass`."""
from __future__ import annotations

import json
import subprocess
import sys

HEAVY = {"yaml", "msgspec", "pymongo", "azure", "matplotlib", "tqdm", "paramiko", "regex", "optuna", "bson"}

# (sys.modules is read before json is imported to print it)
LOADED = ("import sys; loaded = {m.split('.')[0] for m in sys.modules}; import json; "
          "print(json.dumps(sorted(loaded & set(sys.argv[1:]))))")


def loaded_by(code: str, names, *, env=None, cwd=None) -> set:
    """Which of the top-level modules `names` are in sys.modules after `code` runs in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", f"{code}\n{LOADED}", *sorted(names)], capture_output=True, text=True,
                         env=env, cwd=cwd, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def heavy_loaded_by(code: str, *, env=None, cwd=None) -> set:
    return loaded_by(code, HEAVY, env=env, cwd=cwd)


def test_a_training_script_imports_run_without_any_heavy_library():
    # msgspec included: it is imported at the first log call, not with the module
    assert heavy_loaded_by("import xt_submit\nfrom xt_submit import Run") == set()


def test_logging_still_uses_the_fast_encoder_once_it_logs(tmp_path):
    loaded = heavy_loaded_by(f"from xt_submit import Run\nr = Run(log_path={str(tmp_path / 'log.jsonl')!r})\n"
                             "r.log_metrics({'loss': 0.5})\nr.close()")
    assert loaded == {"msgspec"}
    assert b'"loss":0.5' in (tmp_path / "log.jsonl").read_bytes()


def test_the_cli_parser_loads_no_sdk_yaml_or_progress_bar():
    """`xt --help` builds every group's parser; what it prints needs no config file, no SDK."""
    code = ("import contextlib, io\nfrom xt_submit.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main.main(['--help'])\n    except SystemExit:\n        pass")
    # msgspec included: the parser's defaults are constants in the CLI, the reports are imported by
    # the commands that print them
    assert heavy_loaded_by(code) == set()


def test_listing_runs_loads_no_sdk_yaml_or_progress_bar(tmp_path):
    env = {**__import__("os").environ, "XT_HOME": str(tmp_path / "home")}
    code = "import sys\nfrom xt_submit.cli import main\nmain.main(['list', 'runs', '--last', '20'])"
    assert heavy_loaded_by(code, env=env, cwd=tmp_path) - {"msgspec"} == set()


# Stdlib modules only other commands use (JSON output, CSV export, temporary files, a host's waits,
# a manifest's user and seed, file copies, a host's log), and dataclasses: each dataclass compiles its
# methods as it is made; inspect (~10 ms): msgspec's typing_extensions would bring it.
UNUSED_BY_READS = {"json", "csv", "tempfile", "select", "getpass", "random", "shlex", "dataclasses", "shutil",
                   "logging", "inspect"}


def test_help_and_listing_runs_leave_what_only_other_commands_use(tmp_path):
    help_code = ("import contextlib, io\nfrom xt_submit.cli import main\n"
                 "with contextlib.redirect_stdout(io.StringIO()):\n"
                 "    try:\n        main.main(['--help'])\n    except SystemExit:\n        pass")
    assert loaded_by(help_code, UNUSED_BY_READS) == set()
    env = {**__import__("os").environ, "XT_HOME": str(tmp_path / "home")}
    code = "from xt_submit.cli import main\nmain.main(['list', 'runs', '--last', '20'])"
    # a home's first command builds its stats index from storage (handlers.reindex): not the case measured
    subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, cwd=tmp_path, timeout=120, check=True)
    assert loaded_by(code, UNUSED_BY_READS, env=env, cwd=tmp_path) == set()


def test_a_command_builds_only_the_parsers_of_the_group_that_defines_it(tmp_path):
    env = {**__import__("os").environ, "XT_HOME": str(tmp_path / "home")}
    code = "import sys\nfrom xt_submit.cli import main\nmain.main(['list', 'runs', '--last', '20'])"
    # a home's first command builds its stats index from storage (handlers.reindex): not the case measured
    subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, cwd=tmp_path, timeout=120, check=True)
    out = subprocess.run([sys.executable, "-c", code + "\nprint(sorted(m for m in sys.modules if m.startswith("
                          "'xt_submit.')))"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"')))
    groups = {m.rsplit(".", 1)[1] for m in loaded if m.endswith("_commands")}
    assert "report_commands" in groups and not groups & {"job_commands", "admin_commands"}
    # whether a host must be started is asked of host_control, not of the host (handlers, executors, wrapper)
    assert "xt_submit.runtime.host_control" in loaded
    assert not loaded & {"xt_submit.runtime.local_host", "xt_submit.handlers", "xt_submit.runtime.wrapper",
                         "xt_submit.node_kit.reaper", "xt_submit.node_kit.code_archive"}


def test_a_waited_run_with_json_output_draws_no_bar_and_loads_no_progress_bar(tmp_path):
    """`xt run --wait --json` (scripts, the bench) has no bar to draw: tqdm's import (~30 ms of CPU
    beside the job's first runs) is not paid."""
    (tmp_path / "t.py").write_text("print('ran')\n")
    env = {**__import__("os").environ, "XT_HOME": str(tmp_path / "home"), "XT_HOST_IDLE_EXIT": "1"}
    code = ("import contextlib, io\nfrom xt_submit.cli import main\nout = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n    code = main.main(['run', '--wait', '--json', 't.py'])\n"
            "assert code == 0 and json_ok(out.getvalue()), out.getvalue()")
    code = "import json\ndef json_ok(text):\n    return json.loads(text)['status'] == 'completed'\n" + code
    assert loaded_by(code, {"tqdm"}, env=env, cwd=tmp_path) == set()


def test_a_command_loads_msgspec_without_typing_extensions_and_inspect(tmp_path):
    """msgspec alone imports typing_extensions (and with it inspect), ~15 ms of a command's start."""
    env = {**__import__("os").environ, "XT_HOME": str(tmp_path / "home")}
    code = "from xt_submit.cli import main\nmain.main(['list', 'runs', '--last', '20'])"
    subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, cwd=tmp_path, timeout=120, check=True)
    assert loaded_by(code, {"msgspec", "typing_extensions", "inspect"}, env=env, cwd=tmp_path) == {"msgspec"}


def test_msgspec_imported_lean_decodes_as_usual_and_leaves_typing_extensions_importable():
    code = ("from xt_submit.domain.msgspec_import import import_msgspec\nimport_msgspec()\nimport sys\n"
            "assert 'typing_extensions' not in sys.modules\n"
            "from typing import Annotated, Optional\nimport msgspec\n"
            "class S(msgspec.Struct, kw_only=True):\n"
            "    n: Annotated[int, msgspec.Meta(ge=0)]\n    name: Optional[str] = None\n"
            "assert msgspec.json.decode(b'{\"n\": 3}', type=S) == S(n=3)\n"
            "try:\n    msgspec.json.decode(b'{\"n\": -1}', type=S)\nexcept msgspec.ValidationError as e:\n"
            "    assert '>= 0' in str(e), e\nelse:\n    raise AssertionError('the constraint was lost')\n"
            "import typing_extensions  # an SDK's later import loads it as usual\n"
            "assert typing_extensions.TypedDict")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_host_loads_neither_dataclasses_nor_inspect():
    """The host's imports are on the path of a pool job's first runs (bench/p7_pool.py): its records
    are NamedTuples, and msgspec is imported lean, so neither dataclasses nor inspect (~10 ms) is loaded."""
    code = ("from xt_submit.domain.msgspec_import import import_msgspec\nimport_msgspec()\n"
            "import xt_submit.entrypoints.host, xt_submit.runtime.pool_executor, xt_submit.adapters.nodes.ssh")
    assert loaded_by(code, {"dataclasses", "inspect"}) == set()


def test_xt_run_starts_its_host_before_loading_what_only_the_snapshot_and_the_host_need(tmp_path):
    """What `xt run` does before it starts the host (config, manifest, plan, registration) waits in
    front of a job's first run: dataclasses and inspect, the snapshot's zipfile, hashlib (OpenSSL's
    binding) and the handlers come after it, in a new home (whose empty index has nothing to
    rebuild) and in one already used."""
    (tmp_path / "t.py").write_text("print('ran')\n")
    env = {**__import__("os").environ, "XT_HOME": str(tmp_path / "home"), "XT_HOST_IDLE_EXIT": "1"}
    # msgspec imported lean first, as the CLI's main does before any command
    code = ("import sys\nfrom xt_submit.domain.msgspec_import import import_msgspec\nimport_msgspec()\n"
            "from xt_submit.runtime import host_control\nseen = []\n"
            "def ensure_host(home, idle_exit_seconds=None, warm=()):\n"
            "    seen.append(sorted({'dataclasses', 'inspect', 'zipfile', 'hashlib', 'xt_submit.handlers'}"
            " & set(sys.modules)))\n"
            "    raise SystemExit(0)\n"
            "host_control.ensure_host = ensure_host\n"
            "from xt_submit.cli import main\n"
            "try:\n    main.main(['run', 't.py', '--lr=[0.1,0.2]'])\nexcept SystemExit:\n    pass\n"
            "print('seen', seen)")
    for home in ("new", "used"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                             timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == "seen [[]]", home
