"""infra/: the compose stack and the Kubernetes manifests, validated statically.

No Docker engine or cluster runs here, so nothing in infra/ is started by the tests. What is
checked instead: every YAML parses, and the files agree with the code and with each other --
ports, paths, topic and group names, ``RECON_*`` variables (each must be a real Settings
field, and the values must validate), probes, scrape targets, the Grafana provisioning of
dashboards/, and the KEDA trigger.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from streams.settings import Settings
from streams.topics import TopicNames

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
DASHBOARDS = ROOT / "dashboards"
ENV_NAMES = {f"RECON_{name.upper()}" for name in Settings.model_fields}
_COMPOSE_DEFAULT = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?-([^}]*)\}")


def default(field: str) -> Any:
    """A Settings field's default (not read from this process's environment)."""
    return Settings.model_fields[field].default


METRICS_PORT = default("metrics_port")


def yaml_files() -> list[Path]:
    files = [*INFRA.rglob("*.yml"), *INFRA.rglob("*.yaml"), *DASHBOARDS.glob("*.yml")]
    return sorted(files)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load(INFRA / "docker-compose.yml")
    return loaded


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with the default (what runs when VAR is unset)."""
    return _COMPOSE_DEFAULT.sub(lambda m: m.group(2), value)


def settings_from_env(env: dict[str, Any]) -> Settings:
    """Validate RECON_* values as the worker would (init values win over this process's
    environment, so an unrelated RECON_* variable set here cannot mask a bad value)."""
    unknown = {name for name in env if name.startswith("RECON_")} - ENV_NAMES
    assert not unknown, f"not Settings fields: {unknown}"
    values = {
        name.removeprefix("RECON_").lower(): interpolate(str(value))
        for name, value in env.items()
        if name.startswith("RECON_")
    }
    return Settings(**values)


