# Sourced by the scripts in this folder: create (or reuse) .venv and install the package into it.
# Usage: . scripts/_venv.sh EXTRAS   (e.g. "dev"); idempotent, quiet when nothing changed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-test}"
python="${PYTHON:-python3}"
if [ ! -x "$repo/.venv/bin/python" ]; then
    echo "==> creating $repo/.venv"
    "$python" -m venv "$repo/.venv"
    "$repo/.venv/bin/python" -m pip install -q --upgrade pip
fi
stamp="$repo/.venv/.installed-$extras"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
    echo "==> installing finreport-testdb[$extras] into .venv"
    "$repo/.venv/bin/python" -m pip install -q -e "$repo[$extras]"
    touch "$stamp"
fi
export PATH="$repo/.venv/bin:$PATH"
