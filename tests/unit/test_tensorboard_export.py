"""`xt export tensorboard` (services/tensorboard_export.py) on runs recorded through the handlers and
the embedded stats store, read back with TensorBoard's own event reader: one folder per run named by
the swept hparams, every numeric metric at its step and wall time, the HParams plugin's summaries,
no doubled points on a re-export, and bad input refused with nothing written."""
import math
import sys

import pytest

from support import pipeline
from xt_submit import config as xt_config
from xt_submit import handlers
from xt_submit.domain import layout, run_log
from xt_submit.domain.errors import NotFound, OneLineError
from xt_submit.domain.messages import JobSubmitted
from xt_submit.domain.run_query import QueryError
from xt_submit.services import tensorboard_export

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
hparams_metadata = pytest.importorskip("tensorboard.plugins.hparams.metadata")
api_pb2 = pytest.importorskip("tensorboard.plugins.hparams.api_pb2")

WS = pipeline.WS
SWEEP = {"lr": [0.01, 0.1], "bs": [32, 64], "opt": ["sgd"]}  # opt is fixed: not in the folder names


def losses(lr):
    return {step: lr * 10 / step for step in (1, 2, 3)}


def record_sweep(parts):
    """job1's four runs, each through dispatch, its node's run log and the start and finish handlers.
    Each logs lr/bs/opt, then steps 1-3 of loss (with a text `phase` and a NaN `grad`), then one
    `final` without a step; returns {run: its hparams}."""
    key, sha = pipeline.make_code_zip(parts)
    manifest = pipeline.make_manifest(key, sha, hp_space=SWEEP)
    handlers.dispatch_job(JobSubmitted(submission_id="sub-1", manifest=manifest, submitted_at=100.0), parts.ports)
    planned = {run["name"]: run["hparams"] for run in parts.ports.stats.list_runs(WS, job="job1")}
    storage = parts.ports.storage
    for run, hp in planned.items():
        log = layout.run_log_key(WS, run)
        storage.create_log(log, run_log.record(100.0, "created", {"job": "job1", "command": "c", "step_name": "step"})
                           + run_log.record(100.0, "hparams", hp))
        storage.append(log, run_log.record(110.0, "started", {"node": "n1"}))
        for step, loss in losses(hp["lr"]).items():
            storage.append(log, run_log.record(110.0 + step, "metrics",
                                               {"step": step, "loss": loss, "phase": "warmup", "grad": math.nan}))
        storage.append(log, run_log.record(115.5, "metrics", {"final": 0.5}))
        storage.append(log, run_log.record(120.0, "ended", {"status": "completed", "exit_code": 0, "duration": 10.0,
                                                            "reason": ""}))
        handlers.run_started(pipeline.started(run), parts.ports)
        handlers.run_finished(pipeline.finished(run), parts.ports)
    return planned


def export(parts, dest, **selection):
    return tensorboard_export.export_tensorboard(xt_config.load_config(None), parts.ports.stats, str(dest), **selection)


def read(folder):
    accumulator = event_accumulator.EventAccumulator(str(folder))
    accumulator.Reload()
    return accumulator


def expected_folder(run, hp):
    return f"{run}_lr={hp['lr']}_bs={hp['bs']}"


def test_each_run_is_one_folder_named_by_the_swept_hparams_with_its_metrics_as_scalars(parts, tmp_path):
    planned = record_sweep(parts)
    dest = tmp_path / "tb"
    written = export(parts, dest, jobs=["job1"])

    assert sorted(p.name for p in dest.iterdir()) == sorted(expected_folder(run, hp) for run, hp in planned.items())
    assert [r["run"] for r in written["runs"]] == sorted(planned)
    for run, hp in planned.items():
        events = read(dest / expected_folder(run, hp))
        assert sorted(events.Tags()["scalars"]) == ["final", "loss"]
        loss = events.Scalars("loss")
        assert [(point.step, point.wall_time) for point in loss] == [(1, 111.0), (2, 112.0), (3, 113.0)]
        # TensorBoard keeps a scalar as a 32-bit float
        assert [point.value for point in loss] == pytest.approx(list(losses(hp["lr"]).values()), rel=1e-6)
        # a record without a step is at its call's place in the log (the 4th call), as xt report plots it
        assert [(p.step, p.wall_time, p.value) for p in events.Scalars("final")] == [(4, 115.5, 0.5)]
    # the text `phase` and the NaN `grad` (kept as null) of 3 steps of 4 runs: skipped and counted
    assert [r["skipped"] for r in written["runs"]] == [6] * 4 and written["skipped"] == 24
    assert written["points"] == 4 * 4