def k8s_docs() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> manifest, over every file in infra/k8s."""
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_all(path):
            if doc.get("kind") == "Kustomization":
                continue
            assert doc.get("apiVersion") and doc.get("kind"), path
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in docs, f"{key} defined twice"
            docs[key] = doc
    return docs


def one(kind: str) -> dict[str, Any]:
    found = [doc for (k, _), doc in k8s_docs().items() if k == kind]
    assert len(found) == 1, f"{len(found)} {kind} manifests"
    return found[0]


def comment_above(path: Path, needle: str, lines: int = 6) -> str:
    """The comment lines in the ``lines`` lines above the first line containing ``needle``."""
    text = path.read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(text) if needle in line)
    return " ".join(
        line.strip() for line in text[max(0, index - lines) : index] if line.strip()[:1] == "#"
    )


# --- every file ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    docs = load_all(path)
    assert docs and all(isinstance(d, dict) for d in docs)


def test_the_files_exist() -> None:
    for name in (
        "Dockerfile",
        "docker-compose.yml",
        "prometheus.yml",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/recon.yml",
        "k8s/deployment.yaml",
        "k8s/service.yaml",
        "k8s/configmap.yaml",
        "k8s/keda-scaledobject.yaml",
    ):
        assert (INFRA / name).is_file(), name


# --- compose ---------------------------------------------------------------------------------


def test_compose_kafka_is_a_three_node_kraft_quorum() -> None:
    services = compose()["services"]
    kafka = {name: s for name, s in services.items() if s["image"].startswith("apache/kafka:")}
    assert len(kafka) == 3
    node_ids, voters, cluster_ids = set(), set(), set()
    for name, service in kafka.items():
        env = service["environment"]
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        node_ids.add(int(env["KAFKA_NODE_ID"]))
        voters.add(env["KAFKA_CONTROLLER_QUORUM_VOTERS"])
        cluster_ids.add(env["CLUSTER_ID"])
        listeners = dict(
            item.split("://") for item in env["KAFKA_LISTENERS"].split(",")
        )  # name -> host:port
        controller_port = listeners[env["KAFKA_CONTROLLER_LISTENER_NAMES"]].rsplit(":", 1)[1]
        assert f"{env['KAFKA_NODE_ID']}@{name}:{controller_port}" in env[
            "KAFKA_CONTROLLER_QUORUM_VOTERS"
        ].split(",")
        advertised = dict(
            item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
        )
        assert advertised[env["KAFKA_INTER_BROKER_LISTENER_NAME"]] == f"{name}:9092"
        assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 3
    assert node_ids == {1, 2, 3} and len(voters) == 1 and len(cluster_ids) == 1
    assert len(next(iter(voters)).split(",")) == 3


def test_compose_recon_services_agree_with_the_settings() -> None:
    services = compose()["services"]
    topics, worker = services["topics"], services["worker"]
    assert topics["command"] == ["topics"]
    assert worker["command"][0] == "worker" and "--no-create-topics" in worker["command"]
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    for service in (topics, worker):
        settings = settings_from_env(service["environment"])
        assert settings.topic == default("topic") and settings.group == default("group")
        brokers = [hp.split(":")[0] for hp in settings.bootstrap_servers.split(",")]
        assert all(services[b]["image"].startswith("apache/kafka:") for b in brokers)
        assert settings.replication_factor <= len(brokers)
    worker_settings = settings_from_env(worker["environment"])
    assert worker_settings.metrics_port == METRICS_PORT
    assert worker_settings.metrics_host == "0.0.0.0"
    assert "deliberate" in comment_above(INFRA / "docker-compose.yml", "RECON_METRICS_HOST:")
    assert worker_settings.sink_url.startswith("postgresql://")
    assert "@postgres:5432/" in worker_settings.sink_url and "postgres" in services
    # the healthcheck asks the worker's own /healthz on its metrics port
    assert f"127.0.0.1:{METRICS_PORT}/healthz" in " ".join(worker["healthcheck"]["test"])


def test_compose_publishes_only_on_loopback() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert "ports" not in compose()["services"]["worker"]


def test_image_build() -> None:
    services = compose()["services"]
    build = services["worker"]["build"]
    assert services["topics"]["build"] == build
    context = (INFRA / build["context"]).resolve()
    assert context == ROOT
    dockerfile = (context / build["dockerfile"]).read_text(encoding="utf-8")
    assert re.search(rf"^EXPOSE {METRICS_PORT}$", dockerfile, re.MULTILINE)
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.MULTILINE):
        for part in source.split():
            assert (context / part).exists(), part
    assert re.search(r"^RUN pip install \.", dockerfile, re.MULTILINE)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert 'ENTRYPOINT ["recon"]' in dockerfile and "recon" in scripts
    ignore = (INFRA / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    for part in ("pyproject.toml", "README.md", "streams/", "processors/"):
        assert f"!{part}" in ignore


# --- Prometheus and Grafana ------------------------------------------------------------------


def volume_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path (resolved from infra/) of a service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            mounts[target] = (INFRA / source).resolve()
    return mounts


def test_prometheus_scrapes_the_workers_metrics_port() -> None:
    config = load(INFRA / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "recon"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = []
    for sd in job.get("dns_sd_configs", []):
        assert sd["type"] == "A"
        targets += [(name, sd["port"]) for name in sd["names"]]
    for static in job.get("static_configs", []):
        targets += [tuple(t.rsplit(":", 1)) for t in static["targets"]]
    assert targets
    services = compose()["services"]
    for host, port in targets:
        assert int(port) == METRICS_PORT
        assert "worker" in services[host]["command"]
    # the alert rules' job label is this job
    alerts = (DASHBOARDS / "alerts.yml").read_text(encoding="utf-8")
    assert set(re.findall(r'job="([^"]+)"', alerts)) == {"recon"}


def test_every_dashboards_file_is_provisioned() -> None:
    services = compose()["services"]
    # alert rules: mounted where rule_files looks
    prometheus = services["prometheus"]
    config_target = next(
        a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file=")
    )
    mounts = volume_mounts(prometheus)
    assert mounts[config_target] == INFRA / "prometheus.yml"
    rule_globs = load(INFRA / "prometheus.yml")["rule_files"]
    # dashboards (Grafana): the provider's path is where dashboards/ is mounted
    grafana = services["grafana"]
    gmounts = volume_mounts(grafana)
    provisioning = gmounts["/etc/grafana/provisioning"]
    assert provisioning == INFRA / "grafana" / "provisioning"
    providers = load(provisioning / "dashboards" / "recon.yml")["providers"]
    provider_paths = {p["options"]["path"] for p in providers if p["type"] == "file"}
    datasources = load(provisioning / "datasources" / "prometheus.yml")["datasources"]
    (prom,) = [d for d in datasources if d["type"] == "prometheus"]
    host, port = prom["url"].removeprefix("http://").split(":")
    assert host == "prometheus" and f"127.0.0.1:{port}:{port}" in prometheus["ports"]

    files = sorted(p for p in DASHBOARDS.iterdir() if p.is_file())
    assert files
    for path in files:
        if path.suffix == ".json":
            covered = [
                target
                for target, source in gmounts.items()
                if path.is_relative_to(source)
                and str(PurePosixPath(target) / path.relative_to(source).parent) in provider_paths
            ]
            assert covered, f"{path.name} is not under a Grafana provider path"
        elif path.suffix in (".yml", ".yaml"):
            targets = [t for t, source in mounts.items() if source == path]
            assert any(fnmatch.fnmatch(t, g) for t in targets for g in rule_globs), path.name
        else:
            pytest.fail(f"dashboards/{path.name}: neither a dashboard nor a rules file")


# --- Kubernetes ------------------------------------------------------------------------------


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def k8s_settings(c: dict[str, Any]) -> Settings:
    """The container's effective settings: ConfigMap + Secret (example values) + env."""
    configmap = one("ConfigMap")
    secret = one("Secret")
    env: dict[str, Any] = {}
    for source in c.get("envFrom", []):
        assert source["configMapRef"]["name"] == configmap["metadata"]["name"]
        env.update(configmap["data"])
    for item in c.get("env", []):
        ref = item["valueFrom"]["secretKeyRef"] if "valueFrom" in item else None
        if ref is not None:
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"], ref["key"]
            env[item["name"]] = secret["stringData"][ref["key"]]
        else:
            env[item["name"]] = item["value"]
    return settings_from_env(env)


