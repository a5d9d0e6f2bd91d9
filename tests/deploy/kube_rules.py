"""Our rules for the rendered Kubernetes objects, beyond what the schemas say. Each check takes every object
of one overlay and returns what breaks the rule, one line each: empty means the rule holds.

The model services, the gateway and Redis are named by the `app.kubernetes.io/name` label.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

Manifest = dict[str, Any]
Check = Callable[[list[Manifest]], list[str]]

GATEWAY = "gateway"
MODEL_SERVICES = ("tabular-service", "vision-service", "nlp-service")
REDIS = "redis"
HTTP_PORT = 8000
REDIS_PORT = 6379
# compose.yaml's start_period for the model services: what a cold node may need to load the models.
MODEL_STARTUP_BUDGET_SECONDS = 180
# What Kubernetes itself defines: the schemas check these, nothing can check a custom resource here.
BUILT_IN_KINDS = {
    "Namespace", "ServiceAccount", "ConfigMap", "Service", "Deployment", "StatefulSet", "Job",
    "PersistentVolumeClaim", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Ingress",
}  # fmt: skip
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_?KEY|CREDENTIAL|REDIS_URL", re.IGNORECASE)
WORKLOADS = ("Deployment", "StatefulSet", "Job")


def app_name(manifest: Manifest) -> str:
    return str(manifest.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/name", ""))


def of_kind(objects: list[Manifest], *kinds: str) -> list[Manifest]:
    return [o for o in objects if o["kind"] in kinds]


def one(objects: list[Manifest], kind: str, name: str) -> Manifest | None:
    return next((o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name), None)


def pod_spec(workload: Manifest) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def containers(workload: Manifest) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def label(workload: Manifest) -> str:
    return f"{workload['kind']}/{workload['metadata']['name']}"


def environment(objects: list[Manifest], container: dict[str, Any]) -> dict[str, str]:
    """A container's plain variables: its ConfigMaps' (envFrom), then its own `env` values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            config_map = one(objects, "ConfigMap", ref["name"])
            env.update((config_map or {}).get("data", {}))
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("500m", "1", "768Mi", "2Gi") as a number (cores or bytes)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


# --- the checks ----------------------------------------------------------------------------------------


def check_kinds(objects: list[Manifest]) -> list[str]:
    return [
        f"{o['kind']}/{o['metadata']['name']}: not a built-in kind"
        for o in objects
        if o["kind"] not in BUILT_IN_KINDS
    ]


def check_security(objects: list[Manifest]) -> list[str]:
    problems = []
    for workload in of_kind(objects, *WORKLOADS):
        spec, where = pod_spec(workload), label(workload)
        pod = spec.get("securityContext", {})
        if pod.get("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if not isinstance(pod.get("runAsUser"), int) or pod["runAsUser"] == 0:
            problems.append(f"{where}: no non-zero runAsUser")
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problems.append(f"{where}: shares a host namespace")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: a service account token is mounted")
        for container in containers(workload):
            where_c = f"{where} container {container['name']}"
            context = container.get("securityContext", {})
            seccomp = context.get("seccompProfile", pod.get("seccompProfile", {})).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{where_c}: seccomp profile {seccomp!r}")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where_c}: privilege escalation allowed")
            if context.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where_c}: root filesystem writable")
            if context.get("privileged"):
                problems.append(f"{where_c}: privileged")
            if "ALL" not in context.get("capabilities", {}).get("drop", []):
                problems.append(f"{where_c}: capabilities not all dropped")
            if context.get("capabilities", {}).get("add"):
                problems.append(f"{where_c}: adds capabilities")
            if any("hostPort" in port for port in container.get("ports", [])):
                problems.append(f"{where_c}: a hostPort")
    return problems


def check_resources(objects: list[Manifest]) -> list[str]:
    problems = []
    for workload in of_kind(objects, *WORKLOADS):
        for container in containers(workload):
            where = f"{label(workload)} container {container['name']}"
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(kind, {}):
                        problems.append(f"{where}: no {resource} {kind[:-1]}")
            for resource in ("cpu", "memory"):
                request = resources.get("requests", {}).get(resource)
                limit = resources.get("limits", {}).get(resource)
                if request is not None and limit is not None and quantity(request) > quantity(limit):
                    problems.append(f"{where}: {resource} request {request} above its limit {limit}")
    return problems


