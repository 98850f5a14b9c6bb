#!/usr/bin/env bash
# Create the project's virtualenv with a Python >= 3.12 and the pinned dependencies.
# Usage: scripts/bootstrap.sh .venv
set -euo pipefail
venv=${1:-.venv}

ensure_redis() {
    command -v redis-server >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bootstrap: installing Debian's redis-server" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
        # Debian's package starts a service on 6379; ours runs on its own port, so leave it be.
    else
        echo "bootstrap: redis-server not found; the embedded stack will use valkey-server" >&2
    fi
}

# tests/test_ui.py opens the Prefect UI in Debian's chromium through Debian's chromedriver (the
# same build, so their versions always match); browser tools' own downloads cannot work here.
ensure_chromium() {
    command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bootstrap: installing Debian's chromium and chromium-driver" >&2
        # Only the browser check needs them: a failed install skips that check, not the bootstrap.
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
            || echo "bootstrap: installing chromium failed; the Prefect UI browser check (tests/test_ui.py) will be skipped" >&2
    else
        echo "bootstrap: chromium not found and not installable here (needs root and apt-get);" \
            "the Prefect UI browser check (tests/test_ui.py) will be skipped" >&2
    fi
}

py=$("$(dirname "$0")/find_python.sh") || { echo "bootstrap: no Python >= 3.12, see above" >&2; exit 1; }
ensure_redis
ensure_chromium
echo "bootstrap: $("$py" -V) -> $venv" >&2
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -c requirements.lock -e '.[dev,test,bench]'
