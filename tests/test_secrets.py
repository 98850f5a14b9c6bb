"""Credentials reach the processes that need them and no log: the demo run with an ACL user and secrets."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from pp_devkit.stack import free_port

SECRET_SETTINGS = ("PP_REDIS__PASSWORD", "PP_STACK__REDIS_ADMIN_PASSWORD", "PP_S3__SECRET_ACCESS_KEY")
PROJECT = Path(__file__).resolve().parents[1]  # `pp demo` reads deployments/ from the project
CREDENTIAL_FILES = {"auth.conf"}  # the embedded Redis's own 0600 credentials file: the only place they belong


@pytest.mark.timeout(900)
def test_the_demo_writes_no_secret_to_any_log_or_state_file(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    secret_values = {name: f"{name.lower()}-{secrets.token_hex(12)}" for name in SECRET_SETTINGS}
    ports = {f"PP_{name}__PORT": str(free_port()) for name in ("REDIS", "KAFKA", "S3", "PREFECT")}
    metrics = {f"PP_METRICS__{name}_PORT": "0" for name in ("FANOUT", "ROUTER", "AUTOSCALER", "REPORTER",
                                                              "BUTLER_WRITER")}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PP_", "PREFECT_"))} | ports | metrics | {
        "PP_STACK__STATE_DIR": str(state_dir), "PP_REDIS__USERNAME": "pp-demo", "PP_ROUTER__HTTP_PORT": "0",
        "PREFECT_HOME": str(tmp_path / "prefect-home"), **secret_values,
    }  # fmt: skip
    pp = str(Path(sys.executable).parent / "pp")
    try:
        demo = subprocess.run([pp, "demo", "--visits", "1", "--detectors", "2", "--size-px", "512"], env=env,
                              cwd=PROJECT, capture_output=True, text=True, timeout=780, check=False)  # fmt: skip
    finally:
        subprocess.run([pp, "stack", "down"], env=env, cwd=PROJECT, capture_output=True, timeout=120, check=False)
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output[-3000:]
    assert "succeeded: 2" in output, output[-2000:]  # both visit-detectors processed: the ACL user did its work
    # The stack's state (logs, Redis AOF, moto, Tansu) and the Prefect server's home (its database: flow and
    # task run logs, parameters, artifacts, events).
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name not in CREDENTIAL_FILES]
    assert any(p.suffix == ".log" for p in files), f"no logs under {state_dir}"
    for name, value in secret_values.items():
        assert value not in output, f"{name} printed by the demo"
        leaks = [str(p) for p in files if value.encode() in p.read_bytes()]
        assert not leaks, f"{name} written to {leaks}"
