"""deploy/k8s and the Dockerfile: every kustomize overlay renders (`kubectl kustomize`), each
resource is valid for the Kubernetes API (kubernetes-validate, strict), and the pieces hold
together: each container's command line and environment give a configuration the server
accepts (its own CLI and config loader, stopped before anything listens or loads), probes
reach /readyz and /livez on the server's port, the decode pods find the prefill pods through
a headless Service over exactly them, on the port they listen on, with the cluster TLS files
where the Secret is mounted (and the README's certificate carrying the name dialed), every
workload has a disruption budget, the autoscaler targets the API Deployment on a metric the
server exports, and the image runs what the pods expect.

Nothing here loads a model or starts a server."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from inferflux import cli
from inferflux.config import Config
from inferflux.config_load import ENV_PREFIX, config_sections, load_config
from inferflux.metrics import Metrics
from transports import parse_address

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ["unified", "disaggregated", "disaggregated-gpu"]
DISAGGREGATED = [o for o in OVERLAYS if o.startswith("disaggregated")]
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed: cannot render the kustomize overlays"
)
# The oldest Kubernetes the manifests are meant for, and the newest kubernetes-validate knows.
OLDEST_K8S = "1.29"
# Custom resources kubernetes-validate has no schema for: checked by hand below.
HAND_CHECKED = {("monitoring.coreos.com/v1", "ServiceMonitor")}
TLS_SECRET = "inferflux-cluster-tls"
TLS_ENV = {  # env var -> the key of the Secret its file must be
    "INFERFLUX_CLUSTER_CA_FILE": "ca.crt",
    "INFERFLUX_CLUSTER_CERT_FILE": "tls.crt",
    "INFERFLUX_CLUSTER_KEY_FILE": "tls.key",
}
# INFERFLUX_* variables that are not config fields but are read by the server.
OTHER_ENV = {"INFERFLUX_ROLE", "INFERFLUX_HOME", "INFERFLUX_POLICY_KEY"}
WORKLOAD_KINDS = ("Deployment", "StatefulSet")


# -- rendering and looking things up ---------------------------------------------------------


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    done = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"kubectl kustomize {overlay}: {done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name!r}"
    return found[0]


def workloads(docs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] in WORKLOAD_KINDS]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def server_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container, the server"
    return containers[0]


def match_labels(selector: dict[str, Any], where: str) -> dict[str, str]:
    assert "matchExpressions" not in selector, f"{where}: only matchLabels is checked here"
    labels = selector.get("matchLabels", selector)
    assert labels, f"{where}: an empty selector selects everything"
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def selected(docs: tuple[dict[str, Any], ...], selector: dict[str, str]) -> list[dict[str, Any]]:
    """The workloads whose pods carry every label of `selector`."""
    return [w for w in workloads(docs) if selects(selector, pod_labels(w))]


def container_port(container: dict[str, Any], port: int | str) -> int:
    """The number of a container port given by name or number; fails if none is declared."""
    for declared in container.get("ports", []):
        if port in (declared.get("name"), declared["containerPort"]):
            return declared["containerPort"]
    names = [(p.get("name"), p["containerPort"]) for p in container.get("ports", [])]
    raise AssertionError(f"container {container['name']} declares no port {port!r}: {names}")


def flag_values(args: list[str], flag: str) -> list[str]:
    values = []
    for i, word in enumerate(args):
        if word == flag:
            values.append(args[i + 1])
        elif word.startswith(flag + "="):
            values.append(word.split("=", 1)[1])
    return values


def quantity(text: str | int) -> float:
    """A Kubernetes quantity (cpu or memory) as a number."""
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text))
    assert match and match.group(2) in suffixes | {"": 1}, f"quantity {text!r}"
    return float(match.group(1)) * (suffixes.get(match.group(2)) or 1)


# -- the server's view of a container ---------------------------------------------------------


class _Parsed(Exception):
    pass


@functools.cache
def server_config(overlay: str, kind: str, name: str) -> Config:
    """The configuration `inferflux` builds from this workload's args and env, through its
    own CLI and config loader, stopped where it would bind its port. Secret volumes are
    emulated (their files created, env paths under their mount mapped there), so the
    config's own check that the cluster TLS files exist runs as in the pod."""
    workload = named(render(overlay), kind, name)
    container = server_container(workload)
    assert "command" not in container, "the image's ENTRYPOINT (inferflux) runs the args"
    args = container["args"]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    unknown = {n for n in env if n.startswith(ENV_PREFIX)} - known_env()
    assert not unknown, f"{name}: env vars the server does not read: {sorted(unknown)}"
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    with tempfile.TemporaryDirectory() as root, pytest.MonkeyPatch.context() as patch:
        for mount in container.get("volumeMounts", []):
            secret = volumes[mount["name"]].get("secret")
            if secret is None:
                continue
            files = [item["path"] for item in secret.get("items", [])] or list(TLS_ENV.values())
            for path in files:
                target = Path(root + mount["mountPath"]) / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("emulated secret file\n")
            prefix = mount["mountPath"].rstrip("/") + "/"
            env = {k: root + v if v.startswith(prefix) else v for k, v in env.items()}
        result: dict[str, Config] = {}

        def load(path: str | None = None, overrides: dict | None = None) -> Config:
            result["config"] = load_config(path, env=env, overrides=overrides)
            return result["config"]

        def stop(host: str, port: int) -> None:
            raise _Parsed

        patch.setattr(cli, "load_config", load)
        patch.setattr(cli, "_check_port_free", stop)
        try:
            cli.main(list(args))
        except _Parsed:
            return result["config"]
        except SystemExit as exc:
            pytest.fail(f"{name}: `inferflux {' '.join(args)}` exits {exc.code} (stderr above)")
    raise AssertionError("unreachable")


