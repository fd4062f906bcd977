"""The bounds the command line checks its numbers against, in a module that imports nothing, so
`xt --help` can name them without loading the message contracts and the config schema (msgspec).

domain/messages.py, domain/sweep.py and config.py take their bounds from here.
"""

INT64_MIN, INT64_MAX = -2**63, 2**63 - 1  # what every stats store keeps
MAX_CONCURRENT = 10_000  # runs at once (a job's --concurrent, a target's, a box's max-runs); nodes of a pool
MAX_SECONDS = 366 * 24 * 3600  # a year: the longest --max-time or --idle-exit
MAX_ROWS = 10**9  # a report's first/last
MAX_PLANNED_RUNS = 100_000  # runs one job may plan (a sweep's product, --runs, --max-runs)
MAX_RETRIES = 100  # a job's retries of a failed run; a Batch target's preemption-retries
