#!/usr/bin/env bash
# Print the path of a Python >= 3.12 (python3.12, python3.13, or pyenv's 3.12.x / 3.13.x), or say
# which were tried and exit 1. Used by scripts/bootstrap.sh (.venv) and scripts/scan_venv.sh (.venv-scan).
set -euo pipefail
candidates=(python3.12 python3.13)
if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root)
    candidates+=("$root"/versions/3.12.*/bin/python3 "$root"/versions/3.13.*/bin/python3)
fi
for py in "${candidates[@]}"; do
    # pyenv shims exist for versions that are not selected: run it to be sure it works.
    if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
        echo "$py"
        exit 0
    fi
done
echo "no Python >= 3.12 found (tried python3.12, python3.13, pyenv 3.12.x/3.13.x)." >&2
echo "install one, e.g. 'pyenv install 3.12', and run make again." >&2
exit 1
