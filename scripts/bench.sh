#!/usr/bin/env bash
# Every benchmark in bench/ (start-up and P1-P7, against MLflow in its fastest mode and the machine's limits),
# with the bench extra; writes bench/results.json and bench/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test,bench
exec .venv/bin/python bench/run_all.py "$@"
