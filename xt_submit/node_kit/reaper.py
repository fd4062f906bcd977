"""The smallest parent a run can have: starts the run's command, forwards SIGTERM/SIGINT to it,
and writes its exit code to a file when it ends.

Started as `python -S -I reaper.py EXIT_FILE ARGV...` (no site, no imports beyond os, signal
and sys: a few milliseconds), so whoever supervises the run — the local host, or the run wrapper
on a node — can die and come back, and still learn how the run ended.
"""
import os
import signal
import sys


def main() -> int:
    exit_file, argv = sys.argv[1], sys.argv[2:]
    child = os.posix_spawnp(argv[0], argv, os.environ) if argv else None
    if child is None:
        return 2

    def forward(signum, frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)  # negative: killed by that signal
    tmp = exit_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(code))
    os.replace(tmp, exit_file)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FileNotFoundError as exc:  # the command itself does not exist
        print(f"[xt] command not found: {exc.filename}", file=sys.stderr, flush=True)
        with open(sys.argv[1], "w") as f:
            f.write("127")
        sys.exit(0)