@functools.cache
def known_env() -> set[str]:
    fields = {
        f"{ENV_PREFIX}{section.upper()}_{field.upper()}"
        for section, names in config_sections().items()
        for field in names
    }
    return fields | OTHER_ENV


def config_of(overlay: str, workload: dict[str, Any]) -> Config:
    return server_config(overlay, workload["kind"], workload["metadata"]["name"])


def api_and_prefill(overlay: str) -> tuple[dict[str, Any], dict[str, Any]]:
    docs = render(overlay)
    roles = {config_of(overlay, w).role: w for w in workloads(docs)}
    assert set(roles) == {"decode", "prefill"}, f"roles in {overlay}: {sorted(roles)}"
    return roles["decode"], roles["prefill"]


# -- the tests ------------------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_resource_is_valid_for_kubernetes(overlay: str) -> None:
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate: pip install -e '.[test]'"
    )
    docs = render(overlay)
    assert workloads(docs), f"{overlay} renders no workload"
    seen = set()
    for doc in docs:
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"{key} twice"
        seen.add(key)
        for version in (OLDEST_K8S, kv.latest_version()):
            try:
                kv.validate(doc, version, strict=True)
            except kv.SchemaNotFoundError:
                assert (doc["apiVersion"], doc["kind"]) in HAND_CHECKED, f"no schema: {key}"
            except kv.ValidationError as exc:
                pytest.fail(f"{overlay}: {key} is invalid for Kubernetes {version}: {exc}")


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_selector_picks_the_pods_of_one_workload(overlay: str) -> None:
    """Workloads select their own pods, and every Service and PodDisruptionBudget the pods of
    exactly one workload: the API Service never sends requests to prefill pods (which serve
    no OpenAI API). Service ports lead to ports the containers declare."""
    docs = render(overlay)
    for workload in workloads(docs):
        name = workload["metadata"]["name"]
        selector = match_labels(workload["spec"]["selector"], name)
        assert selected(docs, selector) == [workload], f"{name}'s selector"
    for doc in of_kind(docs, "Service") + of_kind(docs, "PodDisruptionBudget"):
        where = f"{doc['kind']} {doc['metadata']['name']}"
        targets = selected(docs, match_labels(doc["spec"]["selector"], where))
        assert len(targets) == 1, f"{where} selects {[t['metadata']['name'] for t in targets]}"
        if doc["kind"] == "Service":
            for port in doc["spec"]["ports"]:
                container_port(server_container(targets[0]), port.get("targetPort", port["port"]))


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_reach_readyz_and_livez_on_the_server_port(overlay: str) -> None:
    for workload in workloads(render(overlay)):
        config = config_of(overlay, workload)
        container = server_container(workload)
        name = workload["metadata"]["name"]
        assert config.server.host == "0.0.0.0", f"{name} must listen beyond the pod's loopback"
        paths = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
        for probe_name, path in paths.items():
            probe = container.get(probe_name)
            assert probe, f"{name} has no {probe_name}"
            assert probe["httpGet"]["path"] == path, f"{name} {probe_name}"
            port = container_port(container, probe["httpGet"]["port"])
            assert port == config.server.port, f"{name} {probe_name} is not on the HTTP port"
        startup = container["startupProbe"]
        budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        # A model load the server allows, plus fetching the default model on a first start,
        # must not be cut short by the kubelet.
        assert budget >= config.server.model_load_timeout_s + 120, f"{name}: startup {budget}s"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_drain(overlay: str) -> None:
    for workload in workloads(render(overlay)):
        name = workload["metadata"]["name"]
        config = config_of(overlay, workload)
        pre_stop = server_container(workload)["lifecycle"]["preStop"]
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep", f"{name}: preStop {command}"
        pause = float(command[1])
        assert pause >= 1, f"{name}: the endpoint removal needs a moment to reach the proxies"
        grace = pod_spec(workload)["terminationGracePeriodSeconds"]
        needed = pause + config.server.drain_timeout_s + 5
        assert grace >= needed, f"{name}: {grace}s grace, the drain needs {needed}s"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_roles(overlay: str) -> None:
    docs = render(overlay)
    roles = sorted(config_of(overlay, w).role for w in workloads(docs))
    if overlay in DISAGGREGATED:
        assert roles == ["decode", "prefill"]
        decode, prefill = api_and_prefill(overlay)
        assert decode["kind"] == "Deployment" and prefill["kind"] == "StatefulSet"
        assert named(docs, "Service", "inferflux")  # the API keeps its name
    else:
        assert roles == ["unified"]


