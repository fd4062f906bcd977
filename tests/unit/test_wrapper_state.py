"""The supervisor's state log (wrapper.STATE_LOG): one line appended per save, the last whole line the
state a successor resumes from; a line cut short never hides the one before it or runs into the next;
the log stays bounded; a run dir a host before the log left is still taken over."""
import errno
import json
import os
from pathlib import Path

import pytest

from xt_submit.domain.messages import RunTask
from xt_submit.runtime import wrapper as wrapper_module
from xt_submit.runtime.wrapper import STATE_LOG, RunWrapper, saved_state

WS = "ws1"


def a_task(code_key="x"):
    return RunTask(workspace=WS, experiment="e", job="job1", run="run1.1", command="python train.py", code_key=code_key)


def a_wrapper(parts, task=None):
    node_dir = parts.home / "nodes" / "local" / WS / "run1.1"
    node_dir.mkdir(parents=True, exist_ok=True)
    return RunWrapper(task or a_task(), node_dir, parts.ports.storage, parts.ports.publisher, node=parts.local_node)


def lines_of(node_dir):
    return (Path(node_dir) / STATE_LOG).read_bytes().splitlines()


def test_a_run_from_start_to_report_leaves_one_state_log_whose_last_line_says_it_finished(parts):
    from support.pipeline import make_code_zip

    key, _ = make_code_zip(parts, {"train.py": "print('hi')\n"})
    wrapper = a_wrapper(parts, a_task(key))
    wrapper.start()
    while not wrapper.supervise():
        wrapper.node.wait_for_exit(0.5)
    names = sorted(os.listdir(wrapper.node_dir))
    assert STATE_LOG in names and "wrapper_state.json" not in names and "finished" not in names, names
    assert not any(name.endswith(".tmp") for name in names), names
    states = [json.loads(line) for line in lines_of(wrapper.node_dir)]
    assert len(states) >= 2 and states[0]["pid"] == wrapper.state["pid"] and not states[0].get("finished")
    assert saved_state(wrapper.node_dir) == wrapper.state and wrapper.state["finished"] is True
    again = RunWrapper.resume(wrapper.task, wrapper.node_dir, parts.ports.storage, parts.ports.publisher,
                              node=parts.local_node)
    sent = []
    again.publisher = type("Recording", (), {"send_events": lambda self, events: sent.extend(events)})()
    assert again.supervise() and sent == []  # a successor does not report the run again


def test_a_line_cut_short_is_skipped_and_the_next_save_does_not_run_into_it(parts):
    wrapper = a_wrapper(parts)
    wrapper.state["console_offset"] = 5
    wrapper._save_state()
    wrapper.state["console_offset"] = 9
    wrapper._save_state()
    with open(wrapper.node_dir / STATE_LOG, "ab") as f:
        f.write(b'{"started_at": null, "console_off')  # a crash in the middle of a save
    assert saved_state(wrapper.node_dir)["console_offset"] == 9
    adopted = RunWrapper.resume(wrapper.task, wrapper.node_dir, parts.ports.storage, parts.ports.publisher,
                                node=parts.local_node)
    assert adopted.state["console_offset"] == 9
    adopted.state["console_offset"] = 12
    adopted._save_state()
    adopted.state["console_offset"] = 15
    adopted._save_state()
    assert [json.loads(line)["console_offset"] for line in lines_of(wrapper.node_dir)] == [12, 15]


def test_a_save_that_failed_is_followed_by_a_whole_log(parts, monkeypatch):
    wrapper = a_wrapper(parts)
    wrapper._save_state()
    real_open = Path.open

    def half_then_full(self, mode="r", *args, **kwargs):
        f = real_open(self, mode, *args, **kwargs)
        if self.name == STATE_LOG and mode == "ab":
            f.write(b'{"torn": ')
            f.close()
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return f

    monkeypatch.setattr(Path, "open", half_then_full)
    wrapper.state["log_offset"] = 7
    with pytest.raises(OSError):
        wrapper._save_state()
    monkeypatch.setattr(Path, "open", real_open)
    wrapper.state["log_offset"] = 8
    wrapper._save_state()
    assert [json.loads(line)["log_offset"] for line in lines_of(wrapper.node_dir)] == [8]


def test_the_log_is_written_anew_with_the_last_state_once_it_outgrows_its_bound(parts, monkeypatch):
    wrapper = a_wrapper(parts)
    monkeypatch.setattr(wrapper_module, "STATE_LOG_BYTES", 2000)
    for offset in range(200):
        wrapper.state["console_offset"] = offset
        wrapper._save_state()
        assert os.path.getsize(wrapper.node_dir / STATE_LOG) <= 2000
    assert saved_state(wrapper.node_dir)["console_offset"] == 199
    assert 1 < len(lines_of(wrapper.node_dir)) < 200


def test_a_run_dir_left_by_a_host_before_the_log_is_taken_over(parts):
    wrapper = a_wrapper(parts)
    (wrapper.node_dir / "wrapper_state.json").write_text(json.dumps({**wrapper.state, "log_offset": 4}))
    assert saved_state(wrapper.node_dir)["log_offset"] == 4 and not saved_state(wrapper.node_dir).get("finished")
    (wrapper.node_dir / "finished").write_text("")
    adopted = RunWrapper.resume(wrapper.task, wrapper.node_dir, parts.ports.storage, parts.ports.publisher,
                                node=parts.local_node)
    assert adopted.state["finished"] is True and adopted.state["log_offset"] == 4
    assert adopted.supervise()  # ended and reported: nothing to send


def test_a_log_with_no_whole_state_is_no_state(parts):
    node_dir = parts.home / "nodes" / "local" / WS / "run9"
    node_dir.mkdir(parents=True)
    (node_dir / STATE_LOG).write_bytes(b'{"pid": 1')
    with pytest.raises(ValueError):
        saved_state(node_dir)
