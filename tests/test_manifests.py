"""The Kubernetes manifests, offline (no cluster here): every overlay of infra/overlays rendered with `kubectl
kustomize`; every object valid against Kubernetes 1.31's schemas (strict) or KEDA's vendored CRD schemas; every
workload held to our policy; checkov's findings fixed or accepted in infra/scan-accepted.yaml with a reason.
The checks are in tests/manifests_check.py; the last tests break copies of tests/k8s_sample.yaml, one rule at a
time, to show that each check fails when it should."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests import manifests_check as check
from tests.manifests_check import Accepted, Finding, Obj

OVERLAYS = check.overlays()
SAMPLE = [o for o in yaml.safe_load_all((Path(__file__).parent / "k8s_sample.yaml").read_text()) if o]


def _sample() -> list[Obj]:
    return copy.deepcopy(SAMPLE)


@pytest.fixture(scope="module")
def findings(rendered: dict[str, list[Obj]]) -> list[Finding]:
    """checkov's findings on every overlay and on a broken copy of the sample (overlay ``_broken``), in one run."""
    assert check.CHECKOV.exists(), f"{check.CHECKOV} is missing: `make .venv-scan/.installed` makes it"
    broken = _sample()
    _break(broken, "Deployment", "pod.containers.0.securityContext.privileged", True)
    _break(broken, "Deployment", "metadata.annotations", {"checkov.io/skip1": "CKV_K8S_43=accepted in the manifest"})
    return check.scan({**rendered, "_broken": broken})


def _report(problems: dict[str, list[str]]) -> str:
    return "\n".join(f"{overlay}: {p}" for overlay, found in problems.items() for p in found)


def _policy(rendered: dict[str, list[Obj]], policy: Callable[[list[Obj]], list[str]]) -> dict[str, list[str]]:
    return {overlay: found for overlay, objects in rendered.items() if (found := policy(objects))}


# --- The real manifests ------------------------------------------------------------------------------------------


