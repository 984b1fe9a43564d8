#!/usr/bin/env bash
# Set up and run every test, the slow real-data ones included.
#   bash scripts/test.sh [pytest args, e.g. -m "not slow" or -k config]
# Real data: LENET_DATA_DIR, else ../shared/datasets beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# shellcheck disable=SC1091
. .venv/bin/activate
# -n auto: one test worker per core (pytest-xdist); each test computes on one torch
# thread (conftest.py), so two cores run two tests at once instead of one test slowly.
# --dist loadgroup: the Ray test files share one worker, one Ray at a time (grouped by
# file in conftest.py: pytest 9 lost xdist 3.8's own grouping by mark).
exec python -m pytest -n auto --dist loadgroup "$@"
