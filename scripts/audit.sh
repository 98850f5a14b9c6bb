#!/usr/bin/env bash
# Known vulnerabilities in the pinned dependencies (requirements.lock), with pip-audit in a throw-away venv.
# Fails when a package could not be audited: an audit that silently skipped packages (no vulnerability
# service reachable: PyPI's JSON API or OSV) must not read as "no known vulnerabilities".
# Accepted findings go in scripts/audit-accepted.txt (one "ID  why it does not apply" per line).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/audit"
python3 -m venv "$venv"
"$venv/bin/pip" install -q pip-audit
ignores=()
if [ -f scripts/audit-accepted.txt ]; then
    while read -r id _why; do
        [ -n "$id" ] && [ "${id:0:1}" != "#" ] && ignores+=(--ignore-vuln "$id")
    done < scripts/audit-accepted.txt
fi
report="$(mktemp)"
status=0
"$venv/bin/pip-audit" -r requirements.lock --no-deps --disable-pip --progress-spinner off "${ignores[@]}" \
    >"$report" 2>&1 || status=$?
cat "$report"
if grep -q "could not be audited" "$report"; then
    echo "audit: packages were skipped (no vulnerability service reachable from here): not a clean audit" >&2
    exit 2
fi
exit "$status"
