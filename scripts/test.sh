#!/usr/bin/env bash
# Run the project's test suite: `pytest -n auto --cov` against real PostgreSQL servers.
#
# Needs the machine's PostgreSQL on 127.0.0.1:5432 (trust auth; override with TESTDB_TEST_TRUST_URL)
# and the PostgreSQL server binaries, from which the suite starts its own scram-sha-256 server.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k clean`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh dev

if [ -z "${TESTDB_TEST_TRUST_URL:-}" ] && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null 2>&1; then
        echo "==> starting the local PostgreSQL cluster on 127.0.0.1:5432"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
    else
        echo "error: no PostgreSQL on 127.0.0.1:5432; start one or set TESTDB_TEST_TRUST_URL" >&2
        exit 1
    fi
fi

echo "==> pytest -n auto --cov"
exec python -m pytest -n auto --cov --cov-report=term "$@"
