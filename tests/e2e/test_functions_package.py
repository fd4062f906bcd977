"""The package `func azure functionapp publish` makes from the repository root (.funcignore), and
what remote build installs into it (requirements.txt): the app must index and build its parts from
those files and those distributions alone — no editable install, no tests, no node_modules."""
import json
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pathspec

ROOT = Path(__file__).resolve().parents[2]
PRUNED = {".git", ".venv", "node_modules", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "__pycache__"}


def published_files():
    """The repository's files that .funcignore keeps, relative to the root."""
    ignore = pathspec.PathSpec.from_lines("gitwildmatch", (ROOT / ".funcignore").read_text().splitlines())
    kept = []
    for path in sorted(ROOT.rglob("*")):
        relative = path.relative_to(ROOT)
        if PRUNED & set(relative.parts) or not path.is_file():
            continue
        if not ignore.match_file(relative.as_posix()):
            kept.append(relative.as_posix())
    return kept


def test_the_package_holds_the_app_and_nothing_a_deployment_does_not_run():
    files = published_files()
    assert {"host.json", "xt_functions.py", "requirements.txt", "function_app/app.py", "handlers/__init__.py",
            "xt_submit/bootstrap.py"} <= set(files)
    for unwanted in ("tests/", "bench/", "scripts/", "examples/", "node_modules/", ".venv/", ".ci/"):
        assert not [f for f in files if f.startswith(unwanted)], unwanted
    assert not [f for f in files if f.endswith((".md", ".pyc")) or f in ("pyproject.toml", "local.settings.json")]
    assert sum((ROOT / f).stat().st_size for f in files) < 5 * 1024**2


def _requirements():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    return [line for line in lines if line]


def _closure(names):
    """The distributions `names` need, with their own requirements (what pip would install), and
    their extras' (a library may import an optional one when it happens to be installed: e.g.
    azure-storage-blob tries azure-core's aiohttp transport)."""
    seen, todo = set(), [metadata.distribution(n).metadata["Name"] for n in names]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        for requirement in metadata.distribution(name).requires or []:
            dependency = re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0]
            try:
                todo.append(metadata.distribution(dependency).metadata["Name"])
            except metadata.PackageNotFoundError:
                pass  # a marker excludes it here (another platform or Python)
    return seen


def test_requirements_pin_every_distribution_the_published_app_loads(tmp_path, azurite_connection_string, mongo_uri):
    required = _requirements()
    assert required and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.]*", line) for line in required), required
    app_dir = tmp_path / "wwwroot"
    for name in published_files():
        (app_dir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, app_dir / name)
    # As the worker imports the app: the app's root and site-packages on the path, and no .pth
    # file processed (-S), so the editable install of this checkout is not there to help.
    probe = f"""
import importlib, json, os, sys
sys.path[:0] = [{str(app_dir)!r}, {sysconfig.get_paths()['purelib']!r}, {sysconfig.get_paths()['platlib']!r}]
os.environ.update(XT_STORAGE={azurite_connection_string!r}, XT_STORAGE_CONTAINER="xt-package", XT_MONGO={mongo_uri!r},
                  XT_SERVICEBUS="Endpoint=sb://127.0.0.1:9;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true")
entry = importlib.import_module("xt_functions")
names = sorted(f.get_function_name() for f in entry.app.get_functions())
from function_app import settings
settings.ports()
import xt_submit.handlers
print(json.dumps({{"functions": names, "handlers": xt_submit.handlers.__file__,
                  "modules": sorted({{m.split('.')[0] for m in sys.modules}})}}))
"""
    result = subprocess.run([sys.executable, "-S", "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert loaded["functions"] == ["dispatch", "heartbeat_timer", "run_events", "upload_received"]
    assert loaded["handlers"] == str(app_dir / "handlers" / "__init__.py")  # the published tree's handlers
    by_module = metadata.packages_distributions()
    distributions = {re.sub(r"[-_.]+", "-", d).lower() for m in loaded["modules"] for d in by_module.get(m, [])
                     if m not in sys.stdlib_module_names}
    distributions -= {"xt-pipeline"}  # this checkout, published as source
    allowed = _closure([line.split("==")[0] for line in required])
    assert distributions - allowed == set(), "loaded by the app but not installed by requirements.txt"
