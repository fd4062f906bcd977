"""A box's side of a host's connection: one long-lived process per connection, talking JSON lines
over its stdin and stdout, that starts the host's runs, copies their code, removes their folders
and signals them, reads their files and lists their folders, and tells the host the moment a run's
reaper ends. Whatever may take long (a big tree's cp, a removal) runs as a child of the agent and is
answered when it ended, so the agent answers everything else at once.

Why: a fresh `python3` for every run's reaper, plus an sshd session and a shell for every launch
and every removal, cost a box more than a short run itself (bench/p7_pool.py). Here each run's
reaper is a fork of this warm process (reaper.fork_reaper), and everything
goes over the one channel.

Started as `python3 -S -I box_agent.py XT_BIN_DIR` (stdlib only); a local node starts one too,
without XT_BIN_DIR, so its runs' reapers are forks of a small process rather than of the host
(a host's pages shared with a living reaper are copied as the host writes them: ~1,000 page
faults per run). Requests are {"id": N, "op": ..., ...}; each gets one reply {"id": N, ...}; a
reaper that ended is told unasked as {"ended": PID, "start": START}. The agent ends when its
stdin does (the connection dropped or the host closed it); the runs it started go on, each under
its own reaper, which writes the run's exit file as always, so a host that connects again finds
how they ended.
"""
import binascii
import gc
import json
import os
import select
import sys

# shutil, subprocess and base64 (with what they load: compressors, threading, selectors) are imported
# where an op needs them: an agent's start is on its first run's path (this module's import: 47-66 ms
# with them, 10-23 ms without)

CACHE_MISSING = 75  # the copy's cached tree is gone (removed on the box meanwhile): unpacked again
PREPARE_FAILED = 76  # the copy failed
_TAIL_BYTES = 4096  # of a removal's complaints, the end is kept: a flood of them is read, not stored
_LOOK_SECONDS = 0.05  # where a kernel has no pidfds: how often ended reapers are looked for
# A cached tree this small is copied by the agent itself: starting `cp` costs more than the copy
# (2 files: 0.4 ms vs 4.4 ms; even at ~32 entries; 250 entries: 96 ms vs 32 ms, on this 2-core
# machine). A bigger one goes to cp, which is faster per file and reflinks where the file system can.
SMALL_TREE_ENTRIES = 32
SMALL_TREE_BYTES = 4 << 20
READ_BYTES = 32768  # what one read answers at most: more is the host's to fetch over SFTP, pipelined
_small_trees: dict = {}  # cached tree -> whether it is small (a cached tree never changes: named by its zip's sha256)


def _is_small(cached):
    small = _small_trees.get(cached)
    if small is None:
        entries = size = 0
        small = True
        for root, dirs, names in os.walk(cached):
            entries += len(dirs) + len(names)
            size += sum(os.lstat(os.path.join(root, name)).st_size for name in names)
            if entries > SMALL_TREE_ENTRIES or size > SMALL_TREE_BYTES:
                small = False
                break
        _small_trees[cached] = small
    return small