def test_the_hparams_plugin_holds_each_runs_hparams_times_and_status_in_its_own_file(parts, tmp_path):
    planned = record_sweep(parts)
    dest = tmp_path / "tb"
    export(parts, dest, jobs=["job1"])
    for run, hp in planned.items():
        content = read(dest / expected_folder(run, hp)).PluginTagToContent("hparams")
        # no experiment summary: TensorBoard derives it from the runs (with each hparam's domain)
        assert set(content) == {hparams_metadata.SESSION_START_INFO_TAG, hparams_metadata.SESSION_END_INFO_TAG}
        start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
        assert {name: value.WhichOneof("kind") for name, value in start.hparams.items()} == {
            "lr": "number_value", "bs": "number_value", "opt": "string_value"}
        assert (start.hparams["lr"].number_value, start.hparams["bs"].number_value,
                start.hparams["opt"].string_value) == (hp["lr"], hp["bs"], "sgd")
        assert start.start_time_secs == 110.0
        end = hparams_metadata.parse_session_end_info_plugin_data(content[hparams_metadata.SESSION_END_INFO_TAG])
        assert (api_pb2.Status.Name(end.status), end.end_time_secs) == ("STATUS_SUCCESS", 120.0)


def test_a_failed_run_ends_as_a_failure_and_a_live_one_has_no_end(parts, tmp_path):
    planned = record_sweep(parts)
    first, second = sorted(planned)[:2]
    parts.ports.stats.update_run(WS, first, {"status": "error"})
    parts.ports.stats.update_run(WS, second, {"status": "running"})
    folders = {r["run"]: r["folder"] for r in export(parts, tmp_path / "tb", names=[first, second])["runs"]}
    failed = read(tmp_path / "tb" / folders[first]).PluginTagToContent("hparams")
    end = hparams_metadata.parse_session_end_info_plugin_data(failed[hparams_metadata.SESSION_END_INFO_TAG])
    assert api_pb2.Status.Name(end.status) == "STATUS_FAILURE"
    live = read(tmp_path / "tb" / folders[second]).PluginTagToContent("hparams")
    assert set(live) == {hparams_metadata.SESSION_START_INFO_TAG}


def test_a_re_export_replaces_each_runs_folder_and_never_doubles_points(parts, tmp_path):
    planned = record_sweep(parts)
    dest = tmp_path / "tb"
    export(parts, dest, jobs=["job1"])
    export(parts, dest, jobs=["job1"])
    for run, hp in planned.items():
        folder = dest / expected_folder(run, hp)
        assert len(list(folder.iterdir())) == 1
        assert [point.step for point in read(folder).Scalars("loss")] == [1, 2, 3]
    # two runs that differ in lr only: their folders lose bs, and the earlier ones are gone
    same_bs = sorted(run for run, hp in planned.items() if hp["bs"] == 32)
    export(parts, dest, names=same_bs)
    others = sorted(expected_folder(run, hp) for run, hp in planned.items() if hp["bs"] != 32)
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [f"{run}_lr={planned[run]['lr']}" for run in same_bs] + others)
    assert [point.step for point in read(dest / f"{same_bs[0]}_lr={planned[same_bs[0]]['lr']}").Scalars("loss")] == [1, 2, 3]


def test_one_run_alone_is_named_by_the_run_only_and_filters_select_as_in_list_runs(parts, tmp_path):
    planned = record_sweep(parts)
    export(parts, tmp_path / "one", names=["run1.1"])
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["run1.1"]
    written = export(parts, tmp_path / "fast", jobs=["job1"], filters=["lr=0.1"])  # a bare name: the hparam
    assert sorted(r["run"] for r in written["runs"]) == sorted(run for run, hp in planned.items() if hp["lr"] == 0.1)
    assert sorted(p.name for p in (tmp_path / "fast").iterdir()) == sorted(
        f"{run}_bs={hp['bs']}" for run, hp in planned.items() if hp["lr"] == 0.1)


