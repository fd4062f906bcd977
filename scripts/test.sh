#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs (the package with its test
# extras, the npm test peer Azurite, and Debian's openssh-server for the pool tests), then runs pytest. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
if [ ! -x node_modules/.bin/azurite-blob ]; then
    command -v npm >/dev/null 2>&1 || { echo "test.sh: npm is needed for the test peer Azurite" >&2; exit 1; }
    npm ci --no-audit --no-fund --loglevel=error
fi
# The pool tests' boxes are real OpenSSH servers on loopback, whose users make their own venvs.
missing=""
[ -x /usr/sbin/sshd ] || missing="openssh-server"
/usr/bin/python3 -c "import ensurepip" 2>/dev/null || missing="$missing python3-venv"
# xt report's page is tested in a real headless browser (tests/e2e/test_html_report_e2e.py).
{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || missing="$missing chromium chromium-driver"
if [ -n "$missing" ]; then
    as_root=""; [ "$(id -u)" = 0 ] || as_root="sudo"
    { $as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq $missing >/dev/null; } \
        || echo "test.sh: could not install$missing; the pool and browser tests will be skipped or fail" >&2
fi
# Three workers (pytest-xdist), each with its own peers: the tests wait on processes far more than they
# compute, so this halves the suite on two cores. XT_TEST_WORKERS=0 runs it in one process.
exec .venv/bin/python -m pytest tests -n "${XT_TEST_WORKERS:-3}" "$@"