def _http_probe(container: dict[str, Any], probe: str) -> tuple[str, Any] | None:
    get = container.get(probe, {}).get("httpGet")
    return (get["path"], get["port"]) if get else None


def _port_number(container: dict[str, Any], port: Any) -> Any:
    named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    return named.get(port, port)


def check_probes(objects: list[Manifest]) -> list[str]:
    """Readiness = /health/ready (the model loaded), liveness = /health/live, a startup probe for each, on
    the port Gunicorn binds; the model services' startup probe allows MODEL_STARTUP_BUDGET_SECONDS."""
    problems = []
    for workload in of_kind(objects, "Deployment", "StatefulSet"):
        for container in pod_spec(workload)["containers"]:
            where = f"{label(workload)} container {container['name']}"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                spec = container.get(probe)
                if not spec:
                    problems.append(f"{where}: no {probe}")
                    continue
                if spec.get("timeoutSeconds", 1) >= spec.get("periodSeconds", 10):
                    problems.append(f"{where}: {probe} times out no sooner than it repeats")
            if app_name(workload) == REDIS:
                continue
            bind_port = int(environment(objects, container).get("BIND", "0.0.0.0:8000").rsplit(":", 1)[1])
            expected = {"readinessProbe": "/health/ready", "livenessProbe": "/health/live"}
            expected["startupProbe"] = (
                "/health/ready" if app_name(workload) in MODEL_SERVICES else "/health/live"
            )
            for probe, path in expected.items():
                found = _http_probe(container, probe)
                if found is None or found[0] != path or _port_number(container, found[1]) != bind_port:
                    problems.append(f"{where}: {probe} is {found}, not GET {path} on {bind_port}")
            startup = container.get("startupProbe", {})
            budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
            if app_name(workload) in MODEL_SERVICES and budget < MODEL_STARTUP_BUDGET_SECONDS:
                problems.append(f"{where}: the startup probe gives up after {budget} s")
    return problems


def check_termination(objects: list[Manifest]) -> list[str]:
    """SIGKILL comes no sooner than the preStop pause plus Gunicorn's drain and graceful timeout plus 5 s."""
    problems = []
    for workload in of_kind(objects, "Deployment"):
        spec = pod_spec(workload)
        grace = spec.get("terminationGracePeriodSeconds", 30)
        for container in spec["containers"]:
            where = f"{label(workload)} container {container['name']}"
            command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            if len(command) != 2 or command[0] != "sleep" or not command[1].isdigit():
                problems.append(f"{where}: preStop is {command}, not a pause (sleep N)")
                continue
            env = environment(objects, container)
            graceful = float(env.get("GRACEFUL_TIMEOUT", "30"))
            drain = float(env.get("DRAIN_SECONDS") or 0)
            needed = int(command[1]) + drain + graceful + 5
            if grace < needed:
                problems.append(f"{where}: terminationGracePeriodSeconds {grace} < {needed:g}")
    return problems


def check_exposure(objects: list[Manifest]) -> list[str]:
    """Only the gateway is reachable from outside: no other Service is a LoadBalancer, NodePort or
    external name, every Ingress leads to the gateway, and the services behind it are headless."""
    problems = []
    for service in of_kind(objects, "Service"):
        name, kind = service["metadata"]["name"], service["spec"].get("type", "ClusterIP")
        if kind != "ClusterIP" and name != GATEWAY:
            problems.append(f"Service/{name}: type {kind}")
        if name in (*MODEL_SERVICES, REDIS) and service["spec"].get("clusterIP") != "None":
            problems.append(f"Service/{name}: not headless (the gateway spreads over its replicas itself)")
    for ingress in of_kind(objects, "Ingress"):
        backends = [ingress["spec"].get("defaultBackend")] if "defaultBackend" in ingress["spec"] else []
        for rule in ingress["spec"].get("rules", []):
            backends += [path["backend"] for path in rule.get("http", {}).get("paths", [])]
        for backend in backends:
            if backend.get("service", {}).get("name") != GATEWAY:
                problems.append(f"Ingress/{ingress['metadata']['name']}: leads to {backend}")
    return problems


