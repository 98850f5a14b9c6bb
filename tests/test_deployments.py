"""The deployment files (prefect.yaml, deployments/) agree with each other and with the code's names."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from prompt_processing.adapters.prefect_api import DeployError, automations, work_pools
from prompt_processing.autoscaler.spec import load_specs
from prompt_processing.model import naming
from prompt_processing.settings import DEFAULT_INSTRUMENTS, Settings

ROOT = Path(__file__).resolve().parent.parent


def deployment_names() -> set[str]:
    """``<flow>/<deployment>`` of every deployment in prefect.yaml (flow names from the entrypoints' code)."""
    flows = {"flows/activator.py:activator": naming.ACTIVATOR_FLOW,
             "flows/process_visit_detector.py:process_visit_detector": naming.PROCESS_VISIT_DETECTOR_FLOW}  # fmt: skip
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return {f"{flows[d['entrypoint']]}/{d['name']}" for d in spec["deployments"]}


def test_every_pool_of_prefect_yaml_is_defined_and_it_is_the_default_pool() -> None:
    (pool,) = work_pools(ROOT)
    assert (pool.name, pool.type) == (Settings().prefect.work_pool, "process")


def test_a_pool_used_but_not_defined_is_named_in_the_error(tmp_path: Path) -> None:
    shutil.copy(ROOT / "prefect.yaml", tmp_path / "prefect.yaml")
    (tmp_path / "deployments").mkdir()
    (tmp_path / "deployments" / "work-pools.yaml").write_text("workPools:\n  - {name: other, type: process}\n")
    with pytest.raises(DeployError, match=r"uses work pool\(s\) prompt-processing, not defined in deployments"):
        work_pools(tmp_path)


def test_deployments_are_the_ones_the_code_and_the_autoscaler_name() -> None:
    names = deployment_names()
    assert names == {naming.activator_deployment(i) for i in DEFAULT_INSTRUMENTS} | {naming.RERUN_DEPLOYMENT}
    assert {s.deployment for s in load_specs(ROOT / "deployments" / "autoscaler.yaml")} <= names


def test_the_shipped_automations_react_to_events_the_code_emits() -> None:
    from tasks.outcome import EVENTS

    (failed,) = automations(ROOT)
    assert failed.trigger["expect"] == [EVENTS["failed"]] and not failed.enabled
    assert failed.trigger["match"] == {"prefect.resource.id": "pp.visit.*"}
    assert failed.notify.block == "slack-webhook/pp-operators"