@needs_kubectl
@pytest.mark.parametrize("overlay", DISAGGREGATED)
def test_decode_finds_the_prefill_pods_through_a_headless_service(overlay: str) -> None:
    """A host name in --prefill is every address it resolves to (serving/cluster.py): each
    entry must name a headless Service whose ready endpoints are exactly the prefill pods,
    dialed with TLS on the port they listen on (a headless Service maps no ports: the
    decode node connects to each pod's address on the port written in --prefill)."""
    docs = render(overlay)
    decode, prefill = api_and_prefill(overlay)
    listen = parse_address(config_of(overlay, prefill).cluster.listen)
    assert (listen.scheme, listen.host) == ("tls+tcp", "0.0.0.0")
    assert container_port(server_container(prefill), "cluster") == listen.port
    doors = config_of(overlay, decode).cluster.prefill
    assert doors, "decode pods with no --prefill"
    for door in doors:
        dialed = parse_address(door)
        assert dialed.scheme == "tls+tcp", f"{door}: nodes talk over mutual TLS"
        assert dialed.port == listen.port, f"{door}: the prefill pods listen on {listen.port}"
        service = named(docs, "Service", prefill_service_name(dialed.host))
        spec = service["spec"]
        assert spec.get("clusterIP") == "None", f"{door}: not headless, one peer for all pods"
        assert not spec.get("publishNotReadyAddresses"), f"{door}: pods resolve before ready"
        selector = match_labels(spec["selector"], service["metadata"]["name"])
        assert selected(docs, selector) == [prefill], f"{door} resolves to other pods"
        ports = [p for p in spec["ports"] if p["port"] == listen.port]
        assert ports, f"{service['metadata']['name']} has no port {listen.port}"
        assert ports[0].get("protocol", "TCP") == "TCP"
        target = ports[0].get("targetPort", ports[0]["port"])
        assert container_port(server_container(prefill), target) == listen.port
    # The prefill pods come and go with `replicas` alone: their budget must not depend on
    # the count, and the autoscaler stays on the API pods (its metric is theirs).
    (budget,) = [
        b
        for b in of_kind(docs, "PodDisruptionBudget")
        if selects(match_labels(b["spec"]["selector"], "pdb"), pod_labels(prefill))
    ]
    assert "maxUnavailable" in budget["spec"], "a minAvailable is tied to a replica count"
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) == (decode["kind"], decode["metadata"]["name"])


