#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what the tests need on a fresh
# Debian machine (Python, gcc and pip are assumed), then runs ruff, mypy, the import contracts
# (import-linter, [tool.importlinter] in pyproject.toml) and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# llvm-objdump-22 is an independent oracle for the Mach-O tests (Debian bookworm-security)
if ! command -v llvm-objdump-22 >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq llvm-22 >/dev/null
fi

VENV=${DYLDCACHE_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[test]'

# every oracle is installed above, so a missing one is a failure, not a skip
export DYLDCACHE_REQUIRE_ORACLES=${DYLDCACHE_REQUIRE_ORACLES:-1}
"$VENV/bin/ruff" check src tests benchmarks fuzz
"$VENV/bin/mypy"
"$VENV/bin/lint-imports" --no-cache --no-logo
"$VENV/bin/python" -m pytest -q "$@"
