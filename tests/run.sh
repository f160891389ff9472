#!/usr/bin/env bash
# Sets up (tests/setup.sh) and runs the whole test suite, then the type and lint checks.
# Extra arguments go to pytest. pytest's "no tests collected" (exit 5) counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh || exit 1
# Three workers: most tests wait on sockets and subprocesses, not the CPU; the microphone tests share one worker.
.venv/bin/python -m pytest -n "${TEST_WORKERS:-3}" --dist loadgroup "$@"
status=$?
if [ $status -eq 5 ]; then
  echo "run: error: pytest collected no tests" >&2
  exit 1
fi
[ $status -eq 0 ] || exit $status
if [ $# -eq 0 ]; then
  .venv/bin/mypy || exit 1
  .venv/bin/ruff check . || exit 1
fi
