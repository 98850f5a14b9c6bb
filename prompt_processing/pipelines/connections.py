"""What the tasks' connections share: the visit-detector dimensions and a connection on them."""

from __future__ import annotations

from typing import Any

import lsst.pipe.base.connectionTypes as ct

VISIT_DETECTOR = ("instrument", "visit", "detector")


def visit_connection(name: str, storage_class: str, doc: str, *, output: bool = False) -> Any:
    """An input (or output) dataset of the quantum's visit-detector."""
    kind = ct.Output if output else ct.Input
    return kind(name=name, storageClass=storage_class, dimensions=VISIT_DETECTOR, doc=doc)
