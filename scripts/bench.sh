#!/usr/bin/env bash
# Every benchmark in bench/ (P1-P6 against MLflow and the machine's limits), with the bench extra.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test,bench
exec .venv/bin/python bench/run_all.py "$@"
