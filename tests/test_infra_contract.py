"""The manifests of infra/ agree with the code they run: every ConfigMap key is a setting and the settings
build; the KEDA ScaledJobs read the stream and consumer group the code names and run `pp run-activator`;
each service's grace period outlasts its shutdown deadline and its probes are its own `--check` (liveness with
`--alive`: an outage of what it talks to makes it unready, not restarted)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from prompt_processing.model import naming
from prompt_processing.settings import Settings
from tests import manifests_check as check

# A service's deadline to stop after SIGTERM, as its setting; the pod's grace period must outlast it.
DEADLINES = {"pp-fanout": "fanout.shutdown_deadline_s", "pp-router": "router.shutdown_deadline_s",
             "pp-butler-writer": "butler.writer_shutdown_deadline_s",
             "pp-prefect-worker": "prefect.worker_shutdown_deadline_s"}  # fmt: skip
CHECKED = {"fanout", "router", "autoscale", "reporter", "butler-writer"}  # the services with `--check`
TEMPLATE = json.loads((check.ROOT / "deployments" / "kubernetes-job-template.json").read_text())
JOB_VARS = {k: v.get("default") for k, v in TEMPLATE["variables"]["properties"].items()}
STAND_IN_SECRETS = {"PP_REDIS__PASSWORD": "x", "PP_KAFKA__SASL_PASSWORD": "x", "PP_S3__SECRET_ACCESS_KEY": "x"}


def _job_resources() -> dict[str, dict[str, str]]:
    """The resources of the work pool's Jobs (its template's defaults)."""
    return {kind: {"cpu": JOB_VARS[f"cpu_{bound}"], "memory": JOB_VARS[f"memory_{bound}"],
                   "ephemeral-storage": JOB_VARS["ephemeral_storage"]}
            for kind, bound in (("requests", "request"), ("limits", "limit"))}


def _config(objects: list[check.Obj]) -> dict[str, str]:
    (config,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "pp-config"]
    return dict(config["data"])


def _is_setting(name: str) -> bool:
    """``PP_A__B`` names a field of Settings (``a``, then ``b`` of its section)."""
    model: Any = Settings
    for part in name.removeprefix("PP_").lower().split("__"):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return False
        model = model.model_fields[part].annotation
    return True


def _settings(objects: list[check.Obj], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in (_config(objects) | STAND_IN_SECRETS).items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_every_config_key_is_a_setting_and_they_build_the_settings(
    rendered: dict[str, list[check.Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for overlay, objects in rendered.items():
        unknown = [name for name in _config(objects) if not _is_setting(name)]
        assert not unknown, f"{overlay}: pp-config keys that are no setting: {unknown}"
        with monkeypatch.context() as env:
            settings = _settings(objects, env)
        assert settings.prefect.work_pool == "prompt-processing-kubernetes" and not settings.redis.embedded, overlay


def test_the_scaled_jobs_read_the_codes_stream_and_group_and_run_an_activator(
    rendered: dict[str, list[check.Obj]],
) -> None:
    scaled = [o for o in rendered["keda"] if o["kind"] == "ScaledJob"]
    assert {o["metadata"]["labels"]["prompt-processing/instrument"] for o in scaled} == {"LSSTCam", "LATISS", "HSC"}
    for job in scaled:
        instrument = job["metadata"]["labels"]["prompt-processing/instrument"]
        (trigger,) = job["spec"]["triggers"]
        assert trigger["metadata"]["stream"] == naming.stream_name(instrument)
        assert trigger["metadata"]["consumerGroup"] == naming.consumer_group(instrument)
        (container,) = job["spec"]["jobTargetRef"]["template"]["spec"]["containers"]
        assert container["command"] == ["pp", "run-activator", instrument]
        assert job["spec"]["rollout"]["strategy"] == "gradual" and job["spec"]["pollingInterval"] == 2
        # The same pod as the work pool's Jobs: resources, grace period, service account, settings.
        pod = job["spec"]["jobTargetRef"]["template"]["spec"]
        assert container["resources"] == _job_resources()
        assert pod["terminationGracePeriodSeconds"] == JOB_VARS["termination_grace_period_seconds"]
        assert pod["serviceAccountName"] == JOB_VARS["service_account_name"]
        assert container["envFrom"] == [{"configMapRef": {"name": JOB_VARS["config_map"]}},
                                        {"secretRef": {"name": JOB_VARS["secret"]}}]  # fmt: skip


def test_grace_periods_outlast_the_shutdown_deadlines_and_probes_are_the_services_checks(
    rendered: dict[str, list[check.Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for overlay, objects in rendered.items():
        with monkeypatch.context() as env:
            settings = _settings(objects, env)
        for deployment in (o for o in objects if o["kind"] == "Deployment"):
            name, pod = deployment["metadata"]["name"], deployment["spec"]["template"]["spec"]
            if name in DEADLINES:
                section, field = DEADLINES[name].split(".")
                deadline_s = getattr(getattr(settings, section), field)
                assert pod["terminationGracePeriodSeconds"] > deadline_s, f"{overlay} {name}"
            (container,) = pod["containers"]
            command = container["command"]
            if command[0] == "pp" and command[1] in CHECKED:
                assert container["livenessProbe"]["exec"]["command"] == [*command, "--check", "--alive"], name
                assert container["readinessProbe"]["exec"]["command"] == [*command, "--check"], f"{overlay} {name}"
