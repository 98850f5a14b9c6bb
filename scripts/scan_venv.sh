#!/usr/bin/env bash
# The security scanner's own virtualenv (checkov pins boto3, packaging, networkx... below what
# requirements.lock holds, so it cannot share .venv), from the exact versions of requirements-scan.lock.
# Usage: scripts/scan_venv.sh .venv-scan
# To move to a newer checkov: in a fresh venv on Python 3.12, `pip install checkov==X.Y.Z`, then
# `pip freeze` (with the header below kept) into requirements-scan.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-scan}
py=$(scripts/find_python.sh) || { echo "scan_venv: no Python >= 3.12, see above" >&2; exit 1; }
echo "scan_venv: $("$py" -V) -> $venv (checkov, $(grep -c '^[^#]' requirements-scan.lock) pinned packages)" >&2
rm -rf "$venv"
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# --no-deps: the file is a complete freeze; `pip check` then proves nothing is missing or mismatched.
"$venv/bin/python" -m pip install -q --no-deps -r requirements-scan.lock
"$venv/bin/python" -m pip check >/dev/null
"$venv/bin/checkov" --version >/dev/null
