"""The Run API inside training scripts: buffered, never loses what was logged."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from xt_submit.domain import run_log
from xt_submit.node_kit.run_api import Run


def records(path):
    return run_log.parse(open(path, "rb").read())


def test_metrics_hparams_stage_and_index(tmp_path):
    path = tmp_path / "log.jsonl"
    with Run(str(path)) as run:
        run.log_hparams({"lr": 0.1})
        run.log_hparam("opt", "adam")
        run.log_metrics({"loss": 1.0})
        run.log_metrics({"epoch": 2, "loss": 0.5}, step_name="epoch", stage="train")
    entries = records(path)
    assert [e["event"] for e in entries] == ["hparams", "hparams", "metrics", "metrics"]
    assert entries[2]["data"] == {"loss": 1.0, "__index__": 1}
    assert entries[3]["data"] == {"epoch": 2, "train-loss": 0.5, "__index__": 2, "__step_name__": "epoch"}
    hparams, last, rows = run_log.summarize(entries)
    assert hparams == {"lr": 0.1, "opt": "adam"} and last == {"loss": 1.0, "train-loss": 0.5}
    assert [(r.step, r.name) for r in rows] == [(1, "loss"), (2, "train-loss")]
    with pytest.raises(ValueError, match="closed"):
        run.log_metrics({"loss": 0})


def test_buffer_is_flushed_by_time(tmp_path):
    path = tmp_path / "log.jsonl"
    run = Run(str(path), flush_seconds=0.05)
    run.log_metrics({"loss": 1})
    time.sleep(0.1)
    run.log_metrics({"loss": 2})  # the first call after the interval flushes both
    assert len(records(path)) == 2
    run.close()


def _script(tmp_path, body):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if not k.startswith("XT_")}
    return script, env


def test_outside_xt_writes_next_to_the_script_and_flushes_after_an_exception(tmp_path):
    script, env = _script(tmp_path, """
        from xt_submit import Run
        run = Run()
        for i in range(10):
            run.log_metrics({"loss": i})
        raise RuntimeError("diverged")
    """)
    result = subprocess.run([sys.executable, str(script)], cwd="/", env=env, capture_output=True, text=True)
    assert result.returncode == 1 and "diverged" in result.stderr
    assert len(records(tmp_path / "xt_run_log.jsonl")) == 10


def test_sigterm_flushes_before_the_process_ends(tmp_path):
    script, env = _script(tmp_path, """
        import sys, time
        from xt_submit import Run
        run = Run(flush_seconds=3600)
        for i in range(5):
            run.log_metrics({"loss": i})
        print("ready", flush=True)
        time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == -signal.SIGTERM  # still dies of SIGTERM, as the caller expects
    assert len(records(tmp_path / "xt_run_log.jsonl")) == 5


def test_checkpoint_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("XT_CHECKPOINT", str(tmp_path / "ckpt.json"))
    run = Run(str(tmp_path / "log.jsonl"))
    assert run.get_checkpoint() is None
    run.set_checkpoint({"epoch": 3, "best": 0.25})
    assert Run(str(tmp_path / "log2.jsonl")).get_checkpoint() == {"epoch": 3, "best": 0.25}
    assert records(tmp_path / "log.jsonl")[-1]["event"] == "checkpoint"


def test_the_standalone_wrapper_drives_one_run_to_its_end(parts, tmp_path):
    """`python -m xt_submit.entrypoints.node TASK_JSON`: a node that runs one wrapper per process."""
    from xt_submit.services.code_upload import upload_code
    from xt_submit.domain.messages import RunFinished, RunProgress, RunStarted, RunTask, decode_event, encode

    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(textwrap.dedent('''
        import os
        from xt_submit import Run
        run = Run()
        run.log_metrics({"step": 1, "loss": 0.5})
        os.makedirs(os.environ["XT_OUTPUT_DIR"], exist_ok=True)
        open(os.path.join(os.environ["XT_OUTPUT_DIR"], "done.txt"), "w").write("ok")
    '''))
    code_key, _ = upload_code(parts.ports.storage, parts.home, ["."], str(project), [], max_bytes=10**7)
    task = RunTask(workspace="ws1", experiment="e", job="job1", run="run1.1", command="python train.py",
                   code_key=code_key)
    node_dir = parts.home / "nodes" / "solo" / "ws1" / "run1.1"
    node_dir.mkdir(parents=True)
    (node_dir / "task.json").write_bytes(encode(task))
    subprocess.run([sys.executable, "-m", "xt_submit.entrypoints.node", str(node_dir / "task.json")], check=True, timeout=60,
                   env=dict(os.environ, XT_HOME=str(parts.home), XT_SYNC_SECONDS="0.1"))
    events = [decode_event(m.body) for m in parts.queue.receive("events", max_messages=10)]
    progress = [e for e in events if isinstance(e, RunProgress)]  # live metrics, if a sync saw them before the end
    events = [e for e in events if not isinstance(e, RunProgress)]
    assert [type(e) for e in events] == [RunStarted, RunFinished]
    assert events[1].status == "completed" and events[1].metrics == {"loss": 0.5}  # the step is the x axis, not a metric
    assert all(p.metrics == {"loss": 0.5} and p.primary == [] for p in progress)
    assert parts.ports.storage.read("workspaces/ws1/runs/run1.1/output/done.txt") == b"ok"


