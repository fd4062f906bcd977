"""While a retry waits its delay, the local host sleeps towards it at its idle pace instead of polling
the queue every few milliseconds (issue 16): the passes of its loop are counted on a fake clock."""
from types import SimpleNamespace

from xt_submit.adapters.queue import sqlite as sqlite_queue
from xt_submit.domain.messages import EVENTS_QUEUE, JOBS_QUEUE, RunStarted, encode
from xt_submit.runtime import local_host

DELAY = 30.0


def test_a_message_held_back_for_a_delay_costs_a_bounded_number_of_host_passes(parts, monkeypatch):
    clock = SimpleNamespace(now=1_000_000.0)

    def sleep(seconds):
        assert seconds >= 0
        clock.now += seconds

    fake_time = SimpleNamespace(time=lambda: clock.now, monotonic=lambda: clock.now, sleep=sleep)
    monkeypatch.setattr(sqlite_queue, "time", fake_time)
    monkeypatch.setattr(local_host, "time", fake_time)
    handled = []
    monkeypatch.setitem(local_host.HANDLERS, RunStarted, lambda event, ports: handled.append(clock.now))
    host = local_host.LocalHost(parts, idle_exit_seconds=60.0)
    parts.queue.send(EVENTS_QUEUE, [encode(RunStarted(workspace="ws1", job="job1", run="run1.1", node_id="local",
                                                      started_at=1.0))])
    (message,) = parts.queue.receive(EVENTS_QUEUE)
    held_back_at = clock.now
    parts.queue.abandon(message, "transient", delay_seconds=DELAY)  # a retry, due DELAY seconds from now

    bound = DELAY / host.poll_seconds + 3  # one pass per idle wait: a client's new message is still looked for
    host.serve(should_stop=lambda: bool(handled) or host.passes > 10 * bound)  # a busy loop is stopped, and fails

    assert host.passes <= bound, host.passes
    (at,) = handled
    assert held_back_at + DELAY <= at <= held_back_at + DELAY + host.poll_seconds  # on time, not early


def test_the_queue_says_how_long_until_its_first_message_can_be_received(parts, monkeypatch):
    clock = SimpleNamespace(now=5_000.0)
    monkeypatch.setattr(sqlite_queue, "time", SimpleNamespace(time=lambda: clock.now))
    queues = (JOBS_QUEUE, EVENTS_QUEUE)
    assert parts.queue.seconds_until_receivable(queues) is None
    parts.queue.send(EVENTS_QUEUE, [b"a", b"b"])
    assert parts.queue.seconds_until_receivable(queues) == 0.0
    first, second = parts.queue.receive(EVENTS_QUEUE, max_messages=2)
    parts.queue.abandon(first, "later", delay_seconds=40.0)
    parts.queue.abandon(second, "sooner", delay_seconds=12.5)
    assert parts.queue.seconds_until_receivable(queues) == 12.5
    assert parts.queue.seconds_until_receivable((JOBS_QUEUE,)) is None


def test_an_idle_host_is_woken_by_a_clients_send_not_its_poll(parts, tmp_path):
    """A job sent to a host already serving waited out the host's idle poll (0.2 s): the host now
    waits on the queue's FIFO, which another process's send pokes. Here the poll is an hour: only
    the wake can let the host see the message (the bound is for a failure, never a timing claim)."""
    import subprocess
    import sys
    import threading
    import time

    host = local_host.LocalHost(parts, poll_seconds=3600.0, idle_exit_seconds=None)
    assert parts.queue.listen()
    handled = threading.Event()
    original = local_host.HANDLERS.get(RunStarted)
    local_host.HANDLERS[RunStarted] = lambda event, ports: handled.set()
    serving = threading.Thread(target=host.serve, kwargs={"should_stop": handled.is_set}, daemon=True)
    try:
        serving.start()
        time.sleep(0.3)  # the host is in its idle wait (were it not yet, it would find the message at once)
        body = encode(RunStarted(workspace="ws1", job="job1", run="run1.1", node_id="local", started_at=1.0))
        client = (f"from xt_submit.adapters.queue.sqlite import SqliteQueue\n"
                  f"SqliteQueue({parts.queue.path!r}).send({EVENTS_QUEUE!r}, [{body!r}])")
        subprocess.run([sys.executable, "-c", client], check=True, timeout=120)
        assert handled.wait(120), "the idle host slept through a client's send"
        serving.join(120)
        assert host.passes <= 3  # woken once, not by polling
    finally:
        local_host.HANDLERS[RunStarted] = original
        handled.set()