def check_discovery(objects: list[Manifest]) -> list[str]:
    """The gateway's *_URL and REDIS_URL name Services that exist, on their ports, selecting the pods."""
    problems = []
    gateway = one(objects, "Deployment", GATEWAY)
    if gateway is None:
        return ["no gateway Deployment"]
    env = environment(objects, pod_spec(gateway)["containers"][0])
    wanted = {f"{s.split('-')[0].upper()}_URL": (s, HTTP_PORT) for s in MODEL_SERVICES}
    wanted["REDIS_URL"] = (REDIS, REDIS_PORT)
    for variable, (name, port) in wanted.items():
        url = env.get(variable, "")
        match = re.fullmatch(r"(?:https?|redis)://(?:[^@/]*@)?([^:/]+):(\d+)(?:/.*)?", url)
        if not match or match.groups() != (name, str(port)):
            problems.append(f"gateway {variable}={url!r}: not {name}:{port}")
            continue
        service = one(objects, "Service", name)
        if service is None or port not in [p["port"] for p in service["spec"]["ports"]]:
            problems.append(f"gateway {variable}: no Service {name} on port {port}")
        elif service["spec"]["selector"] != {"app.kubernetes.io/name": name}:
            problems.append(f"Service/{name}: selects {service['spec']['selector']}")
    return problems


def check_secrets(objects: list[Manifest]) -> list[str]:
    """No password, key or token in a ConfigMap or a plain env value: the Redis password comes from the
    Secret, REDIS_URL only refers to it, and no Secret with data is shipped at all."""
    problems = []
    for config_map in of_kind(objects, "ConfigMap"):
        for key, value in config_map.get("data", {}).items():
            if SECRET_NAME.search(key) or "mg_" in str(value):
                problems.append(f"ConfigMap/{config_map['metadata']['name']}: holds {key}")
    for secret in of_kind(objects, "Secret"):
        problems.append(f"Secret/{secret['metadata']['name']}: shipped in the manifests")
    for workload in of_kind(objects, *WORKLOADS):
        for container in containers(workload):
            for variable in container.get("env", []):
                name = variable["name"]
                if name == "REDIS_PASSWORD" and "secretKeyRef" not in variable.get("valueFrom", {}):
                    problems.append(f"{label(workload)}: REDIS_PASSWORD not from a Secret")
                elif name == "REDIS_URL" and "$(REDIS_PASSWORD)" not in variable.get("value", ""):
                    problems.append(f"{label(workload)}: REDIS_URL carries its own password")
                elif SECRET_NAME.search(name) and name != "REDIS_URL" and "value" in variable:
                    problems.append(f"{label(workload)}: {name} has a literal value")
    return problems


def check_storage(objects: list[Manifest]) -> list[str]:
    """Redis: a StatefulSet with a claim on /data; the model repository: one claim, read-only in every
    model service at /models, written only by the Job that fills it."""
    problems = []
    redis = one(objects, "StatefulSet", REDIS)
    if redis is None:
        return ["no redis StatefulSet"]
    claims = [c["metadata"]["name"] for c in redis["spec"].get("volumeClaimTemplates", [])]
    mounts = {m["name"]: m["mountPath"] for m in pod_spec(redis)["containers"][0].get("volumeMounts", [])}
    if not claims or mounts.get(claims[0]) != "/data":
        problems.append(f"StatefulSet/redis: claims {claims}, mounts {mounts}")
    if one(objects, "PersistentVolumeClaim", "model-repository") is None:
        problems.append("no PersistentVolumeClaim model-repository")
    writers = []
    for workload in of_kind(objects, *WORKLOADS):
        volumes = {
            v["name"]: v["persistentVolumeClaim"]
            for v in pod_spec(workload).get("volumes", [])
            if v.get("persistentVolumeClaim", {}).get("claimName") == "model-repository"
        }
        for container in containers(workload):
            for mount in container.get("volumeMounts", []):
                if mount["name"] in volumes and not (
                    mount.get("readOnly") and volumes[mount["name"]].get("readOnly")
                ):
                    writers.append(label(workload))
        if app_name(workload) in MODEL_SERVICES:
            paths = [
                m["mountPath"] for c in containers(workload) for m in c.get("volumeMounts", [])
                if m["name"] in volumes and m.get("readOnly")
            ]  # fmt: skip
            if paths != ["/models"]:
                problems.append(f"{label(workload)}: the model repository is not read-only at /models")
    if writers != ["Job/fill-model-repository"]:
        problems.append(f"the model repository is writable by {writers}, not only the fill Job")
    return problems


