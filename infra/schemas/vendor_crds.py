"""Vendor CustomResourceDefinition schemas from a git clone of their project (kedacore/keda), as the JSON
files beside this script that tests/manifests_check.py validates custom resources against.

    python infra/schemas/vendor_crds.py GIT_DIR TAG [CRD_PATH ...]

reads each CRD file at TAG with ``git show`` (GIT_DIR may be a bare clone) and writes
``<group>_<plural>.json``: the source (repository, tag, commit, path, blob), the kind, its scope and each
served version's openAPIV3Schema, without the ``description`` texts (two thirds of the bytes, no rule).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

HERE = Path(__file__).resolve().parent
REPOSITORY = "https://github.com/kedacore/keda"  # the only project vendored so far
KEDA_CRDS = ("config/crd/bases/keda.sh_scaledjobs.yaml", "config/crd/bases/keda.sh_triggerauthentications.yaml")


def without_descriptions(schema: Any) -> Any:
    """``schema`` without description texts (a property *named* description stays: its value is a schema)."""
    if isinstance(schema, dict):
        return {k: without_descriptions(v) for k, v in schema.items() if k != "description" or not isinstance(v, str)}
    if isinstance(schema, list):
        return [without_descriptions(v) for v in schema]
    return schema


def git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True, text=True).stdout


def vendor(git_dir: str, tag: str, path: str) -> Path:
    spec = yaml.safe_load(git(git_dir, "show", f"{tag}:{path}"))["spec"]
    out = {
        "source": {
            "repository": REPOSITORY,
            "tag": tag,
            "commit": git(git_dir, "rev-parse", f"{tag}^{{commit}}").strip(),
            "path": path,
            "blob": git(git_dir, "rev-parse", f"{tag}:{path}").strip(),
        },
        "group": spec["group"],
        "kind": spec["names"]["kind"],
        "scope": spec["scope"],
        "versions": {
            v["name"]: without_descriptions(v["schema"]["openAPIV3Schema"]) for v in spec["versions"] if v["served"]
        },
    }
    target = HERE / f"{spec['group']}_{spec['names']['plural']}.json"
    target.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return target


if __name__ == "__main__":
    git_dir, tag, *paths = sys.argv[1:]
    for crd_path in paths or KEDA_CRDS:
        print(vendor(git_dir, tag, crd_path).relative_to(HERE.parents[1]))
