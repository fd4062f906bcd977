#!/usr/bin/env bash
# A real 8-run sweep of examples/train.py, end to end on the embedded default (no cloud):
# snapshot -> queue -> dispatch -> 8 local runs (2 at a time) -> outputs and stats recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export XT_HOME="${XT_HOME:-$PWD/.xt_demo_home}"
xt=".venv/bin/xt"
cd examples
"../$xt" run --wait --concurrent 2 train.py --lr=[0.01,0.03,0.1,0.3] --opt=[sgd,adam] --epochs=5
job=$("../$xt" list jobs --last 1 --json | ../.venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[0]["name"])')
"../$xt" list runs --job "$job" --sort metrics.loss
echo
echo "best run's log and outputs:"
best=$("../$xt" list runs --job "$job" --sort metrics.loss --first 1 --json | ../.venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[0]["name"])')
"../$xt" view log "$best" | tail -4
"../$xt" view run "$best" | grep outputs
echo "(state kept in $XT_HOME)"
