"""The smallest parent a run can have: starts the run's command with exactly the run's environment,
passes SIGTERM/SIGINT on to the run's whole process tree, ends whatever the command leaves behind,
and writes the command's exit code to a file when it is all over.

Forked by what starts runs (fork_reaper: the local node, a box's agent), or started as
`python -S -I reaper.py EXIT_FILE SPEC_FILE ARGV...` (no site, no imports beyond os, signal, sys,
time and, on Linux, ctypes for prctl: a few milliseconds), so whoever supervises the run — the
local host, or the run wrapper on a node — can die and come back, and still learn how the run
ended. SPEC_FILE (launch_spec's text, written by whoever starts it, read and deleted here) holds
the run's own variables and the kill grace. kill_tree signals the run whose reaper is (or was) a
pid: what a supervisor's node (a box's agent, too) does to stop a run.

The run's environment is exactly: the BASE_ENV names and LC_* taken from the reaper's own
environment (the node's: this machine's, a box's login, a Batch task's), then the spec's variables
(XT's own and what the job defines), then XT_REAPER_PID. Nothing else the supervisor has (its
credentials, the variables of whoever started the host) reaches the run.

The process tree, on Linux: the reaper is a child subreaper (PR_SET_CHILD_SUBREAPER), so a
descendant orphaned by its parent (a daemon, one that started its own session) becomes the
reaper's child instead of init's and is still found; the command gets PR_SET_PDEATHSIG (SIGKILL),
so it dies with its reaper, even a reaper killed by SIGKILL. The tree is the reaper's descendants
(from /proc's parent links), its process group, and every process whose environment says
XT_REAPER_PID=<the reaper's pid> (what is left once the reaper itself was killed: kill_tree finds
them by it). After the command ends, whatever it left behind gets SIGTERM, then
SIGKILL after the grace, before the exit code is written. Elsewhere (no /proc, no prctl) only the
process group is signalled, and the command does not die with its reaper.
"""
import os
import sys
import time

try:
    import _signal as signal  # the C module: `signal` wraps it in enums, whose import is ~4 ms of a box run's start
except ImportError:  # not CPython
    import signal  # type: ignore[no-redef]

# The base environment: what a Python training script needs from the node and nothing personal.
# PATH (the interpreter and tools), HOME (caches: pip, torch, matplotlib), USER and LOGNAME (getpass),
# SHELL (subprocess shells), LANG and LC_* (UTF-8 I/O), TZ (log times), TMPDIR (scratch space).
# Not TERM: a run's console is a file, not a terminal.
BASE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TZ", "TMPDIR")
BASE_ENV_PREFIXES = ("LC_",)
MARKER = "XT_REAPER_PID"  # in every run's environment: how the run's processes are found
SPEC_FILE = "run_spec.txt"
GRACE_SECONDS = float(os.environ.get("XT_KILL_GRACE_SECONDS", "10"))  # SIGTERM, then SIGKILL this much later
_LAST_WAIT_SECONDS = 5.0  # after SIGKILL: bounded, a process stuck in the kernel does not hold the run forever
PR_SET_PDEATHSIG, PR_SET_NAME, PR_GET_NAME, PR_SET_CHILD_SUBREAPER = 1, 15, 16, 36
FORKED_NAME = b"xt-reaper"  # /proc/PID/comm of a forked reaper (its cmdline is its parent's: a host's, a box agent's)
_STOPS = {signal.SIGTERM, signal.SIGINT}  # what the reaper passes on


def base_environment(environ):
    return {name: value for name, value in environ.items()
            if name in BASE_ENV or name.startswith(BASE_ENV_PREFIXES)}


def run_environment(environ, own, reaper_pid):
    """The run's whole environment: the node's base, the run's own variables, the marker."""
    return {**base_environment(environ), **own, MARKER: str(reaper_pid)}


def launch_spec(env):
    """What a node writes to SPEC_FILE for the reaper: ASCII lines (hex names and values), so a shell's
    printf can write it and the reaper reads it without importing a parser."""
    return "".join([f"grace {GRACE_SECONDS}\n"] + [f"env {os.fsencode(name).hex()} {os.fsencode(value).hex()}\n"
                                                   for name, value in env.items()])


def read_spec(text):
    """(the run's own variables, the grace) from launch_spec's text."""
    env, grace = {}, GRACE_SECONDS
    for line in text.splitlines():
        kind, *fields = line.split(" ")
        if kind == "grace":
            grace = float(fields[0])
        elif kind == "env":
            env[os.fsdecode(bytes.fromhex(fields[0]))] = os.fsdecode(bytes.fromhex(fields[1]))
    return env, grace


