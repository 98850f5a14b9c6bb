"""Offline checks of the Kubernetes manifests: each overlay of infra/overlays rendered with `kubectl kustomize`,
every object validated against its schema, the workloads held to our policy, and checkov's findings triaged
against infra/scan-accepted.yaml. Used by tests/test_manifests.py; `python -m tests.manifests_check`
(`make validate-k8s`) prints a summary and exits 1 on any problem.

Schemas: built-in kinds against Kubernetes KUBERNETES_VERSION's OpenAPI schemas as kubernetes-validate bundles
them, in its strict mode (an undeclared field is an error); custom resources (KEDA's) against the CRD schemas
vendored in infra/schemas (README.md there), plus a walk that rejects any field the schema does not declare,
as the API server's pruning or strict field validation would.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
SCHEMAS = INFRA / "schemas"
ACCEPTED_FILE = INFRA / "scan-accepted.yaml"
CHECKOV = ROOT / ".venv-scan" / "bin" / "checkov"  # its own venv (scripts/scan_venv.sh): its pins clash with ours
KUBERNETES_VERSION = "1.31"  # the clusters'; kubernetes-validate 1.37.0 bundles the schemas of 1.25 to 1.37
NAMESPACE = "prompt-processing"
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "AUTH")
# Built-in kinds without a namespace (the custom resources' scope comes from their CRD).
CLUSTER_SCOPED = frozenset({
    "Namespace", "Node", "PersistentVolume", "ClusterRole", "ClusterRoleBinding", "StorageClass", "PriorityClass",
    "CustomResourceDefinition", "APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "IngressClass", "RuntimeClass", "CSIDriver",
    "CSINode", "VolumeAttachment", "CertificateSigningRequest", "FlowSchema", "PriorityLevelConfiguration",
})  # fmt: skip
# Where each workload kind keeps its pod template; the long-running ones need liveness and readiness probes.
POD_TEMPLATES = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "ScaledJob": ("spec", "jobTargetRef", "template"),
}
LONG_RUNNING = frozenset({"Deployment", "StatefulSet", "DaemonSet"})

Obj = dict[str, Any]


class RenderError(Exception):
    """`kubectl kustomize` failed on an overlay (its message is kubectl's)."""


def overlays(infra: Path = INFRA) -> dict[str, Path]:
    """Overlay name -> directory, for every infra/overlays/*/kustomization.yaml."""
    return {k.parent.name: k.parent for k in sorted((infra / "overlays").glob("*/kustomization.yaml"))}


def render(overlay: Path) -> list[Obj]:
    """The objects `kubectl kustomize` renders from ``overlay``."""
    command = ["kubectl", "kustomize", str(overlay)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode:
        raise RenderError(f"kubectl kustomize {overlay.relative_to(ROOT)}: {done.stderr.strip()}")
    return [o for o in yaml.safe_load_all(done.stdout) if o]


def ident(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return "/".join(x for x in (obj.get("kind", "?"), meta.get("namespace"), meta.get("name", "?")) if x)


# --- Schemas ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CustomResourceSchema:
    kind: str
    scope: str
    schema: Obj
    source: str


@cache
def custom_resource_schemas() -> dict[tuple[str, str], CustomResourceSchema]:
    """(apiVersion, kind) -> the vendored CRD schema (infra/schemas/*.json, made by vendor_crds.py)."""
    found = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        crd = json.loads(path.read_text())
        source = "{repository}@{tag} ({commit:.12}) {path}".format(**crd["source"])
        for version, schema in crd["versions"].items():
            found[f"{crd['group']}/{version}", crd["kind"]] = CustomResourceSchema(
                crd["kind"], crd["scope"], schema, source
            )
    return found


def schema_errors(obj: Obj) -> list[str]:
    """What keeps ``obj`` from validating: built-in kinds strictly against Kubernetes KUBERNETES_VERSION (the first
    error kubernetes-validate meets), custom resources against their vendored CRD; a kind with neither fails."""
    custom = custom_resource_schemas().get((obj.get("apiVersion", ""), obj.get("kind", "")))
    if custom:
        return custom_resource_errors(obj, custom)
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path)) or '(root)'}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for kind {obj.get('kind')} ({obj.get('apiVersion')}) in Kubernetes {KUBERNETES_VERSION}"
                " nor in infra/schemas"]  # fmt: skip
    return []