def test_folder_names_are_safe_and_bounded():
    runs = [{"name": "run3.1", "hparams": {"lr": 0.1 + 0.2, "data": "s3://bucket/a b", "note": "x" * 500, "k": 1}},
            {"name": "run3.2", "hparams": {"lr": 0.01, "data": "other", "note": "y", "k": 1}}]
    swept = tensorboard_export.swept_hparams(runs)
    assert swept == ["lr", "data", "note"]
    names = [tensorboard_export.folder_name(run, swept) for run in runs]
    assert names[1] == "run3.2_lr=0.01_data=other_note=y"
    assert names[0].startswith("run3.1_lr=0.3_data=s3-bucket-a-b_note=xxx")
    assert len(names[0]) <= tensorboard_export.MAX_FOLDER_NAME
    assert all(set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._=+-") for name in names)
    # a run without an hparam the others have is a value of its own
    assert tensorboard_export.swept_hparams([{"name": "a", "hparams": {"lr": 1}}, {"name": "b", "hparams": {}}]) == ["lr"]
    # values that differ past the digits a name shows still differ
    close = [{"name": "a", "hparams": {"lr": 0.1234567}}, {"name": "b", "hparams": {"lr": 0.1234568}}]
    assert tensorboard_export.swept_hparams(close) == ["lr"]


@pytest.mark.parametrize(("selection", "error", "message"), [
    ({"names": ["run9.9"]}, NotFound, "run run9.9 not found in workspace ws1"),
    ({"jobs": ["job7"]}, NotFound, "job job7 not found in workspace ws1"),
    ({"jobs": ["job1"], "filters": ["lr>5"]}, QueryError, "no runs match job1 where lr>5 in workspace ws1"),
    ({}, OneLineError, "xt export tensorboard: name runs (run7.1 run7.2, run7.*), --job JOB or --experiment EXP"),
    ({"names": ["nonsense"]}, QueryError, "run list: 'nonsense'"),
])
def test_bad_selections_are_one_line_naming_the_thing_and_write_nothing(parts, tmp_path, selection, error, message):
    record_sweep(parts)
    with pytest.raises(error) as raised:
        export(parts, tmp_path / "tb", **selection)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
    assert not (tmp_path / "tb").exists()


def test_a_dest_that_is_a_file_is_refused(parts, tmp_path):
    record_sweep(parts)
    dest = tmp_path / "tb"
    dest.write_text("not a folder")
    with pytest.raises(OneLineError, match=r"^--dest: '.*tb' is a file, expected a folder$"):
        export(parts, dest, jobs=["job1"])
    assert dest.read_text() == "not a folder"


def test_a_folder_of_other_files_under_a_runs_name_is_not_replaced(parts, tmp_path):
    record_sweep(parts)
    dest = tmp_path / "tb"
    (dest / "run1.1_mine").mkdir(parents=True)
    (dest / "run1.1_mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OneLineError, match="run1.1_mine holds more than event files"):
        export(parts, dest, jobs=["job1"])
    assert [p.name for p in dest.iterdir()] == ["run1.1_mine"]
    assert (dest / "run1.1_mine" / "notes.txt").read_text() == "keep me"


def test_without_tensorboardx_the_error_names_the_extra_and_nothing_is_written(parts, tmp_path, monkeypatch):
    record_sweep(parts)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # what `import tensorboardX` sees when it is not installed
    with pytest.raises(OneLineError) as raised:
        export(parts, tmp_path / "tb", jobs=["job1"])
    assert str(raised.value) == "xt export tensorboard needs tensorboardX: pip install 'xt-pipeline[tensorboard]'"
    assert not (tmp_path / "tb").exists()


def test_view_without_the_tensorboard_program_says_so_before_exporting(parts, tmp_path, monkeypatch):
    record_sweep(parts)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(OneLineError) as raised:
        tensorboard_export.view_tensorboard(xt_config.load_config(None), parts.ports.stats, dest=str(tmp_path / "tb"),
                                            jobs=["job1"])
    assert str(raised.value).startswith("xt view tensorboard needs the tensorboard program")
    assert "xt-pipeline[tensorboard]" in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "tb").exists()