def test_the_dev_and_production_overlays_exist() -> None:
    assert {"dev", "production"} <= set(OVERLAYS), f"overlays found in infra/overlays: {sorted(OVERLAYS)}"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_object_of_the_overlay_is_valid_against_its_schema(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objects = rendered[overlay]
    assert objects, f"{overlay} renders no object"
    errors = [f"{check.ident(o)}: {e}" for o in objects for e in check.schema_errors(o)]
    assert not errors, "\n".join(errors)


def test_every_container_runs_non_root_unprivileged_without_capabilities_on_a_read_only_root(
    rendered: dict[str, list[Obj]],
) -> None:
    assert not (found := _policy(rendered, check.security_problems)), _report(found)


def test_every_container_has_requests_and_limits_and_services_have_probes_and_a_grace_period(
    rendered: dict[str, list[Obj]],
) -> None:
    assert not (found := _policy(rendered, check.resource_problems)), _report(found)


def test_no_variable_holds_a_literal_secret(rendered: dict[str, list[Obj]]) -> None:
    assert not (found := _policy(rendered, check.secret_problems)), _report(found)


def test_everything_is_in_our_namespace_and_rbac_is_namespaced(rendered: dict[str, list[Obj]]) -> None:
    assert not (found := _policy(rendered, check.scope_problems)), _report(found)


def test_traffic_is_denied_by_default_and_every_deployment_has_a_disruption_budget(
    rendered: dict[str, list[Obj]],
) -> None:
    assert not (found := _policy(rendered, check.network_problems)), _report(found)


def test_every_workload_kind_is_checked(rendered: dict[str, list[Obj]]) -> None:
    """The policy reads pod templates where each workload kind keeps them: a new kind must be taught first."""
    pod_kinds = {"Pod", "ReplicaSet", "ReplicationController"}
    kinds = {o["kind"] for objects in rendered.values() for o in objects}
    assert not kinds & pod_kinds, f"pods outside the workload kinds the policy reads: {kinds & pod_kinds}"
    templates = [pod for objects in rendered.values() for _, pod, _ in check.workloads(objects)]
    assert templates, "no workload found in any overlay"
    assert all(pod.get("containers") for pod in templates), "a workload whose pod template has no containers"


def test_every_checkov_failure_is_fixed_or_accepted_with_a_reason(findings: list[Finding]) -> None:
    real = [f for f in findings if f.overlay != "_broken"]
    unaccepted, _, mislabelled = check.triage(real, check.load_accepted())
    assert not unaccepted, "checkov failures to fix or accept in infra/scan-accepted.yaml:\n" + "\n".join(
        check.describe(f) for f in unaccepted
    )
    assert not mislabelled, "\n".join(mislabelled)


def test_no_accepted_finding_is_stale(findings: list[Finding]) -> None:
    _, stale, _ = check.triage([f for f in findings if f.overlay != "_broken"], check.load_accepted())
    assert not stale, "accepted in infra/scan-accepted.yaml but no longer found (delete them):\n" + "\n".join(
        f"{a.check} {a.title!r}" for a in stale
    )


# --- Each check can fail -----------------------------------------------------------------------------------------


def _object(objects: list[Obj], kind: str) -> Obj:
    return next(o for o in objects if o["kind"] == kind)


DELETE = object()
POD = {"Deployment": "spec.template.spec", "ScaledJob": "spec.jobTargetRef.template.spec"}


def _break(objects: list[Obj], kind: str, path: str, value: Any) -> None:
    """Set (or DELETE) a dotted path, ``pod.`` standing for the pod spec, in the sample's object of ``kind``."""
    *parents, last = [int(k) if k.isdigit() else k for k in path.replace("pod.", POD.get(kind, "") + ".").split(".")]
    node: Any = _object(objects, kind)
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value


ENV = "pod.containers.0.env"
SECURITY = "pod.containers.0.securityContext"
# What breaks: (the kind of the sample's object, a path in it, its new value or DELETE, what must be reported).
BREAKAGES: dict[str, tuple[str, str, Any, str]] = {
    "unknown Deployment field": ("Deployment", "pod.containers.0.imagePullSecret", "x", "'imagePullSecret' was unexp"),
    "Deployment field of a wrong type": ("Deployment", "spec.replicas", "two", "'two' is not of type"),
    "unknown ObjectMeta field": ("ScaledJob", "metadata.label", {}, "'label' was unexpected"),
    "unknown ScaledJob field": ("ScaledJob", "spec.pollingIntervall", 5, "spec.pollingIntervall: not a field of"),
    "unknown field deep in the ScaledJob's pod": ("ScaledJob", "pod.containers.0.securityContex", {},
                                                  "containers[0].securityContex: not a field of ScaledJob"),
    "ScaledJob field of a wrong type": ("ScaledJob", "spec.maxReplicaCount", "many",
                                        "spec.maxReplicaCount: 'many' is not of type 'integer'"),
    "ScaledJob trigger without its metadata": ("ScaledJob", "spec.triggers.0.metadata", DELETE,
                                               "'metadata' is a required property"),
    "unknown TriggerAuthentication field": ("TriggerAuthentication", "spec.secretRef", [],
                                            "spec.secretRef: not a field of TriggerAuthentication"),
    "kind without a schema": ("TriggerAuthentication", "kind", "ScaledObject", "no schema for kind ScaledObject"),
    "privileged container": ("Deployment", f"{SECURITY}.privileged", True, "needs privileged false or unset"),
    "privilege escalation": ("Deployment", f"{SECURITY}.allowPrivilegeEscalation", DELETE,
                             "needs allowPrivilegeEscalation false"),
    "capability added": ("ScaledJob", f"{SECURITY}.capabilities.add", ["NET_ADMIN"], "activator: needs capabilities"),
    "root allowed": ("ScaledJob", "pod.securityContext.runAsNonRoot", DELETE, "needs runAsNonRoot"),
    "no seccomp profile": ("Deployment", "pod.securityContext.seccompProfile", DELETE,
                           "fanout: needs seccompProfile RuntimeDefault"),
    "writable root": ("Deployment", f"{SECURITY}.readOnlyRootFilesystem", False, "needs readOnlyRootFilesystem"),
    "host network": ("Deployment", "pod.hostNetwork", True, "hostNetwork is set"),
    "no memory limit": ("ScaledJob", "pod.containers.0.resources.limits.memory", DELETE, "no limits.memory"),
    "no readiness probe": ("Deployment", "pod.containers.0.readinessProbe", DELETE, "fanout: no readinessProbe"),
    "no grace period": ("ScaledJob", "pod.terminationGracePeriodSeconds", DELETE, "no terminationGracePeriodSeconds"),
    "literal password": ("Deployment", f"{ENV}.0", {"name": "PP_KAFKA__SASL_PASSWORD", "value": "hunter2"},
                         "PP_KAFKA__SASL_PASSWORD is not from a secretKeyRef"),
    "token from a ConfigMap": ("ScaledJob", ENV, [{"name": "PP_S3__TOKEN", "valueFrom": {"configMapKeyRef": {
        "name": "pp-config", "key": "token"}}}], "PP_S3__TOKEN is not from a secretKeyRef"),
    "secret in a ConfigMap": ("ConfigMap", "data.PP_REDIS__PASSWORD", "x", "PP_REDIS__PASSWORD looks like a secret"),
    "another namespace": ("ScaledJob", "metadata.namespace", "default",
                          "ScaledJob/default/activator-lsstcam: not in namespace prompt-processing"),
    "no namespace": ("Role", "metadata.namespace", DELETE, "Role/pp-worker: not in namespace"),
    "cluster role": ("Role", "kind", "ClusterRole", "ClusterRole/prompt-processing/pp-worker: cluster-scoped RBAC"),
    "binding to a cluster role": ("RoleBinding", "roleRef.kind", "ClusterRole", "pp-worker: cluster-scoped RBAC"),
    "ingress allowed by default": ("NetworkPolicy", "spec.ingress", [{}], "no default-deny NetworkPolicy"),
    "egress not denied": ("NetworkPolicy", "spec.policyTypes", ["Ingress"], "no default-deny NetworkPolicy"),
    "budget selecting other pods": ("PodDisruptionBudget", "spec.selector.matchLabels.app", "x",
                                    "next-visit-fanout: no PodDisruptionBudget selects its pods"),
    "budget excluding the pods": ("Deployment", "spec.template.metadata.labels.tier", "web",
                                  "no PodDisruptionBudget selects its pods"),
}  # fmt: skip


def test_the_sample_passes_every_check() -> None:
    """So that each breakage below is what fails, not the sample."""
    assert check.problems(_sample()) == []
    assert {(o["apiVersion"], o["kind"]) for o in SAMPLE} >= set(check.custom_resource_schemas())


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_copy_of_the_sample_is_reported(breakage: str) -> None:
    objects = _sample()
    kind, path, value, expected = BREAKAGES[breakage]
    _break(objects, kind, path, value)
    found = check.problems(objects)
    assert any(expected in p for p in found), f"{expected!r} not in {found}"


def test_checkov_reports_a_privileged_container_and_an_inline_suppression_that_nothing_accepts(
    findings: list[Finding],
) -> None:
    unaccepted, _, _ = check.triage([f for f in findings if f.overlay == "_broken"], check.load_accepted())
    deployment = "Deployment.prompt-processing.next-visit-fanout"
    reported = {(f.check, f.resource, f.suppressed) for f in unaccepted}
    assert {("CKV_K8S_16", deployment, False), ("CKV_K8S_43", deployment, True)} <= reported
    scanned = {f.resource for f in findings if f.overlay == "_broken"}
    assert "Job.prompt-processing.activator-lsstcam-scaledjob" in scanned  # the ScaledJob's pods are scanned as a Job


def test_accepted_entries_match_by_check_overlay_and_resource_and_go_stale() -> None:
    digest, probe = "Image should use digest", "Liveness Probe Should be Configured"
    found = [Finding("dev", "CKV_K8S_43", digest, "Deployment.prompt-processing.fanout"),
             Finding("production", "CKV_K8S_43", digest, "Deployment.prompt-processing.fanout"),
             Finding("dev", "CKV_K8S_8", probe, "Job.prompt-processing.x", suppressed=True)]  # fmt: skip
    dev_only = Accepted("CKV_K8S_43", digest, "tags in dev", overlays=("dev",))
    wrong_title = Accepted("CKV_K8S_43", "Images should use digests", "typo")
    other = Accepted("CKV_K8S_8", probe, "suppressed ones are never accepted")
    unaccepted, stale, mislabelled = check.triage(found, [dev_only, wrong_title, other])
    assert unaccepted == [found[2]]  # the suppressed one: annotations do not count as acceptance
    assert stale == [other]
    assert mislabelled == [f"CKV_K8S_43: accepted as 'Images should use digests', checkov calls it {digest!r}"]
    unaccepted, stale, _ = check.triage(found[:2], [dev_only])
    assert (unaccepted, stale) == ([found[1]], [])
    assert "suppressed by an annotation" in check.describe(found[2])