# --- the process tree ---------------------------------------------------------------------------
def _processes():
    """{pid: (ppid, pgid)} of every live process (zombies left out), or None without /proc."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    table = {}
    for name in names:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] not in (b"Z", b"X"):
                table[int(name)] = (int(fields[1]), int(fields[2]))
    return table or None


def process_start_time(pid):
    """The kernel's start time of pid (None if gone or a zombie): tells a live process from a recycled pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            record = f.read()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return "?"  # no /proc (not Linux): trust the pid
    return start_time_in(record)


def start_time_in(record):
    """The start time (field 22) in a /proc/PID/stat record, wherever it was read; None for a zombie's
    or what is not such a record (an empty read of a pid that is gone)."""
    fields = record.rsplit(b")", 1)[-1].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


def _marked(pid, marker):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in b"\0" + f.read()
    except OSError:
        return False


def _whose(pid):
    """"reaper" (a live reaper), "gone" (no such process) or "other" (a recycled pid: not the run's)."""
    if not os.path.isdir("/proc/self"):  # no /proc: trust a live pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "gone"
        except OSError:
            return "other"
        return "reaper"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        if not cmdline:  # a zombie (its pid not free for reuse yet), or a kernel thread
            with open(f"/proc/{pid}/stat", "rb") as f:
                return "gone" if f.read().rsplit(b")", 1)[1].split()[0] == b"Z" else "other"
    except FileNotFoundError:
        return "gone"
    except (OSError, IndexError):
        return "other"
    if b"reaper.py\0" in cmdline:
        return "reaper"
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return "reaper" if f.read().strip() == FORKED_NAME else "other"
    except OSError:
        return "other"


def tree(root, with_root_family=True):
    """Every live process of the run whose reaper is (or was) root, root excluded; None without /proc.
    with_root_family: root's descendants and process group count (root is that reaper, alive or gone)."""
    table = _processes()
    if table is None:
        return None
    marker = b"\0%s=%d\0" % (MARKER.encode(), root)
    seeds = {pid for pid, (_, pgid) in table.items() if (with_root_family and pgid == root) or _marked(pid, marker)}
    if with_root_family:
        seeds.add(root)
    children = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, pending = set(seeds), list(seeds)
    while pending:
        for child in children.get(pending.pop(), ()):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found - {root, os.getpid()}


def _send(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def kill_tree(root, sig):
    """Signal the run whose reaper is (or was) root. A live reaper gets SIGTERM or SIGINT itself and
    passes it on; SIGKILL, or any signal once the reaper is gone, goes to every process of the tree."""
    whose = _whose(root)
    if whose == "reaper" and sig != signal.SIGKILL:
        _send([root], sig)
        return
    members = tree(root, with_root_family=whose != "other")  # a recycled pid's family is not the run's
    if members is None:
        try:
            os.killpg(root, sig)  # no /proc: the process group is all there is to go by
        except OSError:
            pass
        return
    _send(members, sig)
    if whose == "reaper":
        _send([root], sig)


# --- the reaper ---------------------------------------------------------------------------------
def _prctl(option, value):
    """Linux only; False where it is not available (the fallback: no subreaper, no death signal).
    value: a number, or bytes (PR_SET_NAME's name)."""
    call = _libc_prctl()
    if call is None:
        return False
    import ctypes  # loaded by _libc_prctl

    arg = ctypes.c_char_p(value) if isinstance(value, bytes) else ctypes.c_ulong(value)
    return call(option, arg, 0, 0, 0) == 0


def _thread_name():
    """The calling thread's name (bytes), or None where prctl is not available."""
    call = _libc_prctl()
    if call is None:
        return None
    import ctypes  # loaded by _libc_prctl

    name = ctypes.create_string_buffer(16)
    return name.value if call(PR_GET_NAME, name, 0, 0, 0) == 0 else None


_PRCTL: list = []  # [libc's prctl, or None]: looked up once per process (a local node: once, before its forks)


def _libc_prctl():
    """ctypes and libc's prctl, loaded once: importing ctypes in every forked reaper cost each run
    ~10 ms of CPU (bench/p4_reaper_cost.py)."""
    if not _PRCTL:
        found = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                found = ctypes.CDLL(None, use_errno=True).prctl
            except (ImportError, OSError, AttributeError):
                found = None
        _PRCTL.append(found)
    return _PRCTL[0]


def _spawn(argv, env, parent):
    """fork + exec, so the command can be told to die with its reaper first (posix_spawn cannot)."""
    child = os.fork()
    if child:
        return child
    code = 126
    try:
        for name in ("SIGTERM", "SIGINT", "SIGPIPE", "SIGXFSZ"):  # Python ignores the last two: the command must not
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)  # blocked by the reaper around the fork
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)  # the reaper died before the death signal was set
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        print(f"[xt] command not found: {argv[0]}", file=sys.stderr, flush=True)
        code = 127
    except BaseException as exc:
        print(f"[xt] cannot run {argv[0]}: {exc}", file=sys.stderr, flush=True)
    finally:
        os._exit(code)