def test_a_send_with_no_host_listening_pokes_nothing_and_never_blocks(parts, tmp_path):
    from xt_submit.adapters.queue.wake import Wake

    wake = Wake(str(tmp_path / "q.wake"))
    wake.poke()  # no FIFO: nothing made
    assert not (tmp_path / "q.wake").exists()
    assert wake.listen() and wake.listening
    wake.close()  # the host ended: its FIFO stays, with no reader
    other = Wake(str(tmp_path / "q.wake"))
    other.poke()  # ENXIO, not a block or an error
    listener = Wake(str(tmp_path / "q.wake"))
    assert listener.listen()
    for _ in range(70_000):  # more pokes than a pipe holds (64 KiB): the rest are dropped, never a block
        other.poke()
    assert listener.wait(0) and not listener.wait(0)  # all taken at once
    listener.close()


def test_a_follower_near_its_jobs_end_is_woken_by_the_host_completing_a_message(parts):
    """`xt run --wait` looked at its job after a pause of up to 0.1 s: in the embedded queue, each
    message the host completes now ends a follower's pause. The pause here is an hour, so only the
    poke can end it (the thread's bound is for a failure, never a timing claim)."""
    import os
    import threading

    parts.queue.send(EVENTS_QUEUE, [b"an event"])
    (message,) = parts.queue.receive(EVENTS_QUEUE)
    woken = threading.Event()
    with parts.queue.followed() as until_handled:
        until_handled(0)  # its FIFO is made at the first pause
        followers = parts.home / "queue.db.followers"
        assert len(os.listdir(followers)) == 1
        waiting = threading.Thread(target=lambda: (until_handled(3600), woken.set()), daemon=True)
        waiting.start()
        parts.queue.complete(message)
        waiting.join(120)
        assert woken.is_set()
    assert os.listdir(followers) == []  # a follower that ended leaves no FIFO


def test_a_follower_killed_before_removing_its_fifo_costs_the_host_one_poke(parts, tmp_path):
    """A FIFO with no reader (its follower was killed) is removed by the next poke: followers never pile up."""
    import os

    followers = parts.home / "queue.db.followers"
    followers.mkdir()
    os.mkfifo(followers / "12345-deadbeef")
    parts.queue.send(EVENTS_QUEUE, [b"an event"])
    (message,) = parts.queue.receive(EVENTS_QUEUE)
    parts.queue.complete(message)
    assert os.listdir(followers) == []


def test_a_queue_that_cannot_tell_completions_pauses_a_follower_by_sleeping(parts, monkeypatch):
    from xt_submit.ports import MessageQueue

    slept = []
    monkeypatch.setattr("time.sleep", slept.append)
    with MessageQueue.followed(parts.queue) as until_handled:  # the port's own, as Service Bus's adapter has it
        until_handled(0.25)
    assert slept == [0.25]


def test_a_file_that_is_no_fifo_among_the_followers_is_left_as_it_is(parts):
    followers = parts.home / "queue.db.followers"
    followers.mkdir()
    (followers / "notes.txt").write_text("mine")
    parts.queue.send(EVENTS_QUEUE, [b"an event"])
    (message,) = parts.queue.receive(EVENTS_QUEUE)
    parts.queue.complete(message)
    assert (followers / "notes.txt").read_text() == "mine"


def test_a_pool_handover_ends_the_pause_of_a_host_with_no_local_runs(parts, monkeypatch):
    """A pool job's first runs wait for their box to answer: the connecting thread's handover (the box
    is up) ends the host's pause at once, not after busy_wait_seconds (here an hour, so only the
    wake lets the handed-over call run; the thread's bound is for a failure, never a timing claim)."""
    import threading
    import time

    host = local_host.LocalHost(parts, busy_wait_seconds=3600.0, idle_exit_seconds=None)
    monkeypatch.setattr(parts.compute, "active_count", lambda: 1)  # a pool's task waits for its box
    ran = threading.Event()
    serving = threading.Thread(target=host.serve, kwargs={"should_stop": ran.is_set}, daemon=True)
    serving.start()
    time.sleep(0.3)  # the host is in its pause (were it not yet, it would run the call at once)
    host.pools.calls.later(ran.set)
    assert ran.wait(120), "the host slept through the pool's handover"
    serving.join(120)
    assert not serving.is_alive()
    assert host.passes <= 3  # woken once, not by polling
