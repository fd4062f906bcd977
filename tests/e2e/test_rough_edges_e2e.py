"""Rough edges through the CLI (issue 16, class 7): each a one-line error naming what was expected,
a non-zero exit, no traceback and nothing left half-written."""


def test_export_into_a_missing_folder_is_one_line_and_writes_nothing(project, tmp_path):
    project.xt("run", "--wait", "train.py", "--lr=0.1")
    target = tmp_path / "missing" / "runs.csv"
    result = project.xt("list", "runs", "--export", str(target), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"xt: --export: {str(target)!r}: expected an existing folder, "
                                     f"{str(target.parent)!r} is not one")
    assert not target.parent.exists()
    good = tmp_path / "runs.csv"
    project.xt("list", "runs", "--export", str(good))
    assert good.read_text().splitlines()[0].startswith("name,") and not (tmp_path / "runs.csv.part").exists()


def test_an_xt_home_that_is_a_file_is_one_line(project, tmp_path):
    home = tmp_path / "home-file"
    home.write_text("not a folder")
    project.env["XT_HOME"] = str(home)
    result = project.xt("list", "runs", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert str(home) in line
