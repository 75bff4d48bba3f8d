# Sourced by ./run and ./test: make sure a virtual environment with iris_trio exists.
# IRIS_VENV chooses its location (default: .venv in the checkout); EXTRAS the extras.
set -euo pipefail
VENV="${IRIS_VENV:-$PWD/.venv}"
EXTRAS="${EXTRAS:-}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "iris_trio needs Python >= 3.11 as python3" >&2; exit 1; }
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
STAMP="$VENV/.iris-trio-installed${EXTRAS:+-$EXTRAS}"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    "$VENV/bin/python" -m pip install --quiet -e ".${EXTRAS:+[$EXTRAS]}"
    touch "$STAMP"
fi