def custom_resource_errors(obj: Obj, crd: CustomResourceSchema) -> list[str]:
    validator = jsonschema.Draft202012Validator(crd.schema)
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(obj)]
    body = {k: v for k, v in obj.items() if k != "metadata"}  # the CRD leaves metadata to the API server: below
    errors += [f"{path}: not a field of {crd.kind} ({crd.source})" for path in undeclared_fields(body, crd.schema)]
    # metadata is an ObjectMeta, checked as the API server checks any object's: as a ConfigMap's here.
    errors += schema_errors({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})})
    target = (obj.get("spec") or {}).get("jobTargetRef")
    if crd.kind == "ScaledJob" and isinstance(target, dict):  # KEDA creates Jobs from it: valid on our clusters?
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "keda"}, "spec": target}
        errors += [f"spec.jobTargetRef as a batch/v1 JobSpec: {e.removeprefix('spec.')}" for e in schema_errors(job)]
    return errors


def undeclared_fields(value: Any, schema: Obj, path: str = "") -> list[str]:
    """Paths of the fields in ``value`` that ``schema`` does not declare (in ``properties``, or as
    ``additionalProperties``), walking both together; x-kubernetes-preserve-unknown-fields stops the walk."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [f for i, item in enumerate(value) for f in undeclared_fields(item, schema["items"], f"{path}[{i}]")]
    if not isinstance(value, dict):
        return []
    declared, others = schema.get("properties", {}), schema.get("additionalProperties", False)
    found = []
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if key in declared:
            found += undeclared_fields(item, declared[key], where)
        elif isinstance(others, dict):
            found += undeclared_fields(item, others, where)
        elif others is not True:
            found.append(where)
    return found


# --- Policy -----------------------------------------------------------------------------------------------------


def workloads(objects: list[Obj]) -> Iterator[tuple[str, Obj, bool]]:
    """(name, pod spec, long-running) for every workload's pod template."""
    for obj in objects:
        path = POD_TEMPLATES.get(obj.get("kind", ""))
        if path:
            template: Any = obj
            for key in path:
                template = (template or {}).get(key)
            yield ident(obj), (template or {}).get("spec") or {}, obj["kind"] in LONG_RUNNING


def containers(pod: Obj, *, init: bool = True) -> list[Obj]:
    return [*(pod.get("initContainers") or [] if init else []), *(pod.get("containers") or [])]


def _drops_all(capabilities: Obj) -> bool:
    return "ALL" in (capabilities.get("drop") or []) and not capabilities.get("add")


# Each rule: what every container needs, then a test of its securityContext and its pod's.
SECURITY_RULES: list[tuple[str, Callable[[Obj, Obj], bool]]] = [
    ("runAsNonRoot true", lambda c, p: c.get("runAsNonRoot", p.get("runAsNonRoot")) is True),
    ("seccompProfile RuntimeDefault",
     lambda c, p: (c.get("seccompProfile") or p.get("seccompProfile") or {}).get("type") == "RuntimeDefault"),
    ("allowPrivilegeEscalation false", lambda c, p: c.get("allowPrivilegeEscalation") is False),
    ("privileged false or unset", lambda c, p: c.get("privileged", False) is False),
    ("readOnlyRootFilesystem true", lambda c, p: c.get("readOnlyRootFilesystem") is True),
    ("capabilities: drop ALL, add none", lambda c, p: _drops_all(c.get("capabilities") or {})),
]  # fmt: skip


