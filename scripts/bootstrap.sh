#!/usr/bin/env bash
# Creates .venv (Python 3.13 preferred, 3.10+ accepted) and installs xt, with the extras named in
# $1 (e.g. "test" or "test,bench"). Idempotent: a second call only re-checks the install.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

find_python() {
    for candidate in "${XT_PYTHON:-}" python3.13 "$HOME/.pyenv/versions/3.13"*/bin/python3.13 /usr/local/bin/python3.13 python3.12 python3.11 python3.10 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    echo "bootstrap: no Python 3.10+ found (set XT_PYTHON)" >&2
    return 1
}

if [ ! -x .venv/bin/python ]; then
    python=$(find_python)
    echo "bootstrap: creating .venv with $("$python" --version)" >&2
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