def test_k8s_worker_deployment() -> None:
    deployment = one("Deployment")
    c = container(deployment)
    assert c["args"][0] == "worker"
    (port,) = c["ports"]
    assert port["containerPort"] == METRICS_PORT
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and get["port"] in (port["name"], METRICS_PORT)
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])
    secret_env = {
        item["name"]: item["valueFrom"]["secretKeyRef"] for item in c["env"] if "valueFrom" in item
    }
    assert "RECON_SASL_PASSWORD" in secret_env
    assert "RECON_SASL_PASSWORD" not in one("ConfigMap")["data"]
    settings = k8s_settings(c)
    assert settings.topic == default("topic") and settings.group == default("group")
    assert settings.metrics_port == METRICS_PORT and settings.metrics_host == "0.0.0.0"
    assert "deliberate" in comment_above(K8S / "configmap.yaml", "RECON_METRICS_HOST:")
    assert settings.sasl_password is not None
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # a writable /tmp for Faust's data directory, the root filesystem being read-only
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and "/tmp" in mounts


def test_k8s_topics_job() -> None:
    job = one("Job")
    c = container(job)
    assert c["args"] == ["topics"]
    settings = k8s_settings(c)
    worker = k8s_settings(container(one("Deployment")))
    assert (settings.topic, settings.partitions) == (worker.topic, worker.partitions)
    assert c["image"] == container(one("Deployment"))["image"]


def test_k8s_metrics_service() -> None:
    service = one("Service")
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == METRICS_PORT
    assert port["targetPort"] in (container(deployment)["ports"][0]["name"], METRICS_PORT)


def lag_alert_threshold() -> int:
    rules = load(DASHBOARDS / "alerts.yml")["groups"][0]["rules"]
    (lag,) = [r for r in rules if r["alert"] == "ReconLagGrowing"]
    return int(re.search(r"recon_consumer_lag_messages\{[^}]*\}\)\s*>\s*(\d+)", lag["expr"])[1])


def test_keda_scaled_object() -> None:
    scaled = one("ScaledObject")
    deployment = one("Deployment")
    worker = k8s_settings(container(deployment))
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    # more consumers than partitions would sit idle
    assert scaled["spec"]["maxReplicaCount"] <= worker.partitions
    lanes = set(TopicNames.from_settings(worker).lanes.values())
    auth = one("TriggerAuthentication")
    secret = one("Secret")["stringData"]
    triggers = scaled["spec"]["triggers"]
    assert triggers and {t["type"] for t in triggers} == {"kafka"}
    assert worker.topic in {t["metadata"]["topic"] for t in triggers}
    for trigger in triggers:
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == worker.group == default("group")
        assert meta["topic"] in lanes
        assert meta["bootstrapServers"] == worker.bootstrap_servers
        threshold = int(meta["lagThreshold"])
        assert 0 < threshold < lag_alert_threshold()  # scale out before alerting
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    # KEDA's auth parameters come from the same Secret, and say what the workers use
    params = {}
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == one("Secret")["metadata"]["name"] and ref["key"] in secret
        params[ref["parameter"]] = secret[ref["key"]]
    keda_sasl = {
        "PLAIN": "plaintext",
        "SCRAM-SHA-256": "scram_sha256",
        "SCRAM-SHA-512": "scram_sha512",
    }
    assert params["sasl"] == keda_sasl[str(worker.sasl_mechanism)]
    assert params["tls"] == ("enable" if "SSL" in worker.security_protocol else "disable")
    assert params["username"] == worker.sasl_username
    assert worker.sasl_password is not None
    assert params["password"] == worker.sasl_password.get_secret_value()


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = load(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present - {"secret.example.yaml"}
