#!/usr/bin/env bash
# The main job, end to end: install, prepare the template from the shipped finance-report migrations,
# run the example project's suite with `pytest -n auto` on per-worker clones, and show what happened.
#
# With no TESTDB_URL / DATABASE_URL set, everything runs on the embedded PostgreSQL server, which is
# started on first use and left running (`.venv/bin/testdb server stop` ends it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh test
cd examples/finance_app

step() { printf '\n==> %s\n' "$*"; }

step "testdb config   (resolved settings, password masked)"
testdb config

step "testdb prepare-template   (migrations run once into the template)"
testdb prepare-template

step "testdb prepare-template   (again: the fingerprint is unchanged, so nothing to do)"
testdb prepare-template

step "pytest -n auto   (every worker clones its own database from the template)"
python -m pytest -n auto -p no:cacheprovider

step "testdb status   (worker databases were dropped at session end; the template stays)"
testdb status
