#!/usr/bin/env bash
# Runs the reliability scenarios (faults, duplicates, bad input, secrets, load, SSH boxes, hostile values, lost
# local state, isolation, processes, resource bounds, host restarts) and writes RELIABILITY.md.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
out=$(mktemp)
XT_RELIABILITY_OUT="$out" .venv/bin/python -m pytest -q tests/unit/test_reliability.py tests/e2e/test_reliability_e2e.py \
    tests/unit/test_bad_input.py tests/e2e/test_cli_e2e.py tests/unit/test_code_archive.py tests/e2e/test_pool_e2e.py \
    tests/unit/test_isolation.py tests/e2e/test_isolation_e2e.py tests/unit/test_local_state.py tests/e2e/test_local_state_e2e.py \
    tests/unit/test_hostile_values.py tests/e2e/test_hostile_values_e2e.py tests/e2e/test_host_restart_e2e.py \
    tests/unit/test_resource_bounds.py tests/e2e/test_resource_bounds_e2e.py \
    "tests/contracts/test_stats_contract.py::test_a_crash_between_a_runs_move_and_its_jobs_count_is_repaired_by_the_redelivery"
status=$?
.venv/bin/python scripts/render_reliability.py "$out" "$([ $status -eq 0 ] && echo 'all passed' || echo 'FAILURES')"
rm -f "$out"
exit $status
