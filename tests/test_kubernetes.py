"""The Kubernetes work pool: its base job template, the Job a Kubernetes worker would create from it
(rendered offline with prefect-kubernetes' own configuration class), and the pool made from it."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import Flow, FlowRun, WorkPool
from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings
from prefect.utilities.templating import apply_values
from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

from prompt_processing.adapters.prefect_api import (
    WorkPoolDefinition,
    current_image,
    defined_work_pools,
    deploy_all,
    ensure_work_pools,
)
from prompt_processing.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = json.loads((ROOT / "deployments" / "kubernetes-job-template.json").read_text())
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY")


def render_job(
    variables: dict[str, Any], flow_name: str = "activator", template: dict[str, Any] = TEMPLATE
) -> dict[str, Any]:
    """The Job manifest a Kubernetes worker would submit for a flow run, from the template's defaults
    and ``variables`` (a deployment's job variables)."""
    return prepared(variables, flow_name, template).job_manifest


def prepared(
    variables: dict[str, Any], flow_name: str = "activator", template: dict[str, Any] = TEMPLATE
) -> KubernetesWorkerJobConfiguration:
    """The worker's job configuration for a flow run, prepared as it is before the Job is created."""
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    config = KubernetesWorkerJobConfiguration(**apply_values(template["job_configuration"], defaults | variables))
    flow = Flow(id=uuid.uuid4(), name=flow_name)
    run = FlowRun(id=uuid.uuid4(), name="brisk-otter", flow_id=flow.id)
    pool = WorkPool(name="prompt-processing-kubernetes", type="kubernetes", base_job_template=template)
    config.prepare_for_flow_run(flow_run=run, flow=flow, work_pool=pool, worker_name="pp-worker")
    return config


@pytest.fixture(scope="module")
def activator_job() -> dict[str, Any]:
    return render_job({"image": "registry.example/prompt-processing:1.2.3", "instrument": "LSSTCam"})


@pytest.fixture(scope="module", params=["activator", "process-visit-detector"])
def any_job(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The Job of an activator run, then of a rerun (what holds for every flow run's pod)."""
    return render_job({"image": "registry.example/prompt-processing:1.2.3", "instrument": "LATISS"}, request.param)


def test_the_kubernetes_pool_is_defined_with_the_template_file() -> None:
    (pool,) = [p for p in defined_work_pools(ROOT) if p.type == "kubernetes"]
    assert pool.base_job_template == TEMPLATE


def test_an_activator_runs_as_a_job_with_rubins_resources_and_the_image_asked_for(
    activator_job: dict[str, Any],
) -> None:
    spec = activator_job["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/prompt-processing:1.2.3"
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi", "ephemeral-storage": "5Gi"},
        "limits": {"cpu": "1", "memory": "8Gi", "ephemeral-storage": "5Gi"},
    }
    assert (spec["backoffLimit"], spec["ttlSecondsAfterFinished"], spec["completions"], spec["parallelism"]) == (
        0, 600, 1, 1)  # fmt: skip
    assert "completions" not in spec["template"]["spec"]  # a Job field, not a pod's (the default template's slip)
    assert activator_job["metadata"]["namespace"] == "prompt-processing"
    assert spec["template"]["metadata"]["labels"]["prompt-processing/instrument"] == "LSSTCam"
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] == 120


def test_settings_come_from_the_config_map_and_the_secret_never_as_plain_values(
    any_job: dict[str, Any],
) -> None:
    (container,) = any_job["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": "pp-config"}}, {"secretRef": {"name": "pp-secrets"}}]
    names = {e["name"]: e.get("value") for e in container["env"]}
    assert "PREFECT__FLOW_RUN_ID" in names and "PREFECT_API_URL" in names
    leaked = [n for n, v in names.items() if v and any(w in n.upper() for w in SECRET_WORDS)]
    assert not leaked, f"secret-looking variables with plain values: {leaked}"


