"""Finding, comparing, following and reusing runs, through the CLI, on a recorded 40-run sweep."""
import csv
import os

import pytest

from support.cli_project import SCRIPT, Project


@pytest.fixture(scope="module")
def sweep40(tmp_path_factory):
    """job1: 40 runs (lr x opt x seed) of the e2e training script, all completed."""
    project = Project(tmp_path_factory.mktemp("reports"))
    out = project.json("run", "--wait", "--concurrent", "4", "train.py", "--lr=[0.1,0.2,0.3,0.4,0.5]",
                       "--opt=[sgd,adam]", "--seed=[1,2,3,4]")
    assert out["status"] == "completed" and len(out["runs"]) == 40
    yield project
    project.stop_host()


def names(project, *args):
    return [r["name"] for r in project.json("list", "runs", *args)]


def test_run_lists_and_job_names(sweep40):
    assert names(sweep40, "run1.1-run1.5") == [f"run1.{k}" for k in range(1, 6)]
    assert len(names(sweep40, "run1.*")) == 40 == len(names(sweep40, "job1"))
    assert names(sweep40, "run1.3,run1.7", "run1.9") == ["run1.3", "run1.7", "run1.9"]


def test_field_options(sweep40):
    assert len(names(sweep40, "--experiment", "exper1")) == 40
    assert names(sweep40, "--experiment", "other") == []
    assert len(names(sweep40, "--status", "completed", "--target", "local", "--username", os.environ.get("USER", "root"))) in (0, 40)
    assert names(sweep40, "--workspace", "elsewhere") == []


def test_nested_filters_with_sort_and_last(sweep40):
    rows = sweep40.json("list", "runs", "--filter", "hparams.opt=adam", "--filter", "metrics.loss>1.5",
                        "--sort", "metrics.loss", "--last", "3")
    assert [r["hparams"]["opt"] for r in rows] == ["adam"] * 3
    losses = [r["metrics"]["loss"] for r in rows]
    assert losses == sorted(losses) and min(losses) > 1.5
    everything = sweep40.json("list", "runs", "--all")
    expected = sorted((r["metrics"]["loss"] for r in everything if r["hparams"]["opt"] == "adam"
                       and r["metrics"]["loss"] > 1.5))[-3:]
    assert losses == expected
    assert len(names(sweep40, "--filter", "hparams.opt:regex:^ad")) == 20
    assert names(sweep40, "--filter", "metrics.nope:exists:$true") == []
    assert len(names(sweep40, "--filter", "metrics.acc:exists:$true", "--filter", "hparams.lr<=0.2")) == 16


def test_sort_reverse_first_last(sweep40):
    by_lr = sweep40.json("list", "runs", "--sort", "hparams.lr", "--reverse", "--first", "4")
    assert [r["hparams"]["lr"] for r in by_lr] == [0.5] * 4
    assert names(sweep40, "--last", "2") == ["run1.39", "run1.40"]


