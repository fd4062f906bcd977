#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs (the package with its test
# extras, and the npm test peer Azurite), then runs pytest. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
if [ ! -x node_modules/.bin/azurite-blob ]; then
    command -v npm >/dev/null 2>&1 || { echo "test.sh: npm is needed for the test peer Azurite" >&2; exit 1; }
    npm ci --no-audit --no-fund --loglevel=error
fi
exec .venv/bin/python -m pytest tests "$@"
