"""mypy on the layers pyproject.toml names ([tool.mypy] files): the ports and their callers agree."""
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parents[2]


def test_the_typed_layers_type_check(tmp_path):
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache"),
                                "--no-error-summary"])
    assert status == 0, out + err
