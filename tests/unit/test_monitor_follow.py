"""`xt monitor` follows a console from where its last poll stopped (issue 16): never the whole
console again, each line once, a line still being written shown once it ends."""
import io

import pytest

from xt_submit.adapters.storage.directory import DirectoryStorage
from xt_submit.cli.report_commands import follow_console

KEY = "workspaces/ws1/runs/run1.1/console.txt"


class CountingStorage(DirectoryStorage):
    """Counts the console bytes handed out by read_chunks; `read` (the whole console) is refused."""

    def __init__(self, root, *, here: bool):
        super().__init__(root)
        self.here, self.passed_out = here, 0

    def local_path(self, key):
        return super().local_path(key) if self.here else None  # else: storage elsewhere (Blob Storage)

    def read(self, key):
        raise AssertionError("monitor read the whole console")

    def read_chunks(self, key):
        for piece in super().read_chunks(key):
            self.passed_out += len(piece)
            yield piece


@pytest.mark.parametrize("here", [True, False], ids=["folder storage: a seek", "remote storage: pieces passed over"])
def test_each_poll_reads_on_from_the_last_offset_and_prints_each_line_once(tmp_path, here):
    storage = CountingStorage(tmp_path / "storage", here=here)
    out, offsets = io.StringIO(), {}

    def poll(ended=False):
        follow_console(storage, KEY, "run1.1", offsets, ended=ended, out=out)

    poll()  # no console yet
    storage.append(KEY, b"epoch 1\nepoch 2\nepo")  # the run is writing its third line
    poll()
    assert out.getvalue() == "[run1.1] epoch 1\n[run1.1] epoch 2\n" and offsets["run1.1"] == len(b"epoch 1\nepoch 2\n")
    storage.append(KEY, "ch 3 \N{GREEK SMALL LETTER ALPHA}\nlast".encode())
    poll()
    poll(ended=True)  # the run ended: its unfinished last line is its last
    assert out.getvalue().splitlines() == ["[run1.1] epoch 1", "[run1.1] epoch 2", "[run1.1] epoch 3 \N{GREEK SMALL LETTER ALPHA}",
                                           "[run1.1] last"]
    size = len(storage._path(KEY).read_bytes())
    assert offsets["run1.1"] == size
    poll(ended=True)
    assert out.getvalue().count("\n") == 4  # nothing again
    if here:
        assert storage.passed_out == 0  # a seek in the file, never read_chunks from the start