def security_problems(objects: list[Obj]) -> list[str]:
    problems = []
    for name, pod, _ in workloads(objects):
        pod_context = pod.get("securityContext") or {}
        for container in containers(pod):
            context = container.get("securityContext") or {}
            problems += [f"{name} container {container.get('name')}: needs {rule}"
                         for rule, holds in SECURITY_RULES if not holds(context, pod_context)]  # fmt: skip
        problems += [f"{name}: {host} is set" for host in ("hostNetwork", "hostPID", "hostIPC") if pod.get(host)]
    return problems


def resource_problems(objects: list[Obj]) -> list[str]:
    """Requests and limits of CPU and memory on every container, probes on long-running ones, a grace period."""
    problems = []
    for name, pod, long_running in workloads(objects):
        if not isinstance(pod.get("terminationGracePeriodSeconds"), int):
            problems.append(f"{name}: no terminationGracePeriodSeconds")
        for container in containers(pod):
            resources = container.get("resources") or {}
            problems += [f"{name} container {container.get('name')}: no {kind}.{resource}"
                         for kind in ("requests", "limits") for resource in ("cpu", "memory")
                         if resource not in (resources.get(kind) or {})]  # fmt: skip
        for container in containers(pod, init=False) if long_running else []:
            problems += [f"{name} container {container.get('name')}: no {probe}"
                         for probe in ("livenessProbe", "readinessProbe") if probe not in container]  # fmt: skip
    return problems


# Names that name a Secret and its key, not secrets: prefect-kubernetes' settings for the auth string it
# writes into Jobs as a secretKeyRef.
NAMES_OF_SECRETS = ("PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME",
                    "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY")  # fmt: skip


def looks_secret(name: str) -> bool:
    return name not in NAMES_OF_SECRETS and any(word in name.upper() for word in SECRET_WORDS)


def from_secret(env: Obj) -> bool:
    return "secretKeyRef" in (env.get("valueFrom") or {})


def secret_problems(objects: list[Obj]) -> list[str]:
    """Variables named like secrets come from a Secret (secretKeyRef, or envFrom a secretRef), never a literal
    ``value`` or a ConfigMap; no ConfigMap holds a key named like a secret (envFrom would pass it on)."""
    problems = []
    for name, pod, _ in workloads(objects):
        for container in containers(pod):
            problems += [
                f"{name} container {container.get('name')}: {env['name']} is not from a secretKeyRef"
                for env in container.get("env") or []
                if looks_secret(env["name"]) and not from_secret(env)
            ]
    for obj in objects:
        if obj.get("kind") == "ConfigMap":
            keys = [*(obj.get("data") or {}), *(obj.get("binaryData") or {})]
            problems += [f"{ident(obj)}: key {key} looks like a secret" for key in keys if looks_secret(key)]
    return problems


def namespaced(obj: Obj) -> bool:
    custom = custom_resource_schemas().get((obj.get("apiVersion", ""), obj.get("kind", "")))
    return custom.scope == "Namespaced" if custom else obj.get("kind") not in CLUSTER_SCOPED


def cluster_rbac(obj: Obj) -> bool:
    """A ClusterRole, a ClusterRoleBinding, or a RoleBinding granting a ClusterRole's rules."""
    kind = obj.get("kind")
    return kind in ("ClusterRole", "ClusterRoleBinding") or (
        kind == "RoleBinding" and (obj.get("roleRef") or {}).get("kind") == "ClusterRole"
    )


def scope_problems(objects: list[Obj]) -> list[str]:
    """Every namespaced object in NAMESPACE; no cluster-wide RBAC (ClusterRole, ClusterRoleBinding, or a
    RoleBinding to a ClusterRole); no Namespace but ours."""
    problems = [
        f"{ident(o)}: not in namespace {NAMESPACE}"
        for o in objects
        if namespaced(o) and (o.get("metadata") or {}).get("namespace") != NAMESPACE
    ]
    problems += [f"{ident(o)}: cluster-scoped RBAC" for o in objects if cluster_rbac(o)]
    problems += [
        f"{ident(o)}: a namespace other than {NAMESPACE}"
        for o in objects
        if o.get("kind") == "Namespace" and o["metadata"].get("name") != NAMESPACE
    ]
    return problems