def prefill_service_name(host: str) -> str:
    """The Service a --prefill host names: `svc`, `svc.NAMESPACE.svc` or
    `svc.NAMESPACE.svc.cluster.local` (a pod's own name would be one peer, not all)."""
    match = re.fullmatch(r"([a-z0-9-]+)(\.[a-z0-9-]+\.svc(\.cluster\.local)?)?", host)
    assert match, f"--prefill host {host!r} is not a Service name"
    return match.group(1)


@needs_kubectl
@pytest.mark.parametrize("overlay", DISAGGREGATED)
def test_the_certificate_instructions_name_what_decode_dials(overlay: str) -> None:
    """The decode node checks the prefill certificate against the host in --prefill, not
    the pod address: the README's openssl and cert-manager lines must give that name."""
    decode, _ = api_and_prefill(overlay)
    hosts = {parse_address(d).host for d in config_of(overlay, decode).cluster.prefill}
    readme = (K8S / "README.md").read_text()
    (san,) = re.findall(r"subjectAltName=([^'\s]+)", readme)
    sans = {entry.removeprefix("DNS:") for entry in san.split(",") if entry.startswith("DNS:")}
    (dns_names,) = re.findall(r"dnsNames: \[([^\]]*)\]", readme)
    names = {n.strip() for n in dns_names.split(",")}
    for host in hosts:
        assert host in sans, f"the openssl SAN ({san}) lacks {host}"
        assert host in names, f"the cert-manager dnsNames ({dns_names}) lack {host}"


@needs_kubectl
@pytest.mark.parametrize("overlay", DISAGGREGATED)
def test_prefill_and_decode_serve_the_same_model_and_slot_layout(overlay: str) -> None:
    """A KV state fits only a worker with the same model and cells per slot."""
    decode, prefill = api_and_prefill(overlay)
    for workload in (decode, prefill):
        args = server_container(workload)["args"]
        assert flag_values(args, "--ctx-size"), f"{workload['metadata']['name']}: --ctx-size"
    a, b = config_of(overlay, decode).model, config_of(overlay, prefill).model
    assert a.ctx_size == b.ctx_size, f"--ctx-size {a.ctx_size} (decode) != {b.ctx_size}"
    assert (a.path, a.serve, a.name) == (b.path, b.serve, b.name), "not the same model"
    images = {server_container(w)["image"] for w in (decode, prefill)}
    assert len(images) == 1, f"one build on both sides: {images}"


