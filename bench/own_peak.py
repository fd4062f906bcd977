"""Runs a Python command (`-m MODULE ARGS`, `-c CODE ARGS` or `SCRIPT ARGS`) and, at its exit,
writes its own peak RSS (VmHWM, in MB) to the file named first. A process's VmHWM starts afresh at
exec, so it is the command's alone; wait4's figure also counts what the bench held when it spawned
the child (the parent's pages are the child's until exec), which would credit a 900 MB bench's size
to a 30 MB command. A command that ends by os._exit (xt's read-only commands: no atexit) writes it
there too. Used by common.run_child."""
import atexit
import os
import runpy
import sys


def _write_peak(path: str) -> None:
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    with open(path, "w") as out:
        out.write(str(kib / 1024))


def main() -> None:
    peak_file, args = sys.argv[1], sys.argv[2:]
    atexit.register(_write_peak, peak_file)
    real_exit = os._exit

    def write_then_exit(code: int) -> None:
        _write_peak(peak_file)
        real_exit(code)

    os._exit = write_then_exit
    if args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    elif args[0] == "-c":
        sys.argv = ["-c", *args[2:]]
        exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = args
        runpy.run_path(args[0], run_name="__main__")


if __name__ == "__main__":
    main()