def is_default_deny(policy: Obj) -> bool:
    """A NetworkPolicy selecting every pod, for ingress and egress, allowing nothing."""
    spec = policy.get("spec") or {}
    return (not any((spec.get("podSelector") or {}).values())
            and {"Ingress", "Egress"} <= set(spec.get("policyTypes") or [])
            and not spec.get("ingress") and not spec.get("egress"))  # fmt: skip


def selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects pods labelled ``labels``."""
    if selector is None:
        return False
    tests: dict[str, Callable[[str, list[str]], bool]] = {
        "In": lambda key, values: labels.get(key) in values,
        "NotIn": lambda key, values: labels.get(key) not in values,
        "Exists": lambda key, _: key in labels,
        "DoesNotExist": lambda key, _: key not in labels,
    }
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()) and all(
        tests[e["operator"]](e["key"], e.get("values") or []) for e in selector.get("matchExpressions") or []
    )


def network_problems(objects: list[Obj]) -> list[str]:
    """A default-deny NetworkPolicy, and a PodDisruptionBudget selecting each Deployment's pods."""
    problems = []
    if not any(o.get("kind") == "NetworkPolicy" and is_default_deny(o) for o in objects):
        problems.append("no default-deny NetworkPolicy (podSelector {}, policyTypes Ingress and Egress, no rules)")
    budgets = [o for o in objects if o.get("kind") == "PodDisruptionBudget"]
    for obj in objects:
        if obj.get("kind") == "Deployment":
            labels = ((obj["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
            namespace = obj["metadata"].get("namespace")
            if not any(b["metadata"].get("namespace") == namespace and selects(b["spec"].get("selector"), labels)
                       for b in budgets):  # fmt: skip
                problems.append(f"{ident(obj)}: no PodDisruptionBudget selects its pods")
    return problems


POLICIES = (security_problems, resource_problems, secret_problems, scope_problems, network_problems)


def problems(objects: list[Obj]) -> list[str]:
    """Every schema error and policy problem of a set of rendered objects."""
    found = [f"{ident(o)}: {e}" for o in objects for e in schema_errors(o)]
    return found + [p for policy in POLICIES for p in policy(objects)]


# --- checkov ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    overlay: str
    check: str
    title: str
    resource: str  # checkov's id: Kind.namespace.name
    suppressed: bool = False  # skipped by a checkov.io/skip annotation in the manifests


@dataclass(frozen=True)
class Accepted:
    check: str
    title: str
    reason: str
    overlays: tuple[str, ...] = ("*",)
    resources: tuple[str, ...] = ("*",)

    def matches(self, finding: Finding) -> bool:
        return (finding.check == self.check and not finding.suppressed
                and any(fnmatch.fnmatchcase(finding.overlay, o) for o in self.overlays)
                and any(fnmatch.fnmatchcase(finding.resource, r) for r in self.resources))  # fmt: skip


def load_accepted(path: Path = ACCEPTED_FILE) -> list[Accepted]:
    entries = (yaml.safe_load(path.read_text()) or {}).get("accepted") or []
    accepted = [Accepted(e["check"], e["title"], e["reason"].strip(), tuple(e.get("overlays", ["*"])),
                         tuple(e.get("resources", ["*"]))) for e in entries]  # fmt: skip
    assert all(a.reason for a in accepted), f"{path}: every accepted finding needs its reason"
    return accepted


def scan_input(objects: list[Obj]) -> list[Obj]:
    """What checkov reads: the objects, and for each ScaledJob the Job KEDA creates from its jobTargetRef (checkov
    does not know KEDA's kinds; named ``<scaledjob>-scaledjob``, so the activators' pods get scanned too)."""
    jobs = [{"apiVersion": "batch/v1", "kind": "Job",
             "metadata": {"name": f"{o['metadata']['name']}-scaledjob", "namespace": o["metadata"].get("namespace")},
             "spec": copy.deepcopy(o["spec"]["jobTargetRef"])}
            for o in objects if o.get("kind") == "ScaledJob" and "jobTargetRef" in (o.get("spec") or {})]  # fmt: skip
    return objects + jobs


def scan(rendered: dict[str, list[Obj]], checkov: Path = CHECKOV) -> list[Finding]:
    """checkov's failed and suppressed checks on each rendered set of objects, in one run (checkov takes seconds
    to start): ``--framework kubernetes``, offline (no platform download, no version check)."""
    with tempfile.TemporaryDirectory(prefix="pp-checkov-") as tmp:
        for name, objects in rendered.items():
            (Path(tmp) / f"{name}.yaml").write_text(yaml.safe_dump_all(scan_input(objects), sort_keys=False))
        env = os.environ | {"CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "ERROR"}
        command = [str(checkov), "--directory", tmp, "--framework", "kubernetes", "--output", "json", "--compact",
                   "--skip-download"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=100, check=False)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"checkov exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    reports = json.loads(done.stdout)
    results = [r.get("results", {}) for r in (reports if isinstance(reports, list) else [reports])]
    return [
        Finding(Path(c["file_path"]).stem, c["check_id"], c["check_name"], c["resource"], kind == "skipped_checks")
        for result in results
        for kind in ("failed_checks", "skipped_checks")
        for c in result.get(kind, [])
    ]


def triage(findings: list[Finding], accepted: list[Accepted]) -> tuple[list[Finding], list[Accepted], list[str]]:
    """(findings no entry accepts, entries that accept no finding, entries whose title is not checkov's)."""
    unaccepted = [f for f in findings if not any(a.matches(f) for a in accepted)]
    stale = [a for a in accepted if not any(a.matches(f) for f in findings)]
    titles = {f.check: f.title for f in findings}
    mislabelled = [f"{a.check}: accepted as {a.title!r}, checkov calls it {titles[a.check]!r}"
                   for a in accepted if titles.get(a.check, a.title) != a.title]  # fmt: skip
    return unaccepted, stale, mislabelled


def describe(finding: Finding) -> str:
    how = "suppressed by an annotation (accept it in infra/scan-accepted.yaml instead)" if finding.suppressed else ""
    return f"{finding.overlay}: {finding.check} {finding.title!r} on {finding.resource} {how}".rstrip()


def main() -> int:
    """`make validate-k8s`: render, validate and scan every overlay; print a summary."""
    if not shutil.which("kubectl"):
        print("validate-k8s: kubectl not found: cannot render infra/overlays")
        return 1
    rendered = {name: render(path) for name, path in overlays().items()}
    findings = scan(rendered)
    unaccepted, stale, mislabelled = triage(findings, load_accepted())
    missing = sorted({"dev", "production"} - set(rendered))
    failed = bool(unaccepted or stale or mislabelled or missing)
    print("".join(f"missing overlay: infra/overlays/{name}\n" for name in missing), end="")
    for name, objects in rendered.items():
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(Counter(o["kind"] for o in objects).items()))
        found = problems(objects)
        failed |= bool(found)
        scanned, refused = ([f for f in among if f.overlay == name] for among in (findings, unaccepted))
        print(
            f"{name}: {len(objects)} objects ({kinds}); {len(found)} schema or policy problems; "
            f"checkov: {len(scanned)} failed checks, {len(refused)} of them not accepted"
        )
        print("".join(f"  {p}\n" for p in found), end="")
    print("".join(f"not accepted: {describe(f)}\n" for f in unaccepted), end="")
    print("".join(f"stale accepted entry: {a.check} {a.title!r}\n" for a in stale), end="")
    print("".join(f"{m}\n" for m in mislabelled), end="")
    print(f"validate-k8s: Kubernetes {KUBERNETES_VERSION} strict, {'FAILED' if failed else 'ok'}")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