def begin_copy(spec):
    """Start the run's own copy of the cached tree (links as links, modes and times kept), with its
    folders and files: (status, why) when it is done here (a small tree, or a failure), else the
    `cp -a` copying a big tree (reflinked where the file system can), for end_copy once it ended.
    status: 0, CACHE_MISSING or PREPARE_FAILED."""
    import shutil
    import subprocess

    cached, into = spec["cached"], spec["into"]
    try:
        os.utime(cached)  # a tree in use is never one unused for the cache's days
    except FileNotFoundError:
        return CACHE_MISSING, ""
    try:
        os.makedirs(spec["output"], exist_ok=True)
        if not _is_small(cached):
            return subprocess.Popen(_cp_argv(cached, into), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
        shutil.copytree(cached, into, symlinks=True, dirs_exist_ok=True)
    except shutil.Error as exc:  # copytree's: every file it could not copy
        failures = exc.args[0]
        return PREPARE_FAILED, f"{failures[-1][1]}: {failures[-1][2]}" if failures else str(exc)
    except OSError as exc:
        return PREPARE_FAILED, f"{exc.filename or into}: {exc.strerror or exc}"
    return end_copy(spec, 0, "")


def end_copy(spec, status, why):
    """After the tree's copy (status: its exit status): the run's empty files."""
    if status:
        return PREPARE_FAILED, why or f"cp: exit status {status}"
    try:
        for path in spec["empty"]:
            with open(path, "ab"):
                pass
    except OSError as exc:
        return PREPARE_FAILED, f"{exc.filename}: {exc.strerror or exc}"
    return 0, ""


_GNU_CP: list = []  # [whether this box's cp is GNU's], looked at once


def _cp_argv(cached, into):
    """cp -a, reflinked where the file system can (GNU), else any POSIX cp's -pR."""
    import subprocess

    if not _GNU_CP:
        probe = subprocess.run(["cp", "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
        _GNU_CP.append(probe.returncode == 0 and b"GNU" in probe.stdout)
    flags = ["-a", "--reflink=auto"] if _GNU_CP[0] else ["-pR"]
    return ["cp", *flags, cached + "/.", into]


class _Fork:
    """work() in a fork of this process (no interpreter to start), waited on as a subprocess is
    (_wait_for_child): its stderr a pipe, its exit status 0, or 1 with the error as its last line
    (an exception of the `told` kinds as its text, which names what failed; any other with its kind)."""

    def __init__(self, work, told=()):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(read_end)
                os.dup2(write_end, 2)
                work()
                code = 0
            except BaseException as exc:
                text = str(exc) if isinstance(exc, told) else f"{type(exc).__name__}: {exc}"
                try:
                    os.write(2, f"\n{text}\n".encode())
                except OSError:
                    pass
            finally:
                os._exit(code)
        os.close(write_end)
        self.pid = pid
        self.stderr = os.fdopen(read_end, "rb")

    def wait(self):
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


OPS = ("launch", "copy", "unpack", "remove", "kill", "read", "walk", "exists", "look")  # what a request may ask (op_<name>)
LOOKS = ("read", "walk", "exists")  # what a "look" may hold: answered at once, without touching anything


class Agent:
    def __init__(self, out_fd, reaper):
        self.out_fd = out_fd
        self.reaper = reaper
        self.poll = select.poll()
        self.reapers = {}  # a reaper's pidfd -> (pid, start)
        self.unwatched = {}  # pid -> start of a reaper with no pidfd (a kernel before 5.3): looked for
        # a child's stderr fd (a removal, a big tree's cp) -> [the request's id, the process, the end of
        # its stderr, what answers the request once it ended]
        self.children = {}

    def tell(self, message):
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(self.out_fd, data):]

    # --- the requests ---------------------------------------------------------------------------
    def handle(self, line):
        try:
            request = json.loads(line)
        except ValueError as exc:  # not the host's: said, and the agent goes on
            self.tell({"id": None, "error": f"not a request: {exc}"})
            return
        reply = self._answer(request, OPS, "unknown op")
        if reply is not None:
            self.tell({"id": request.get("id"), **reply})

    def _answer(self, request, ops, refusal):
        """op_<name>'s reply when the request's op is one of ops, else `refusal` and the op; an
        error is the reply's, told to the host, which says so (the agent goes on)."""
        op = request.get("op")
        if op not in ops:
            return {"error": f"{refusal} {op!r}"}
        try:
            return getattr(self, f"op_{op}")(request)
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}

    def op_copy(self, request):
        return self._copy(request, lambda status, why: {"status": status, "err": why})

    def op_launch(self, request):
        if not request.get("copy"):
            return self._launch(request)
        return self._copy(request, lambda status, why: {"status": status, "err": why} if status else
                          self._launch(request))

    def _copy(self, request, then):
        """then(status, why) once the copy is done: at once, or when its cp ended (answered then,
        the agent serving other requests meanwhile)."""
        began = begin_copy(request["copy"])
        if isinstance(began, tuple):
            return then(*began)
        self._wait_for_child(began, request.get("id"),
                             lambda status, why: then(*end_copy(request["copy"], status, why)))
        return None

    def _launch(self, request):
        cwd, exit_file = request["cwd"], request["exit_file"]
        if not os.path.isdir(cwd):
            return {"status": 1, "err": f"{cwd}: no such folder"}
        try:
            os.unlink(exit_file)  # an earlier attempt's: the host must not take it for this one's
        except FileNotFoundError:
            pass
        pid = self.reaper.fork_reaper(request["argv"], cwd, request["env"], request["console"], exit_file,
                                      request["grace"])
        start = self.reaper.process_start_time(pid) or "?"  # as a local node's launch
        self._watch(pid, start)
        return {"status": 0, "pid": pid, "start": start}

    def op_kill(self, request):
        self.reaper.kill_tree(int(request["pid"]), int(request["sig"]))
        return {"status": 0}

    def op_read(self, request):
        """Up to READ_BYTES from the offset: {"data": base64}, or {"missing": true}."""
        try:
            with open(request["path"], "rb") as f:
                f.seek(request["offset"])
                data = f.read(READ_BYTES if request["limit"] is None else min(request["limit"], READ_BYTES))
        except FileNotFoundError:
            return {"missing": True}
        return {"data": binascii.b2a_base64(data, newline=False).decode()}

    def op_exists(self, request):
        """Whether the path is there (links followed, as SFTP's STAT)."""
        return {"exists": os.path.exists(request["path"])}

    def op_look(self, request):
        """Several reads, listings and existence checks in one request: {"replies": [...]}, each the
        reply its own request would have had (an error in one is that one's)."""
        return {"replies": [self._answer(one, LOOKS, "not a look:") for one in request["ops"]]}

    def op_walk(self, request):
        """Every regular file below the root (links not followed), as SFTP's listing tells them:
        [relative path, whole-second mtime, size], sorted."""
        found, pending = [], [""]
        while pending:
            rel_dir = pending.pop()
            try:
                entries = list(os.scandir(os.path.join(request["root"], rel_dir) if rel_dir else request["root"]))
            except FileNotFoundError:
                continue
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if entry.is_dir(follow_symlinks=False):
                    pending.append(rel)
                elif entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    found.append([rel, int(info.st_mtime), info.st_size])
        return {"files": sorted(found)}

    def op_unpack(self, request):
        """A snapshot's zip unpacked into the box's cache (code_archive.unpack_into_cache) by a fork of
        this process, not a fresh python3 on a channel of its own (a box's first run of each snapshot
        waits for it); answered {"status", "err", "tree"} once it ended, the agent serving meanwhile."""
        from xt_submit.node_kit import code_archive  # here, once: each fork has it loaded

        def unpack():
            tree = code_archive.unpack_into_cache(request["zip"], request["cache"], request["digest"],
                                                  request["source"], request.get("url") or "")
            os.write(2, f"\n{tree}\n".encode())  # its last line: what the answer names

        def answer(status, last_line):
            return {"status": 0, "err": "", "tree": last_line} if status == 0 else {"status": status, "err": last_line}

        self._wait_for_child(_Fork(unpack, told=(code_archive.ArchiveError,)), request.get("id"), answer)
        return None

    def op_remove(self, request):
        """Started, and answered once done: the host waits for a folder's removal only when it next
        touches the folder."""
        import subprocess

        process = subprocess.Popen(request["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        self._wait_for_child(process, request.get("id"), lambda status, why: {"status": status, "err": why})
        return None

    def _wait_for_child(self, process, ident, then):
        """then(exit status, its last complaint) answers request ident once the process ended; its
        stderr is read as it comes (a flood of complaints never fills the pipe), its end kept."""
        fd = process.stderr.fileno()
        self.children[fd] = [ident, process, b"", then]
        self.poll.register(fd, select.POLLIN)

    # --- what ends --------------------------------------------------------------------------------
    def _watch(self, pid, start):
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # no pidfds here
            self.unwatched[pid] = start
            return
        self.reapers[fd] = (pid, start)
        self.poll.register(fd, select.POLLIN)

    def _reaper_ended(self, fd):
        pid, start = self.reapers.pop(fd)
        self.poll.unregister(fd)
        os.close(fd)
        os.waitpid(pid, 0)  # it has ended: this does not wait
        self.tell({"ended": pid, "start": start})

    def _look_for_unwatched(self):
        for pid in list(self.unwatched):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                self.tell({"ended": pid, "start": self.unwatched.pop(pid)})

    def _child_output(self, fd):
        child = self.children[fd]
        chunk = os.read(fd, 65536)
        if chunk:
            child[2] = (child[2] + chunk)[-_TAIL_BYTES:]
            return
        self.poll.unregister(fd)
        del self.children[fd]
        ident, process, err, then = child
        process.stderr.close()
        status = process.wait()  # its stderr closed: it has ended or is ending
        lines = err.decode(errors="replace").strip().splitlines()
        try:
            reply = then(status, lines[-1] if lines else "")
        except Exception as exc:  # as handle's
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        self.tell({"id": ident, **reply})

    # --- the loop -------------------------------------------------------------------------------
    def serve(self, in_fd):
        self.poll.register(in_fd, select.POLLIN)
        pending = b""
        while True:
            timeout = _LOOK_SECONDS * 1000 if self.unwatched else None
            for fd, _ in self.poll.poll(timeout):
                if fd == in_fd:
                    chunk = os.read(in_fd, 65536)
                    if not chunk:
                        return  # the host is gone: the runs go on under their reapers
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            self.handle(line)
                elif fd in self.reapers:
                    self._reaper_ended(fd)
                elif fd in self.children:
                    self._child_output(fd)
            if self.unwatched:
                self._look_for_unwatched()


def main(argv):
    if len(argv) > 1:  # a box's: this machine's local node has its interpreter's path for `python`
        # `python train.py` on a box that only has python3: XT's fallback at the end of PATH
        os.environ["PATH"] = f"{os.environ.get('PATH', '')}:{argv[1]}"
    lib = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, lib)  # -I leaves PYTHONPATH out: XT's shipped modules are found from here
    from xt_submit.node_kit import reaper

    # What is loaded by now is never collected: the collector no longer walks (so no longer writes
    # to) the pages of those objects, which every living reaper shares with this process copy-on-write
    gc.freeze()
    agent = Agent(sys.stdout.fileno(), reaper)
    try:
        agent.serve(sys.stdin.fileno())
    except BrokenPipeError:  # the host closed the channel while being told something
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
