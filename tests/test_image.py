"""What can be checked of the container image without a container engine (none runs here): its
Dockerfile, read as the build would read it, against the package it installs."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "image" / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Build arguments and stages: comments dropped, continuation lines joined."""
    lines = re.sub(r"\\\n\s*", " ", "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("#")))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in filter(None, (x.strip() for x in lines.splitlines())):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip()))
        else:
            stages[-1].instructions.append((keyword, rest.strip()))
    return args, stages


def _sources(copy: str) -> list[str]:
    """A COPY's sources (every word but the destination and the --flags)."""
    words = [w for w in shlex.split(copy) if not w.startswith("--")]
    return [w.rstrip("/") for w in words[:-1]]


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_build_stage_installs_every_package_from_the_lock_file_without_the_dev_kit(
    dockerfile: tuple[dict[str, str], list[Stage]], project: dict[str, object]
) -> None:
    _, stages = dockerfile
    build = stages[0]
    copied = {source for c in build.all("COPY") for source in _sources(c)}
    includes = project["tool"]["setuptools"]["packages"]["find"]["include"]  # type: ignore[index]
    packages = {pattern.rstrip("*") for pattern in includes}
    assert packages <= copied, f"packages not copied into the build stage: {packages - copied}"
    assert {"pyproject.toml", "requirements.lock", "README.md"} <= copied  # what `pip install .` reads
    (run,) = build.all("RUN")
    install = next(part.split() for part in run.split("&&") if " install " in part and "-c" in part)
    assert install[install.index("-c") + 1] == "requirements.lock"
    assert install[-1] == '".[kubernetes]"'  # the package and its Kubernetes worker: no dev kit tools
    assert "kubernetes" in project["project"]["optional-dependencies"]  # type: ignore[index]
    for source in copied:
        assert (ROOT / source).exists(), f"COPY of a path that is not in the repository: {source}"


def test_the_image_runs_as_a_non_root_user_and_writes_only_to_mounted_paths(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    _, stages = dockerfile
    final = stages[-1]
    (user,) = final.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0  # numeric: runAsNonRoot can check it
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(final.all("ENV"))))
    writable = ("/tmp", "/work")  # the emptyDir mounts; the root filesystem can be read-only
    for name in ("HOME", "PREFECT_HOME", "TMPDIR"):
        assert env[name].startswith(writable), f"{name}={env[name]} is not under a mounted path"


def test_the_command_is_left_to_prefect_and_the_manifests(
    dockerfile: tuple[dict[str, str], list[Stage]], project: dict[str, object]
) -> None:
    args, stages = dockerfile
    final = stages[-1]
    assert not final.all("ENTRYPOINT")  # Prefect's Kubernetes worker passes `prefect flow-run execute` as args
    (cmd,) = final.all("CMD")
    scripts = project["project"]["scripts"]  # type: ignore[index]
    assert cmd.strip('[]"').split('", "')[0] in scripts
    (workdir,) = final.all("WORKDIR")
    targets = {shlex.split(c)[-1].rstrip("/") for c in final.all("COPY") if "--from" not in c}
    assert {f"{workdir}/flows", f"{workdir}/tasks", f"{workdir}/deployments", workdir} <= targets
    assert {stage.base for stage in stages} == {"${PYTHON_IMAGE}"}
    minor = re.search(r"python:(\d+\.\d+)", args["PYTHON_IMAGE"])
    requires = project["project"]["requires-python"]  # type: ignore[index]
    assert minor and tuple(map(int, minor[1].split("."))) >= tuple(map(int, requires.lstrip(">=").split(".")))