def check_scaling(objects: list[Manifest], min_replicas: int) -> list[str]:
    """An HPA on CPU for the gateway and each model service, with bounds; the Deployment leaves its
    replica count to it; a PodDisruptionBudget that lets a node drain but keeps one replica when there
    are two; spread over nodes."""
    problems = []
    for name in (GATEWAY, *MODEL_SERVICES):
        deployment = one(objects, "Deployment", name)
        hpa = one(objects, "HorizontalPodAutoscaler", name)
        pdb = one(objects, "PodDisruptionBudget", name)
        if deployment is None or hpa is None or pdb is None:
            problems.append(f"{name}: Deployment {bool(deployment)}, HPA {bool(hpa)}, PDB {bool(pdb)}")
            continue
        spec = hpa["spec"]
        if spec["scaleTargetRef"] != {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}:
            problems.append(f"HPA/{name}: scales {spec['scaleTargetRef']}")
        if not min_replicas <= spec.get("minReplicas", 1) < spec["maxReplicas"] <= 20:
            problems.append(f"HPA/{name}: {spec.get('minReplicas', 1)}..{spec['maxReplicas']} replicas")
        targets = [
            m["resource"]["target"].get("averageUtilization")
            for m in spec.get("metrics", []) if m["type"] == "Resource" and m["resource"]["name"] == "cpu"
        ]  # fmt: skip
        if len(targets) != 1 or not 50 <= (targets[0] or 0) <= 90:
            problems.append(f"HPA/{name}: CPU targets {targets}")
        if "replicas" in deployment["spec"]:
            problems.append(f"Deployment/{name}: sets replicas, which every apply would reset the HPA to")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = pdb["spec"]["selector"].get("matchLabels", {})
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            problems.append(f"PDB/{name}: selects {selector}, not the Deployment's pods {labels}")
        if pdb["spec"].get("maxUnavailable") != 1 or "minAvailable" in pdb["spec"]:
            problems.append(f"PDB/{name}: {pdb['spec']}, not maxUnavailable: 1")
        spreads = pod_spec(deployment).get("topologySpreadConstraints", [])
        if not any(
            s["topologyKey"] == "kubernetes.io/hostname" and s["maxSkew"] == 1
            and s["labelSelector"].get("matchLabels") == selector for s in spreads
        ):  # fmt: skip
            problems.append(f"Deployment/{name}: not spread over nodes ({spreads})")
    return problems


def check_metrics_scraping(objects: list[Manifest]) -> list[str]:
    """The gateway's prometheus.io annotations name its METRICS_PORT, which the container declares."""
    gateway = one(objects, "Deployment", GATEWAY)
    if gateway is None:
        return ["no gateway Deployment"]
    annotations = gateway["spec"]["template"]["metadata"].get("annotations", {})
    container = pod_spec(gateway)["containers"][0]
    port = environment(objects, container).get("METRICS_PORT")
    declared = [str(p["containerPort"]) for p in container.get("ports", [])]
    if annotations.get("prometheus.io/scrape") != "true" or annotations.get("prometheus.io/port") != port:
        return [f"gateway: scrape annotations {annotations}, METRICS_PORT {port}"]
    if port not in declared:
        return [f"gateway: METRICS_PORT {port} not among its ports {declared}"]
    return []


# --- network policies: who may connect to whom -------------------------------------------------------


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        present, value = expression["key"] in labels, labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: dict[str, Any], namespace: str, pod: dict[str, str], own_namespace: str) -> bool:
    if "ipBlock" in peer:
        return True  # an address range may hold any pod
    namespace_labels = {"kubernetes.io/metadata.name": namespace}
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif namespace != own_namespace:
        return False
    return "podSelector" not in peer or _selects(peer["podSelector"], pod)


def _port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    return any(p.get("protocol", "TCP") == protocol and p.get("port") in (None, port) for p in ports)


