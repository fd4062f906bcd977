"""A mistyped command, kind or option gets one line with the closest known name."""
import pytest

from xt_submit.cli.main import main


@pytest.mark.parametrize("argv, suggestion", [
    (["lst", "runs"], "; did you mean 'list'?"),
    (["list", "rnus"], "; did you mean 'runs'?"),
    (["view", "consle", "run1.1"], "; did you mean 'console'?"),
    (["run", "--concurent", "2", "train.py"], "; did you mean '--concurrent'?"),
    (["list", "runs", "--sortt", "lr"], "; did you mean '--sort'?"),
    (["zzzz"], ""),
])
def test_the_closest_name_is_suggested_on_the_same_line(argv, suggestion, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith(suggestion) if suggestion else "did you mean" not in line
