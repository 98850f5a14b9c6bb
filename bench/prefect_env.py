"""A benchmark's own Prefect: its settings in the environment before anything imports prefect."""

from __future__ import annotations

import os
from pathlib import Path

from pp_devkit.stack import free_port


def isolate_prefect(state: Path) -> int:
    """Point Prefect at a server of this benchmark's own on a free port, its home under ``state``; return
    the port. Prefect reads its settings at import: call this before anything imports prefect."""
    port = free_port()
    os.environ |= {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_HOME": str(state / "home"),
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}  # fmt: skip
    return port