@needs_kubectl
@pytest.mark.parametrize("overlay", DISAGGREGATED)
def test_cluster_tls_secret_is_mounted_where_the_env_points(overlay: str) -> None:
    assert not of_kind(render(overlay), "Secret"), "key material is never in the manifests"
    for workload in api_and_prefill(overlay):
        name = workload["metadata"]["name"]
        container = server_container(workload)
        env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
        volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
        for variable, key in TLS_ENV.items():
            path = env.get(variable)
            assert path, f"{name}: no {variable}"
            mounts = [
                m
                for m in container.get("volumeMounts", [])
                if path.startswith(m["mountPath"].rstrip("/") + "/")
            ]
            assert len(mounts) == 1, f"{name}: {variable}={path} is under no one mount"
            mount = mounts[0]
            assert mount.get("readOnly") is True, f"{name}: {mount['mountPath']} writable"
            secret = volumes[mount["name"]].get("secret")
            assert secret and secret["secretName"] == TLS_SECRET, f"{name}: {mount['name']}"
            assert secret.get("defaultMode", 0o644) & 0o007 == 0, "key readable by all"
            relative = path[len(mount["mountPath"].rstrip("/")) + 1 :]
            items = {i["path"]: i["key"] for i in secret.get("items", [])} or {key: key}
            assert items.get(relative) == key, f"{name}: {path} is not the Secret's {key}"
        cluster = config_of(overlay, workload).cluster
        assert cluster.ca_file and cluster.cert_file and cluster.key_file
        assert not cluster.insecure


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_has_a_disruption_budget_that_allows_a_drain(overlay: str) -> None:
    docs = render(overlay)
    budgets = of_kind(docs, "PodDisruptionBudget")
    for workload in workloads(docs):
        name = workload["metadata"]["name"]
        mine = [
            b
            for b in budgets
            if selects(match_labels(b["spec"]["selector"], name), pod_labels(workload))
        ]
        assert len(mine) == 1, f"{name} is covered by {len(mine)} PodDisruptionBudgets"
        spec = mine[0]["spec"]
        if "maxUnavailable" in spec:
            assert spec["maxUnavailable"] not in (0, "0%"), f"{name}: no node could be drained"
        else:
            replicas = workload["spec"].get("replicas") or min_replicas(docs, workload)
            assert spec["minAvailable"] < replicas, f"{name}: no node could be drained"


