"""Every kustomization builds, every object validates offline, and the pieces agree with each other.

Kubernetes objects: strict JSON schemas (unknown fields rejected) of Kubernetes 1.30 and 1.37 from
kubernetes-validate. Prometheus Operator objects: the operator's CRD models (cloudcoil), round-tripped
so that a misspelt field, which a model would silently drop, fails too. KServe publishes no offline
schema: the Kubernetes types its objects embed (containers, volumes, tolerations) are validated as
the pod KServe makes of them, and the KServe fields are checked against the Deployment's conventions.
"""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator

from serving.server import LIVENESS_SERVICE
from tests.deploy.deploy_support import K8S, OVERLAYS, find_object

KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
OPERATOR_GROUP = "monitoring.coreos.com/v1"
KSERVE_GROUPS = ("serving.kserve.io/v1alpha1", "serving.kserve.io/v1beta1")
SERVER_GRACE_SECONDS = 30
PRE_STOP_SECONDS = 5


KSERVE_MODEL_FIELDS = ("modelFormat", "runtime", "storageUri", "protocolVersion")
"""Fields a KServe model spec adds to the Kubernetes Container it embeds."""


def kserve_pod(obj: dict) -> dict:
    """The Kubernetes Pod parts of a KServe object, as a Pod a strict schema can check."""
    if obj["kind"] == "ServingRuntime":
        spec = {key: obj["spec"][key] for key in ("containers", "volumes", "nodeSelector", "tolerations")
                if key in obj["spec"]}
    else:
        predictor = obj["spec"]["predictor"]
        model = {key: value for key, value in predictor["model"].items() if key not in KSERVE_MODEL_FIELDS}
        spec = {"containers": [{"name": "kserve-container", "image": "runtime", **model}],
                **{key: predictor[key] for key in ("nodeSelector", "tolerations", "terminationGracePeriodSeconds")
                   if key in predictor}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": obj["metadata"]["name"]}, "spec": spec}


def validate_object(obj: dict) -> None:
    """Raise if `obj` does not match its schema."""
    if obj["apiVersion"] == OPERATOR_GROUP:
        model = getattr(prometheus_operator, obj["kind"]).model_validate(obj)
        assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == obj, (
            f"{obj['kind']}/{obj['metadata']['name']} has fields the Prometheus Operator CRD does not know")
        return
    kubernetes_object = kserve_pod(obj) if obj["apiVersion"] in KSERVE_GROUPS else obj
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(kubernetes_object, version, strict=True)


def test_every_kustomization_is_listed() -> None:
    found = {str(path.parent.relative_to(K8S)) for path in K8S.rglob("kustomization.yaml")}
    assert found == set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_objects_validate(rendered: dict[str, list[dict]], overlay: str) -> None:
    assert rendered[overlay], f"k8s/{overlay} rendered nothing"
    for obj in rendered[overlay]:
        validate_object(obj)


def test_standalone_manifests_validate() -> None:
    """Files outside any kustomization's resources (alternatives a user picks) validate too."""
    standalone = [K8S / "monitoring" / "podmonitor.yaml"]
    for path in standalone:
        validate_object(yaml.safe_load(path.read_text()))


def test_validators_reject_a_broken_object(rendered: dict[str, list[dict]]) -> None:
    """The validators are not vacuous: a misspelt field fails in both kinds of schema."""
    deployment = find_object(rendered["overlays/gpu"], "Deployment", "ninefold")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(broken)
    monitor = find_object(rendered["monitoring"], "ServiceMonitor", "ninefold")
    with pytest.raises(AssertionError, match="does not know"):
        validate_object({**monitor, "spec": {**monitor["spec"], "endpoint": []}})
    runtime = find_object(rendered["kserve"], "ServingRuntime", "ninefold")
    (container,) = runtime["spec"]["containers"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object({**runtime, "spec": {**runtime["spec"], "containers": [{**container, "port": 8001}]}})


def server_pod_spec(objects: list[dict]) -> dict:
    return find_object(objects, "Deployment", "ninefold")["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", ["overlays/gpu", "overlays/cpu"])
def test_server_pod_is_locked_down_and_probed(rendered: dict[str, list[dict]], overlay: str) -> None:
    pod = server_pod_spec(rendered[overlay])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod.get("initContainers", []):
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert set(container["resources"]) == {"requests", "limits"}
    (server,) = pod["containers"]
    # Ready: every model serves (health ""); alive: the process answers (a restart mends no model).
    assert server["readinessProbe"]["grpc"] == {"port": 8001, "service": ""}
    for probe in ("startupProbe", "livenessProbe"):
        assert server[probe]["grpc"] == {"port": 8001, "service": LIVENESS_SERVICE}
    liveness = server["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > SERVER_GRACE_SECONDS
    assert server["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRE_STOP_SECONDS)]
    assert pod["terminationGracePeriodSeconds"] > PRE_STOP_SECONDS + SERVER_GRACE_SECONDS


@pytest.mark.parametrize("overlay", ["overlays/gpu", "overlays/cpu"])
def test_config_map_carries_the_server_environment(rendered: dict[str, list[dict]], overlay: str) -> None:
    (config,) = [obj for obj in rendered[overlay]
                 if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith("ninefold-config-")]
    assert all(key.startswith("NINEFOLD_") for key in config["data"])
    assert config["data"]["NINEFOLD_GRACE_SECONDS"] == str(SERVER_GRACE_SECONDS)
    assert config["data"]["NINEFOLD_PORT"] == "8001"
    assert config["data"]["NINEFOLD_METRICS_PORT"] == "8002"
    server = server_pod_spec(rendered[overlay])["containers"][0]
    assert server["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]


def test_gpu_overlay_places_one_model_copy_per_gpu(rendered: dict[str, list[dict]]) -> None:
    objects = rendered["overlays/gpu"]
    pod = server_pod_spec(objects)
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["containers"][0]["image"].endswith(":0.1.0-gpu")
    (init,) = pod["initContainers"]
    assert init["resources"]["limits"]["nvidia.com/gpu"] == "1"
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["engine-cache"]["persistentVolumeClaim"]["claimName"] == "ninefold-engine-cache"
    find_object(objects, "PersistentVolumeClaim", "ninefold-engine-cache")
    # The server reads the view the init container laid out; every mount the view links into is there.
    (config,) = [obj for obj in objects if obj["kind"] == "ConfigMap" and "NINEFOLD_PORT" in obj.get("data", {})]
    assert config["data"]["NINEFOLD_MODEL_REPOSITORY"] == "/work/repository"
    init_mounts = {mount["mountPath"] for mount in init["volumeMounts"]}
    server_mounts = {mount["mountPath"]: mount for mount in pod["containers"][0]["volumeMounts"]}
    assert {"/models", "/engine-cache", "/work"} <= init_mounts & set(server_mounts)
    assert not server_mounts["/engine-cache"].get("readOnly"), "the TensorRT EP writes its engines there"
    assert f"--view={config['data']['NINEFOLD_MODEL_REPOSITORY']}" in init["command"]
    assert f"--ep-cache-link={config['data']['NINEFOLD_TENSORRT_CACHE_DIR']}" in init["command"]


def test_cpu_overlay_has_no_gpu(rendered: dict[str, list[dict]]) -> None:
    text = yaml.safe_dump_all(rendered["overlays/cpu"])
    assert "nvidia.com/gpu" not in text
    assert server_pod_spec(rendered["overlays/cpu"])["containers"][0]["image"].endswith(":0.1.0-cpu")


def adapter_metric_names() -> set[str]:
    values = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    return {rule["name"]["as"] for rule in values["rules"]["custom"]}


@pytest.mark.parametrize("overlay", ["overlays/gpu", "overlays/cpu"])
def test_hpa_metrics_are_served_by_the_adapter(rendered: dict[str, list[dict]], overlay: str) -> None:
    hpa = find_object(rendered[overlay], "HorizontalPodAutoscaler", "ninefold")
    pods_metrics = {metric["pods"]["metric"]["name"] for metric in hpa["spec"]["metrics"] if metric["type"] == "Pods"}
    assert "ninefold_pending_requests" in pods_metrics
    assert pods_metrics <= adapter_metric_names()
    assert len(hpa["spec"]["metrics"]) >= 2, "a fallback metric beside the queue"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "ninefold"


def test_services_monitors_and_policy_agree_with_the_pods(rendered: dict[str, list[dict]]) -> None:
    objects = rendered["overlays/gpu"]
    labels = find_object(objects, "Deployment", "ninefold")["spec"]["template"]["metadata"]["labels"]
    headless = find_object(objects, "Service", "ninefold")
    assert headless["spec"]["clusterIP"] == "None"
    for service in (headless, find_object(objects, "Service", "ninefold-lb")):
        assert service["spec"]["selector"].items() <= labels.items()
    monitor = find_object(objects, "ServiceMonitor", "ninefold")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= headless["metadata"]["labels"].items()
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= {
        port["name"] for port in headless["spec"]["ports"]}
    policy = find_object(objects, "NetworkPolicy", "ninefold")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    allowed_ports = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    assert allowed_ports == {8000, 8001, 8002}
    budget = find_object(objects, "PodDisruptionBudget", "ninefold")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_dashboard_config_map_carries_the_dashboard(rendered: dict[str, list[dict]]) -> None:
    config = find_object(rendered["monitoring"], "ConfigMap", "ninefold-grafana-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config["data"]["ninefold-dashboard.json"] == (K8S / "monitoring" / "grafana-dashboard.json").read_text()


def test_kserve_runtime_runs_the_server_like_the_deployment(rendered: dict[str, list[dict]]) -> None:
    objects = rendered["kserve"]
    runtime = find_object(objects, "ServingRuntime", "ninefold")
    service = find_object(objects, "InferenceService", "ninefold")
    (container,) = runtime["spec"]["containers"]
    assert runtime["spec"]["protocolVersions"] == ["grpc-v2"]
    assert container["args"] == ["--model-repository=/mnt/models"]  # KServe mounts storageUri there
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    assert env["NINEFOLD_PORT"] == "8001"
    assert container["ports"] == [{"name": "h2c", "containerPort": 8001, "protocol": "TCP"}]
    assert container["readinessProbe"]["grpc"]["port"] == 8001
    assert runtime["metadata"]["annotations"]["prometheus.kserve.io/port"] == env["NINEFOLD_METRICS_PORT"]
    assert container["securityContext"]["runAsNonRoot"] is True
    writable = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert any(env["NINEFOLD_TENSORRT_CACHE_DIR"].startswith(path) for path in writable), "/mnt/models is read-only"
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == "ninefold"
    assert model["protocolVersion"] == "grpc-v2"
    assert model["modelFormat"]["name"] in {fmt["name"] for fmt in runtime["spec"]["supportedModelFormats"]}
    assert model["ports"] == container["ports"]
    assert model["storageUri"].startswith("pvc://ninefold-models/")


def kserve_predictor_pod_labels(service: dict) -> dict[str, str]:
    """The labels of an InferenceService's predictor pods in RawDeployment mode: its own plus KServe's."""
    name = service["metadata"]["name"]
    return {**service["metadata"].get("labels", {}), "serving.kserve.io/inferenceservice": name,
            "component": "predictor", "app": f"isvc.{name}-predictor"}


def test_kserve_pods_drain_before_they_are_killed(rendered: dict[str, list[dict]]) -> None:
    runtime = find_object(rendered["kserve"], "ServingRuntime", "ninefold")
    service = find_object(rendered["kserve"], "InferenceService", "ninefold")
    (container,) = runtime["spec"]["containers"]
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    assert float(env["NINEFOLD_GRACE_SECONDS"]) == SERVER_GRACE_SECONDS
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRE_STOP_SECONDS)]
    assert service["spec"]["predictor"]["terminationGracePeriodSeconds"] > PRE_STOP_SECONDS + SERVER_GRACE_SECONDS


def test_kserve_pods_are_scraped_as_job_ninefold_and_left_to_kserve(rendered: dict[str, list[dict]]) -> None:
    """A PodMonitor in the kserve kustomization selects the predictor pods and scrapes the metrics port
    under job "ninefold" (what the alerts and dashboard query); the Deployment's selectors do not
    take those pods (a PDB or Service of the overlays applied beside it would otherwise)."""
    objects = rendered["kserve"]
    runtime = find_object(objects, "ServingRuntime", "ninefold")
    service = find_object(objects, "InferenceService", "ninefold")
    pod_labels = kserve_predictor_pod_labels(service)
    env = {variable["name"]: variable["value"] for variable in runtime["spec"]["containers"][0]["env"]}
    monitors = [obj for obj in objects if obj["kind"] == "PodMonitor"
                and obj["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()]
    assert monitors, "no PodMonitor selects the KServe predictor pods"
    for monitor in monitors:
        assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
        assert pod_labels.get(monitor["spec"]["jobLabel"]) == "ninefold"
        assert [endpoint["portNumber"] for endpoint in monitor["spec"]["podMetricsEndpoints"]] == [
            int(env["NINEFOLD_METRICS_PORT"])]
    assert find_object(objects, "PrometheusRule", "ninefold")
    deployment_objects = rendered["overlays/gpu"]
    selectors = [find_object(deployment_objects, "Deployment", "ninefold")["spec"]["selector"]["matchLabels"],
                 find_object(deployment_objects, "PodDisruptionBudget", "ninefold")["spec"]["selector"]["matchLabels"],
                 find_object(deployment_objects, "Service", "ninefold")["spec"]["selector"]]
    for selector in selectors:
        assert not selector.items() <= pod_labels.items(), selector


def test_every_yaml_under_k8s_is_used() -> None:
    """No stray manifest: each YAML file is a kustomization, in one's resources/patches, or a named alternative."""
    referenced: set[Path] = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        referenced.add(kustomization)
        for entry in spec.get("resources", []) + [patch["path"] for patch in spec.get("patches", [])]:
            referenced.add((kustomization.parent / entry).resolve())
    alternatives = {K8S / "monitoring" / "podmonitor.yaml", K8S / "monitoring" / "prometheus-adapter-values.yaml"}
    for path in K8S.rglob("*.yaml"):
        assert path.resolve() in referenced or path in alternatives, f"{path} is not used by any kustomization"