NUMBER_LIKES = '''
class Scalar:  # numpy and torch scalars, and 0-d arrays: .item() is the Python number
    def __init__(self, value): self.value = value
    def item(self): return self.value
class Vector:  # a many-valued array: .item() refuses, so it is not a metric
    def item(self): raise ValueError("can only convert an array of size 1")
class Count:  # an integer type: __index__
    def __index__(self): return 7
class Ratio:  # a float type: __float__
    def __float__(self): return 0.25
'''


@pytest.mark.parametrize("encoder", ["msgspec", "stdlib"])
def test_number_likes_log_as_the_numbers_they_stand_for(tmp_path, encoder):
    """np.float64(0.5), np.float32, np.int64, 0-d arrays, torch scalars: numbers, without importing numpy or torch."""
    script = tmp_path / "log_numbers.py"
    block = "import sys; sys.modules['msgspec'] = None\n" if encoder == "stdlib" else ""  # a box's bare Python
    script.write_text(block + NUMBER_LIKES + textwrap.dedent(f'''
        import sys
        from xt_submit.node_kit.run_api import Run
        with Run({str(tmp_path / "log.jsonl")!r}) as run:
            run.log_metrics({{"loss": Scalar(0.5), "step": Scalar(3), "flag": Scalar(True), "n": Count(),
                              "lr": Ratio(), "nan": Scalar(float("nan")), "ok": 1.5}})
            try:
                run.log_metrics({{"weights": Vector()}})
            except TypeError as exc:
                print(exc)
        assert "numpy" not in sys.modules and "torch" not in sys.modules
    '''))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cannot log a Vector: expected a number, text, a bool, or a list or dict of them"
    (entry,) = records(tmp_path / "log.jsonl")
    assert entry["data"] == {"loss": 0.5, "step": 3, "flag": True, "n": 7, "lr": 0.25, "nan": None, "ok": 1.5,
                             "__index__": 1}
    assert type(entry["data"]["step"]) is int and type(entry["data"]["loss"]) is float


def test_numpy_scalars_log_as_numbers_where_numpy_is_installed(tmp_path):
    np = pytest.importorskip("numpy")
    with Run(str(tmp_path / "log.jsonl")) as run:
        run.log_metrics({"loss": np.float64(0.5), "acc": np.float32(0.25), "step": np.int64(4), "w": np.array(2.0)})
    (entry,) = records(tmp_path / "log.jsonl")
    assert entry["data"] == {"loss": 0.5, "acc": 0.25, "step": 4, "w": 2.0, "__index__": 1}


def test_the_step_can_be_given_apart_from_the_metrics(tmp_path):
    """log_metrics(..., step=n) as MLflow and TensorBoard take it: the same record as the step in the dict."""
    path = tmp_path / "log.jsonl"
    with Run(str(path)) as run:
        run.log_metrics({"loss": 0.5}, step=3)
        run.log_metrics({"loss": 0.4}, step_name="epoch", stage="train", step=7)
        run.log_metrics({"step": 9, "loss": 0.3}, step=9)  # the same step twice is fine
        for bad, error in ((1.5, "step: expected a whole number, got 1.5"), (True, "got True"), ("4", "got '4'")):
            with pytest.raises(ValueError, match=error):
                run.log_metrics({"loss": 0.1}, step=bad)
        with pytest.raises(ValueError, match="step=2 and the metrics' own 'step'=1 disagree"):
            run.log_metrics({"step": 1, "loss": 0.1}, step=2)
    entries = records(path)
    assert [e["data"] for e in entries] == [
        {"step": 3, "loss": 0.5, "__index__": 1},
        {"epoch": 7, "train-loss": 0.4, "__index__": 2, "__step_name__": "epoch"},
        {"step": 9, "loss": 0.3, "__index__": 3}]  # the refused calls logged nothing
    _, last, rows = run_log.summarize(entries)
    assert [(r.step, r.name, r.value) for r in rows] == [(3, "loss", 0.5), (7, "train-loss", 0.4), (9, "loss", 0.3)]