def min_replicas(docs: tuple[dict[str, Any], ...], workload: dict[str, Any]) -> int:
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]:
            return hpa["spec"].get("minReplicas", 1)
    return 1


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaler_targets_the_api_deployment_on_a_metric_the_server_exports(
    overlay: str,
) -> None:
    docs = render(overlay)
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    assert hpas, f"{overlay} has no HorizontalPodAutoscaler"
    exported = {metric.name for metric in Metrics("m").registry.collect()}
    for hpa in hpas:
        assert hpa["apiVersion"] == "autoscaling/v2"
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment")
        target = named(docs, "Deployment", ref["name"])
        assert config_of(overlay, target).role in ("unified", "decode")
        assert "replicas" not in target["spec"], "kubectl apply would undo the autoscaler"
        assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        metrics = hpa["spec"]["metrics"]
        assert [m["type"] for m in metrics] == ["Pods"]
        name = metrics[0]["pods"]["metric"]["name"]
        # The adapter serves Prometheus' `inferflux:NAME` as `inferflux_NAME`.
        assert name.startswith("inferflux_"), name
        assert name.replace("_", ":", 1) == "inferflux:num_requests_waiting"
        assert "inferflux:num_requests_waiting" in exported


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitors_scrape_metrics_of_every_workload(overlay: str) -> None:
    docs = render(overlay)
    services = of_kind(docs, "Service")
    scraped = []
    for monitor in of_kind(docs, "ServiceMonitor"):
        name = monitor["metadata"]["name"]
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selector = match_labels(monitor["spec"]["selector"], name)
        mine = [s for s in services if selects(selector, s["metadata"].get("labels", {}))]
        assert len(mine) == 1, f"ServiceMonitor {name} selects {len(mine)} Services"
        service = mine[0]
        (workload,) = selected(docs, service["spec"]["selector"])
        container = server_container(workload)
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint.get("path") == "/metrics", f"{name}: {endpoint}"
            port = [p for p in service["spec"]["ports"] if p.get("name") == endpoint["port"]]
            assert port, f"{name}: Service {service['metadata']['name']} has no {endpoint}"
            number = container_port(container, port[0].get("targetPort", port[0]["port"]))
            assert number == config_of(overlay, workload).server.port, "not the HTTP port"
        scraped.append(workload["metadata"]["name"])
    assert sorted(scraped) == sorted(w["metadata"]["name"] for w in workloads(docs))


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_and_threads(overlay: str) -> None:
    for workload in workloads(render(overlay)):
        name = workload["metadata"]["name"]
        resources = server_container(workload)["resources"]
        for kind in ("cpu", "memory"):
            request = quantity(resources["requests"][kind])
            limit = quantity(resources["limits"][kind])
            assert 0 < request <= limit, f"{name}: {kind} request {request} > limit {limit}"
        threads = config_of(overlay, workload).model.threads
        # 0 would be every core of the node, not of the pod's CPU limit.
        assert 1 <= threads <= quantity(resources["limits"]["cpu"]), f"{name}: {threads}"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_variant(overlay: str) -> None:
    gpu = overlay.endswith("-gpu")
    for workload in workloads(render(overlay)):
        name = workload["metadata"]["name"]
        container = server_container(workload)
        resources = container["resources"]
        layers = config_of(overlay, workload).model.gpu_layers
        tag = container["image"].rpartition(":")[2]
        if gpu:
            assert resources["limits"].get("nvidia.com/gpu") in (1, "1"), name
            assert layers >= 999, f"{name}: --gpu-layers {layers}, not all layers"
            assert "cuda" in tag, f"{name}: {container['image']} is not a CUDA build"
        else:
            assert "nvidia.com/gpu" not in resources.get("limits", {}), name
            assert "cuda" not in tag, name


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_the_image_user_and_ports(overlay: str) -> None:
    image = dockerfile()
    for workload in workloads(render(overlay)):
        name = workload["metadata"]["name"]
        security = pod_spec(workload)["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert str(security["runAsUser"]) == image["USER"][0].split(":")[0], name
        container = server_container(workload)
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        exposed = {int(p) for p in image["EXPOSE"][0].split()}
        declared = {p["containerPort"] for p in container["ports"]}
        assert declared <= exposed, f"{name}: {declared - exposed} not EXPOSEd"


def dockerfile() -> dict[str, list[str]]:
    """{instruction: [arguments, ...]} of the Dockerfile's last stage (ARGs of all)."""
    text = (REPO / "Dockerfile").read_text()
    lines = re.sub(r"\\\n", " ", text).splitlines()
    stages: list[dict[str, list[str]]] = [{}]
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append({})
        stages[-1].setdefault(instruction, []).append(rest.strip())
    last = dict(stages[-1])
    last["ARG"] = [a for stage in stages for a in stage.get("ARG", [])]
    last["BUILD_RUN"] = [r for stage in stages[1:-1] for r in stage.get("RUN", [])]
    last["BUILD_COPY"] = [c for stage in stages[1:-1] for c in stage.get("COPY", [])]
    last["CONTEXT_COPY"] = [
        c for stage in stages for c in stage.get("COPY", []) if not c.startswith("--from")
    ]
    return last


def test_dockerfile() -> None:
    image = dockerfile()
    assert "PYTHON_IMAGE=python:3.11-slim" in image["ARG"]
    build = " ".join(image["BUILD_RUN"])
    assert "build-essential" in build and "cmake" in build, "llama-cpp-python compiles"
    assert re.search(r"pip install \.(\s|$)", build), "the repository is pip-installed"
    user = image["USER"][-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {user}: numeric, not root"
    assert {"8000", "7400"} <= set(image["EXPOSE"][0].split())
    assert image["ENTRYPOINT"] == ['["inferflux"]']
    assert image["CMD"] == ['["run", "--host", "0.0.0.0"]']
    # Every package the wheel is made of is copied into the build stage.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {c.split()[0] for c in image["BUILD_COPY"]}
    for package in packages:
        assert package.rstrip("*") in copied, f"{package} is not copied into the image"
    assert "README.md" in " ".join(image["BUILD_COPY"]), "pyproject.toml's readme"
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "**/__pycache__"):
        assert entry in ignored, f".dockerignore lacks {entry}"
    sources = {word for c in image["CONTEXT_COPY"] for word in c.split()[:-1]}
    assert {"pyproject.toml", "README.md", "config/inferflux.toml"} <= sources
    for source in sources:
        assert source not in ignored and (REPO / source).exists(), source