def test_the_prefect_api_auth_string_reaches_jobs_as_a_reference_to_the_secret() -> None:
    """The worker copies its Prefect settings into each Job; with the two names infra/ gives it, the auth
    string becomes a secretKeyRef before the Job is created (prefect-kubernetes' own replacement, which
    `_create_job` calls; private, so a new prefect-kubernetes that changes it fails here)."""
    worker_pod = next(d for d in yaml.safe_load_all((ROOT / "infra/base/prefect-worker.yaml").read_text())
                      if d and d["kind"] == "Deployment")["spec"]["template"]["spec"]  # fmt: skip
    given = {e["name"]: e.get("value") for e in worker_pod["containers"][0]["env"]}
    secret_name = given["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME"]
    secret_key = given["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY"]
    with temporary_settings({PREFECT_API_AUTH_STRING: "pp-operator:not-in-the-job"}):
        config = prepared({"instrument": "LSSTCam"})
    (container,) = config.job_manifest["spec"]["template"]["spec"]["containers"]
    assert {"name": "PREFECT_API_AUTH_STRING", "value": "pp-operator:not-in-the-job"} in container["env"]
    asyncio.run(KubernetesWorker._replace_env_variable_with_secret(
        None, env_variable_name="PREFECT_API_AUTH_STRING", configuration=config, secret_name=secret_name,
        secret_key=secret_key))  # type: ignore[arg-type]  # fmt: skip
    (container,) = config.job_manifest["spec"]["template"]["spec"]["containers"]
    assert "not-in-the-job" not in json.dumps(config.job_manifest)
    (auth,) = [e for e in container["env"] if e["name"] == "PREFECT_API_AUTH_STRING"]
    assert auth["valueFrom"] == {"secretKeyRef": {"name": "pp-secrets", "key": "PP_PREFECT__AUTH_STRING"}}


def test_the_pod_is_non_root_read_only_without_capabilities_and_writes_to_empty_dirs(
    any_job: dict[str, Any],
) -> None:
    pod = any_job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "privileged": False, "capabilities": {"drop": ["ALL"]}}  # fmt: skip
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == {"/tmp", "/work"}  # the image's only writable paths (image/Dockerfile)
    assert all("emptyDir" in volumes[name] for name in mounts.values())


def test_a_rerun_gets_the_same_pod_and_its_own_labels() -> None:
    job = render_job({"instrument": "LATISS"}, flow_name="process-visit-detector")
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"]["prompt-processing/instrument"] == "LATISS"
    assert pod["metadata"]["labels"]["prefect.io/flow-name"] == "process-visit-detector"
    assert pod["spec"]["containers"][0]["image"] == TEMPLATE["variables"]["properties"]["image"]["default"]


def test_pp_deploy_creates_the_pool_with_its_template(stack_settings: Settings, prefect_server: str) -> None:
    (pool,) = [p for p in defined_work_pools(ROOT) if p.type == "kubernetes"]
    pool = WorkPoolDefinition(name=f"k8s-{uuid.uuid4().hex[:6]}", type=pool.type, base_job_template=TEMPLATE)
    assert ensure_work_pools(stack_settings, [pool]) == {pool.name: "created"}
    with get_client(sync_client=True) as client:
        made = client.read_work_pool(pool.name)
    assert made.type == "kubernetes"
    assert made.base_job_template == TEMPLATE
    assert ensure_work_pools(stack_settings, [pool]) == {pool.name: "unchanged"}
    assert ensure_work_pools(stack_settings, [pool.with_image("registry.example/pp:2")]) == {pool.name: "updated"}
    assert current_image(stack_settings, pool.name) == "registry.example/pp:2"  # what a deploy without --image keeps
    assert current_image(stack_settings, "no-such-pool") is None


def test_one_prefect_yaml_deploys_to_either_pool_and_the_stored_deployment_renders_its_job(
    stack_settings: Settings, prefect_server: str
) -> None:
    """`pp deploy --pool-type kubernetes --image ...`, then the Job of an activator run rendered from
    what the server stored (the pool's template, the deployment's job variables); then back to the
    process pool, which the other tests of this server use."""
    deploy_all(stack_settings, ROOT, pool_type="kubernetes", image="registry.example/prompt-processing:2.0.0")
    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("activator/activator-hsc")
            rerun = client.read_deployment_by_name("process-visit-detector/rerun")
            pool = client.read_work_pool("prompt-processing-kubernetes")
        assert deployment.work_pool_name == rerun.work_pool_name == "prompt-processing-kubernetes"
        assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {
            "directory": "/opt/pp/src"}}]  # fmt: skip
        template = pool.base_job_template
        job = render_job(dict(deployment.job_variables or {}), template=template)
        pod = job["spec"]["template"]
        assert pod["spec"]["containers"][0]["image"] == "registry.example/prompt-processing:2.0.0"
        assert pod["metadata"]["labels"]["prompt-processing/instrument"] == "HSC"
        assert pod["spec"]["containers"][0]["args"] == ["python", "-m", "prefect.engine"]  # SIGTERM reaches it
        rerun_pod = render_job(dict(rerun.job_variables or {}), "process-visit-detector", template)["spec"]["template"]
        # A rerun keeps Prefect's supervisor: rescheduled if its pod is evicted.
        assert rerun_pod["spec"]["containers"][0]["args"] == ["prefect", "flow-run", "execute"]
        assert rerun.parameter_openapi_schema["properties"]["group"]["description"].startswith("The visit's groupId")
    finally:
        deploy_all(stack_settings, ROOT, pool_type="process")
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("activator/activator-hsc")
    assert deployment.work_pool_name == "prompt-processing"
    assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