def test_tags_set_clear_list_and_tag_filters(sweep40):
    sweep40.xt("set", "tags", "run1.1", "best", "note=first try")
    sweep40.xt("set", "tags", "run1.2", "baseline")
    sweep40.xt("set", "tags", "job1", "sweep=lr-opt")
    assert sweep40.json("list", "tags", "run1.1") == {"best": "", "note": "first try"}
    assert names(sweep40, "--tags-all", "best,note") == ["run1.1"]
    assert names(sweep40, "--tags-any", "best,baseline") == ["run1.1", "run1.2"]
    assert names(sweep40, "--filter", "tags.note:regex:first") == ["run1.1"]
    sweep40.xt("clear", "tags", "run1.1", "best")
    assert sweep40.json("list", "tags", "run1.1") == {"note": "first try"}
    assert sweep40.json("list", "tags", "job1") == {"sweep": "lr-opt"}
    bad = sweep40.xt("set", "tags", "run1.1", "bad tag!", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_columns_aliases_formats_and_unknown_columns(sweep40):
    table = sweep40.xt("list", "runs", "run1.1-run1.3", "--columns", "name,hparams.lr=LR,metrics.loss=Loss:.2f,created").stdout
    header, rule, *rows = table.splitlines()
    assert header.split() == ["name", "LR", "Loss", "created"] and len(rows) == 3
    assert rows[0].split()[:3] == ["run1.1", "0.1000", "0.33"]  # lr at the configured precision, loss as :.2f
    added = sweep40.xt("list", "runs", "run1.1", "--add-columns", "hparams.opt=Optimizer").stdout.splitlines()[0]
    assert added.split()[-1] == "Optimizer" and added.split()[0] == "name"
    for option in ("--columns", "--add-columns"):
        bad = sweep40.xt("list", "runs", option, "metrics.lossy", check=False)
        assert bad.returncode == 2 and bad.stderr.strip() == "xt: --columns: unknown column 'metrics.lossy' (no runs has it)"
    assert sweep40.xt("list", "runs", "--filter", "loss >> 2", check=False).returncode == 2


def test_group_export_and_json_are_the_same_rows(sweep40, tmp_path):
    groups = sweep40.json("list", "runs", "--group", "hparams.opt")
    assert [(g["group"], len(g["runs"])) for g in groups] == [("sgd", 20), ("adam", 20)]
    text = sweep40.xt("list", "runs", "--group", "hparams.opt").stdout
    assert "hparams.opt = sgd" in text and "hparams.opt = adam" in text
    for suffix, delimiter in ((".csv", ","), (".tsv", "\t")):
        path = tmp_path / f"runs{suffix}"
        sweep40.xt("list", "runs", "--columns", "name,hparams.lr,metrics.loss", "--export", str(path))
        with open(path) as f:
            rows = list(csv.reader(f, delimiter=delimiter))
        assert rows[0] == ["name", "lr", "loss"] and len(rows) == 41
        as_json = {r["name"]: r for r in sweep40.json("list", "runs")}
        assert all(float(loss) == as_json[name]["metrics"]["loss"] for name, _, loss in rows[1:])
    bad = sweep40.xt("list", "runs", "--export", str(tmp_path / "runs.xlsx"), check=False)
    assert bad.returncode == 2 and "expected a .csv or .tsv file" in bad.stderr


def test_report_defaults_come_from_the_config(sweep40):
    config = sweep40.code / "xt_config.yaml"
    config.write_text("run-reports:\n  sort: metrics.loss\n  last: 2\n  precision: 1\n")
    try:
        rows = sweep40.json("list", "runs")
        assert len(rows) == 2 and rows[0]["metrics"]["loss"] <= rows[1]["metrics"]["loss"]
        assert len(sweep40.json("list", "runs", "--all")) == 40
    finally:
        config.unlink()


def test_view_metrics_aligned_by_step(sweep40):
    history = sweep40.json("view", "metrics", "run1.1", "run1.2", "--metric", "loss")
    assert [m["step"] for m in history["run1.1"]] == [1, 2, 3]
    table = sweep40.xt("view", "metrics", "run1.1", "run1.2", "--metric", "loss").stdout.splitlines()
    assert table[0].split() == ["step", "run1.1:loss", "run1.2:loss"] and len(table) == 5


def test_plot_writes_a_png_with_a_line_per_run(sweep40, tmp_path):
    import matplotlib.image

    out = tmp_path / "loss.png"
    result = sweep40.xt("plot", "--job", "job1", "--metric", "loss", "--out", str(out))
    assert "(40 lines)" in result.stdout
    pixels = matplotlib.image.imread(str(out))
    assert out.stat().st_size > 10_000 and pixels.shape[0] >= 400 and pixels.shape[1] >= 600
    assert pixels.std() > 0.05  # not blank
    aggregated = sweep40.xt("plot", "--job", "job1", "--metric", "loss", "--aggregate", "mean", "--group-by", "lr",
                            "--out", str(tmp_path / "mean.png"))
    assert "(5 lines)" in aggregated.stdout
    assert sweep40.xt("plot", "run1.1", "--metric", "nope", "--out", str(tmp_path / "x.png"), check=False).returncode == 2
    default = sweep40.xt("plot", "--job", "job1", "--metric", "loss,acc")  # no --out: named after the job and metrics
    assert "wrote plot_job1_loss_acc.png" in default.stdout and (sweep40.code / "plot_job1_loss_acc.png").stat().st_size


def test_view_job_counts_best_run_and_duration(sweep40):
    summary = sweep40.json("view", "job", "job1")
    assert summary["completed"] == 40 and summary["runs"] == 40 and summary["duration"] > 0
    runs = sweep40.json("list", "runs", "--all")
    best = min(runs, key=lambda r: r["metrics"]["loss"])
    assert summary["best_run"]["name"] == best["name"] and summary["primary_metric"] == "loss (min)"


def test_workspaces_and_experiments(sweep40):
    assert sweep40.json("list", "workspaces") == ["ws1"]
    assert sweep40.json("list", "experiments") == ["exper1"]


def test_download_outputs_and_code(sweep40, tmp_path):
    sweep40.xt("download", "run1.4", "--dest", str(tmp_path))
    assert (tmp_path / "run1.4" / "result.txt").read_text() == "0.1\n"
    sweep40.xt("download", "run1.4", "--live", "--dest", str(tmp_path / "live"))
    assert (tmp_path / "live" / "run1.4" / "result.txt").exists()
    sweep40.xt("download", "job1", "--code", "--dest", str(tmp_path))
    assert (tmp_path / "job1_code" / "train.py").read_text() == SCRIPT


def test_monitor_follows_a_job_to_its_end(sweep40):
    out = sweep40.json("run", "train.py", "--lr=[0.7,0.8]", "--sleep=1")
    result = sweep40.xt("monitor", out["job"], timeout=60)
    assert "training lr=0.7" in result.stdout and "training lr=0.8" in result.stdout
    assert result.stdout.strip().endswith("ended (2 completed)")


def test_rerun_reproduces_command_and_hparams_under_a_new_job(sweep40):
    original = sweep40.json("view", "run", "run1.7")
    out = sweep40.json("rerun", "run1.7")
    assert out["job"] != "job1" and out["rerun_of"] == "run1.7"
    sweep40.wait_job(out["job"])
    (rerun,) = sweep40.json("list", "runs", "--job", out["job"])
    assert rerun["command"] == original["command"]
    assert rerun["hparams"] == original["hparams"] and rerun["status"] == "completed"
    assert rerun["metrics"] == original["metrics"]
    assert rerun["tags"]["rerun_of"] == "run1.7"


def test_a_bare_name_in_a_filter_or_sort_is_the_hparam_before_the_metric_and_unknown_ones_fail(sweep40):
    """XT's documented `--filter "lr=.03"`: lr is an hparam here, so it filters on it (it used to
    look for a metric named lr and return no runs)."""
    rows = sweep40.json("list", "runs", "--filter", "lr=0.1", "--sort", "lr")
    assert rows and {r["hparams"]["lr"] for r in rows} == {0.1}
    by_loss = [r["metrics"]["loss"] for r in sweep40.json("list", "runs", "--sort", "loss", "--all")]
    assert by_loss == sorted(by_loss)
    for args, message in ((("--sort", "nope"), "xt: --sort: unknown column 'nope' (no run has a field, hparam or "
                                                 "metric of that name)"),
                          (("--filter", "metrics.los<0.5"), "xt: --filter: unknown column 'metrics.los' (no run has it)")):
        bad = sweep40.xt("list", "runs", *args, check=False)
        assert bad.returncode == 2 and bad.stderr.strip() == message


def test_the_notebook_api_returns_what_xt_list_runs_json_prints(sweep40, monkeypatch):
    import xt_submit

    monkeypatch.setenv("XT_HOME", str(sweep40.home))
    monkeypatch.chdir(sweep40.code)
    for kwargs, args in (({}, ()),
                         ({"job": "job1", "filter": ["hparams.opt=adam", "metrics.loss>1.5"], "sort": "metrics.loss",
                           "last": 3}, ("--job", "job1", "--filter", "hparams.opt=adam", "--filter", "metrics.loss>1.5",
                                        "--sort", "metrics.loss", "--last", "3")),
                         ({"filter": "lr=0.2", "sort": "acc", "reverse": True, "all": True},
                          ("--filter", "lr=0.2", "--sort", "acc", "--reverse", "--all"))):
        assert xt_submit.list_runs(**kwargs) == sweep40.json("list", "runs", *args), kwargs
    assert xt_submit.list_runs("run1.1-run1.3") == sweep40.json("list", "runs", "run1.1-run1.3")
    history = xt_submit.metrics(["run1.1", "run1.2"], metric="loss")
    assert history == sweep40.json("view", "metrics", "run1.1", "run1.2", "--metric", "loss")
    assert [m["step"] for m in history["run1.1"]] == [1, 2, 3]
    import pandas  # in the test extra

    frame = xt_submit.list_runs("run1.*", as_frame=True)
    assert isinstance(frame, pandas.DataFrame) and len(frame) == 40 and set(frame["status"]) == {"completed"}
    jobs = xt_submit.list_jobs()
    assert jobs == sweep40.json("list", "jobs")
    assert [(j["name"], j["run_count"], j["counts"]["completed"]) for j in jobs][0] == ("job1", 40, 40)
    assert xt_submit.list_jobs(status="completed", filter="run_count>39") == jobs[:1]  # a bare name: the job's field
    assert xt_submit.list_jobs(status="error") == sweep40.json("list", "jobs", "--status", "error") == []
    assert list(xt_submit.list_jobs(as_frame=True)["name"]) == [j["name"] for j in jobs]
