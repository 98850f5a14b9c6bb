"""The deployment files (prefect.yaml, deployments/) agree with each other and with the code's names."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from prompt_processing.adapters.prefect_api import (
    DeployError,
    automations,
    defined_work_pools,
    deploy_target_env,
    work_pool,
)
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


def test_prefect_yaml_serves_every_pool_and_each_worker_type_has_one() -> None:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert {d["work_pool"]["name"] for d in spec["deployments"]} == {"{{ $PP_DEPLOY_WORK_POOL }}"}
    (pull,) = spec["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"] == {"directory": "{{ $PP_DEPLOY_CODE_DIR }}"}
    pools = defined_work_pools(ROOT)
    assert sorted(p.type for p in pools) == ["kubernetes", "process"]
    assert work_pool(ROOT, "process").name == Settings().prefect.work_pool
    assert work_pool(ROOT, "kubernetes").code_directory == "/opt/pp/src"  # the image's WORKDIR


def test_a_pool_type_not_defined_is_named_in_the_error(tmp_path: Path) -> None:
    shutil.copy(ROOT / "prefect.yaml", tmp_path / "prefect.yaml")
    (tmp_path / "deployments").mkdir()
    (tmp_path / "deployments" / "work-pools.yaml").write_text("workPools:\n  - {name: other, type: process}\n")
    with pytest.raises(DeployError, match=r"defines 0 work pools of type 'kubernetes' .*types defined: process"):
        work_pool(tmp_path, "kubernetes")


def test_the_placeholders_name_the_pool_and_where_its_runs_find_the_code(tmp_path: Path) -> None:
    process, kubernetes = work_pool(ROOT, "process"), work_pool(ROOT, "kubernetes")
    assert deploy_target_env(process, tmp_path) == {"PP_DEPLOY_WORK_POOL": "prompt-processing",
                                                    "PP_DEPLOY_CODE_DIR": str(tmp_path.resolve())}  # fmt: skip
    assert deploy_target_env(kubernetes, tmp_path)["PP_DEPLOY_CODE_DIR"] == "/opt/pp/src"
    with pytest.raises(DeployError, match="has no image to set"):
        process.with_image("registry.example/pp:1")


def test_deployments_are_the_ones_the_code_and_the_autoscaler_name() -> None:
    names = deployment_names()
    assert names == {naming.activator_deployment(i) for i in DEFAULT_INSTRUMENTS} | {naming.RERUN_DEPLOYMENT}
    assert {s.deployment for s in load_specs(ROOT / "deployments" / "autoscaler.yaml")} <= names


def test_the_shipped_automations_react_to_events_the_code_emits() -> None:
    from tasks.outcome import EVENTS

    failed, lost = automations(ROOT)
    assert failed.trigger["expect"] == [EVENTS["failed"]] and not failed.enabled
    assert failed.trigger["match"] == {"prefect.resource.id": "pp.visit.*"}
    assert failed.notify is not None and failed.notify.block == "slack-webhook/pp-operators"
    assert lost.enabled and lost.change_state is not None and lost.change_state.state == "CRASHED"
    assert lost.trigger["after"] == ["prefect.flow-run.heartbeat"]
    assert lost.trigger["within"] >= 3 * (Settings().prefect.heartbeat_s or 0) > 0  # three heartbeats missed
    tags = {t for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"] for t in d["tags"]}
    assert lost.trigger["match_related"]["prefect.resource.id"].removeprefix("prefect.tag.") in tags


def test_an_automation_has_exactly_one_action(tmp_path: Path) -> None:
    (tmp_path / "deployments").mkdir()
    (tmp_path / "deployments" / "automations.yaml").write_text(
        "automations:\n  - {name: both, trigger: {type: event}, changeState: {state: CRASHED, message: m},\n"
        "     notify: {block: slack-webhook/x, subject: s, body: b}}\n")  # fmt: skip
    with pytest.raises(DeployError, match="give exactly one of notify, changeState"):
        automations(tmp_path)