def _reap():
    """Collect every ended child (orphans the reaper adopted included), without waiting.
    True if some child is still alive."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _end_leftovers(me, grace, termed, subreaper):
    """What the command left behind: SIGTERM (once each: termed already had it), SIGKILL after the grace; bounded.
    subreaper: every live descendant of the command is this process's child, so no child left means
    nothing left, and the /proc scan (every process's environment: costly on a busy machine) is skipped."""
    deadline, killed = time.monotonic() + grace, False
    while True:
        if not _reap() and subreaper:
            return
        left = tree(me)
        if not left or time.monotonic() >= deadline + _LAST_WAIT_SECONDS:
            return  # (no /proc: nothing to tell; the process group had the cancel's signal)
        if not killed and time.monotonic() >= deadline:
            _send(left, signal.SIGKILL)
            killed = True
        elif not killed:
            _send(left - termed, signal.SIGTERM)
            termed |= left
        time.sleep(0.05)


def _write_exit(exit_file, code):
    """The exit code, then when it ended: a supervisor that notices later (a host restarted after the
    run ended) still records the run's own end, not the moment it looked."""
    tmp = exit_file + ".tmp"
    # os.open and one write, not open(): a text file object (its codec, its buffer) was a third of
    # what a forked reaper's own Python costs between its command's exit and its own
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{code}\n{time.time():.3f}".encode())
    finally:
        os.close(fd)
    os.replace(tmp, exit_file)


def fork_reaper(argv, cwd, own, console, exit_file, grace=None):
    """The reaper as a fork of the calling process, without an exec (no interpreter to start: what a
    local node does, ~1 ms instead of ~20). The child leaves the caller's session, drops every file
    the caller has open (its locks, its databases) but the console, and then is the reaper exactly as
    `main` is; it never returns to the caller's code. Returns the reaper's pid at once.
    The child is the reaper from its first instant, so a stop sent right away (a cancel just after
    the launch) reaches the run: it is born named FORKED_NAME (kill_tree would take a child still
    named as its parent for a recycled pid, and leave it), with stops blocked until it passes them on."""
    _libc_prctl()  # here, once: not in each child
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)  # this thread's mask, which the child inherits
    own_name = _thread_name()
    if own_name is not None:
        _prctl(PR_SET_NAME, FORKED_NAME)  # this thread's name, which the child inherits

    def as_before():
        if own_name is not None:
            _prctl(PR_SET_NAME, own_name)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    try:
        pid = os.fork()
    except BaseException:
        as_before()
        raise
    if pid:
        as_before()
        return pid
    try:
        import gc

        gc.disable()  # the caller's objects are not this process's to finalize
        os.setsid()
        out = os.open(console, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536)
        os.chdir(cwd)
        for signum in (signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, signal.SIG_DFL)  # the caller's handlers are not the reaper's
        supervise(exit_file, own, GRACE_SECONDS if grace is None else grace, argv)
    except BaseException as exc:
        try:
            os.write(2, f"[xt] reaper: {exc}\n".encode())
            _write_exit(exit_file, 126)
        except BaseException:
            pass
    finally:
        os._exit(0)


def main(argv):
    exit_file, spec_file, command = argv[1], argv[2], argv[3:]
    if not command:
        return 2
    try:
        with open(spec_file) as f:
            own, grace = read_spec(f.read())
        os.unlink(spec_file)  # the run's variables stay in no file
    except (OSError, ValueError, IndexError) as exc:
        print(f"[xt] reaper: cannot read the run's environment from {spec_file}: {exc}", file=sys.stderr, flush=True)
        _write_exit(exit_file, 126)
        return 0
    supervise(exit_file, own, grace, command)
    return 0


def supervise(exit_file, own, grace, command):
    """Be the command's reaper: start it with the run's environment, pass stops on, wait for it,
    end what it left behind and write its exit code."""
    me = os.getpid()
    stopping, termed = [], set()

    def forward(signum, frame):
        stopping.append(signum)
        members = tree(me)
        if members is not None:
            _send(members, signum)
            termed.update(members)
            return
        previous = signal.signal(signum, signal.SIG_IGN)  # no /proc: the group, this process aside
        try:
            os.killpg(me, signum)
        except OSError:
            pass
        signal.signal(signum, previous)

    for signum in _STOPS:
        signal.signal(signum, forward)
    subreaper = _prctl(PR_SET_CHILD_SUBREAPER, 1)
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)  # a stop now waits until the command is there to get it
    if stopping:  # stopped before it started
        _write_exit(exit_file, -stopping[0])
        return
    child = _spawn(command, run_environment(os.environ, own, me), me)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:  # cannot happen: the command is this process's child
            _write_exit(exit_file, 126)
            return
        if pid == child:
            break
    code = os.waitstatus_to_exitcode(status)  # negative: killed by that signal
    _end_leftovers(me, grace, termed, subreaper)
    _write_exit(exit_file, code)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