def _allowed_one_way(
    policies: list[Manifest], direction: str, subject: tuple[str, dict[str, str]],
    peer: tuple[str, dict[str, str]], port: int, protocol: str,
) -> bool:  # fmt: skip
    """Does the subject pod's side (ingress: the destination's, egress: the source's) allow it?"""
    namespace, labels = subject
    applying = [
        p for p in policies
        if p["metadata"].get("namespace") == namespace and _selects(p["spec"]["podSelector"], labels)
        and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]  # fmt: skip
    if not applying:
        return True  # no policy selects it for this direction: Kubernetes allows everything
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in applying:
        for rule in policy["spec"].get(key, []):
            peers = rule.get(peers_key)
            if _port_matches(rule.get("ports"), port, protocol) and (
                not peers or any(_peer_matches(p, peer[0], peer[1], namespace) for p in peers)
            ):
                return True
    return False


def allowed(
    objects: list[Manifest], source: tuple[str, dict[str, str]], destination: tuple[str, dict[str, str]],
    port: int, protocol: str = "TCP",
) -> bool:  # fmt: skip
    """Would a connection from `source` to `destination` (each: namespace, pod labels) be let through?"""
    policies = of_kind(objects, "NetworkPolicy")
    return _allowed_one_way(policies, "Egress", source, destination, port, protocol) and _allowed_one_way(
        policies, "Ingress", destination, source, port, protocol
    )


def pods(objects: list[Manifest]) -> Iterator[tuple[str, tuple[str, dict[str, str]]]]:
    for workload in of_kind(objects, *WORKLOADS):
        labels = workload["spec"]["template"]["metadata"].get("labels", {})
        yield app_name(workload), (workload["metadata"]["namespace"], labels)


def check_network_policies(objects: list[Manifest]) -> list[str]:
    """Only the gateway reaches the model services and Redis; anyone reaches the gateway's port; the
    model services reach nothing but DNS."""
    problems = []
    found = dict(pods(objects))
    namespace = found[GATEWAY][0]
    outsider = ("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
    neighbour = (namespace, {"app.kubernetes.io/name": "debug-shell"})  # a pod someone adds later
    dns = ("kube-system", {"k8s-app": "kube-dns"})
    if not allowed(objects, outsider, found[GATEWAY], HTTP_PORT):
        problems.append("the gateway's port is closed to the Ingress controller")
    for name, pod in found.items():
        if name == "fill-model-repository":
            continue
        for target, port in [*((s, HTTP_PORT) for s in MODEL_SERVICES), (REDIS, REDIS_PORT)]:
            should = name == GATEWAY
            if allowed(objects, pod, found[target], port) != should:
                problems.append(f"{name} -> {target}:{port} is {'closed' if should else 'open'}")
        if name != REDIS and not allowed(objects, pod, dns, 53, "UDP"):  # Redis resolves no names
            problems.append(f"{name} cannot resolve names (DNS closed)")
    for target, port in [*((s, HTTP_PORT) for s in MODEL_SERVICES), (REDIS, REDIS_PORT)]:
        for intruder in (outsider, neighbour):
            if allowed(objects, intruder, found[target], port):
                problems.append(f"{intruder[1]} in {intruder[0]} reaches {target}:{port}")
    for service in MODEL_SERVICES:
        if allowed(objects, found[service], ("elsewhere", {}), 443):
            problems.append(f"{service} reaches outside addresses")
    return problems


def check_production_images(objects: list[Manifest]) -> list[str]:
    """A fixed tag from a registry: never `latest` (a rollout must say what it rolls out)."""
    problems = []
    for workload in of_kind(objects, *WORKLOADS):
        for container in containers(workload):
            image = container["image"]
            name, _, tag = image.rpartition(":")
            if not tag or tag == "latest" or "/" not in name:
                problems.append(f"{label(workload)}: image {image}")
    return problems


def check_all(objects: list[Manifest], *, production: bool) -> dict[str, list[str]]:
    """Every check's problems by name."""
    checks: dict[str, Check] = {
        "kinds": check_kinds,
        "security": check_security,
        "resources": check_resources,
        "probes": check_probes,
        "termination": check_termination,
        "exposure": check_exposure,
        "discovery": check_discovery,
        "secrets": check_secrets,
        "storage": check_storage,
        "scaling": lambda o: check_scaling(o, 2 if production else 1),
        "metrics": check_metrics_scraping,
        "network": check_network_policies,
    }
    if production:
        checks["images"] = check_production_images
    return {name: check(objects) for name, check in checks.items()}
