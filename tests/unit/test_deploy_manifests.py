"""deploy/: the compose file, the Kubernetes manifests, Prometheus, Grafana and
the Dockerfile, checked as far as it goes without Docker or a cluster.

What a typo would break silently is checked here: every role has its
workers, the probes hit /healthz and /readyz on the metrics port, Kafka is a
3-broker KRaft cluster with replication 3 and min ISR 2, the topics job runs,
and every variable handed to the app is one the app reads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from analytics.settings import AnalyticsSettings
from checkout_saga.runtime import ROLES
from messaging.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
METRICS_PORT = 9100


def app_variables() -> set[str]:
    prefix = AnalyticsSettings.model_config.get("env_prefix", "")
    return ({name.upper() for name in Settings.model_fields}
            | {f"{prefix}{name}".upper() for name in AnalyticsSettings.model_fields})


# ---- docker compose --------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def brokers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items()
            if "kafka" in str(svc.get("image", ""))}


def env_of(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def test_compose_runs_several_workers_of_every_role(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for role in ROLES:
        assert role in services, f"no compose service for role {role}"
        assert services[role]["command"] == ["up", "--role", role]
        assert services[role]["deploy"]["replicas"] >= 2, role
    assert services["analytics"]["command"] == ["analytics"]
    assert {"postgres", "redis", "prometheus", "grafana"} <= set(services)


def test_compose_kafka_is_three_kraft_brokers_with_replication_3_and_min_isr_2(
    compose: dict[str, Any]
) -> None:
    kafka = brokers(compose)
    assert len(kafka) == 3
    envs = [env_of(svc) for svc in kafka.values()]
    node_ids = sorted(int(e["KAFKA_NODE_ID"]) for e in envs)
    assert node_ids == [1, 2, 3]
    for name, env in zip(kafka, envs):
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, name
        assert not any("ZOOKEEPER" in key for key in env), f"{name} is not in KRaft mode"
        voters = dict(v.split("@") for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert voters == {str(i): f"kafka-{i}:9093" for i in node_ids}, name
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert f"PLAINTEXT://{name}:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert len({e["CLUSTER_ID"] for e in envs}) == 1, "brokers of one cluster share its id"


def test_compose_app_points_at_the_cluster_and_creates_topics_first(
    compose: dict[str, Any]
) -> None:
    services = compose["services"]
    assert services["topics"]["command"][:2] == ["topics", "create"]
    for name in (*ROLES, "analytics", "topics"):
        env = env_of(services[name])
        assert set(env["KAFKA_BOOTSTRAP_SERVERS"].split(",")) == {
            f"{b}:9092" for b in brokers(compose)}, name
        assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["DATABASE_URL"]
        assert env["REDIS_URL"].startswith("redis://redis:")
        assert env["CHECKOUT_REPLICATION_FACTOR"] == "3"
        assert env["CHECKOUT_MIN_INSYNC_REPLICAS"] == "2"
        assert env["CHECKOUT_METRICS_PORT"] == str(METRICS_PORT)
        # The default (loopback) would hide the probes' port from outside.
        assert env["CHECKOUT_METRICS_HOST"] == "0.0.0.0"
        unknown = set(env) - app_variables()
        assert not unknown, f"{name} sets variables the app never reads: {unknown}"
    for role in ROLES:
        depends = services[role]["depends_on"]
        assert depends["topics"]["condition"] == "service_completed_successfully", role
        check = " ".join(services[role]["healthcheck"]["test"])
        assert f":{METRICS_PORT}/readyz" in check, role


def test_compose_mounts_files_that_exist(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    build = compose["services"]["topics"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()


def test_prometheus_scrapes_every_role_on_the_metrics_port() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "checkout-saga")
    sd = job["dns_sd_configs"][0]
    assert set(sd["names"]) == set(ROLES) and sd["port"] == METRICS_PORT


def test_grafana_is_provisioned_with_the_dashboard_on_that_datasource() -> None:
    grafana = DEPLOY / "grafana"
    sources = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yml")
                             .read_text())["datasources"]
    assert sources[0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((grafana / "provisioning" / "dashboards" / "checkout-saga.yml")
                               .read_text())["providers"]
    assert providers[0]["options"]["path"] == "/etc/grafana/dashboards"
    dashboard = json.loads((grafana / "dashboards" / "checkout-saga.json").read_text())
    assert dashboard["uid"] == "checkout-saga" and len(dashboard["panels"]) >= 8
    uids = {s["uid"] for s in sources}
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def exported_series() -> set[str]:
    """Every series name the workers' registry can expose, children or not (a worker
    process imports the runtime, which brings the saga's and inventory's metrics)."""
    import checkout_saga.runtime  # noqa: F401
    from messaging.metrics import REGISTRY

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",), "summary": ("_sum", "_count", "")}
    return {family.name + suffix for family in REGISTRY.collect()
            for suffix in suffixes.get(family.type, ("",))}


def test_dashboard_queries_only_metrics_the_workers_export() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "checkout-saga.json").read_text())
    exported = exported_series()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\bcheckout_[a-z_]+", target["expr"]):
                assert name in exported, f"panel {panel['title']!r} queries unknown {name}"


def test_dockerfile_runs_the_cli_as_a_user_and_exposes_the_metrics_port() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["checkout-saga"\]$', text, re.MULTILINE)
    assert re.search(rf"^EXPOSE {METRICS_PORT}$", text, re.MULTILINE)
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and not users[-1].startswith(("root", "0")), "the image must not run as root"


# ---- kubernetes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk, "every manifest is listed in kustomization.yaml"
    docs: list[dict[str, Any]] = []
    for name in listed:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def of_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def test_k8s_has_a_deployment_per_role_with_replicas_and_probes(
    manifests: list[dict[str, Any]]
) -> None:
    deployments = of_kind(manifests, "Deployment")
    for role in ROLES:
        deployment = deployments[f"checkout-saga-{role}"]
        spec = deployment["spec"]
        assert spec["replicas"] >= 2, role
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), role
        (container,) = spec["template"]["spec"]["containers"]
        assert container["args"] == ["up", "--role", role]
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = container[probe]["httpGet"]
            assert get["path"] == path, (role, probe)
            assert container_port(container, get["port"]) == METRICS_PORT, (role, probe)


def test_k8s_configuration_comes_from_the_environment(manifests: list[dict[str, Any]]) -> None:
    config = of_kind(manifests, "ConfigMap")["checkout-saga-config"]["data"]
    secret = of_kind(manifests, "Secret")["checkout-saga-connections"]["stringData"]
    assert config["CHECKOUT_METRICS_PORT"] == str(METRICS_PORT)
    assert config["CHECKOUT_METRICS_HOST"] == "0.0.0.0"
    assert config["CHECKOUT_REPLICATION_FACTOR"] == "3"
    assert config["CHECKOUT_MIN_INSYNC_REPLICAS"] == "2"
    assert {"KAFKA_BOOTSTRAP_SERVERS"} <= set(config)
    assert {"DATABASE_URL", "REDIS_URL"} <= set(secret)
    assert all(isinstance(v, str) for v in config.values()), "ConfigMap values must be strings"
    unknown = (set(config) | set(secret)) - app_variables()
    assert not unknown, f"variables the app never reads: {unknown}"
    for kind in ("Deployment", "Job"):
        for name, obj in of_kind(manifests, kind).items():
            for container in obj["spec"]["template"]["spec"]["containers"]:
                refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
                assert refs == {"checkout-saga-config", "checkout-saga-connections"}, name


def test_k8s_topics_job_creates_topics(manifests: list[dict[str, Any]]) -> None:
    job = of_kind(manifests, "Job")["checkout-saga-topics"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    (container,) = pod["containers"]
    assert container["args"][:2] == ["topics", "create"]


def test_k8s_objects_share_one_namespace(manifests: list[dict[str, Any]]) -> None:
    namespaced = [m for m in manifests if m["kind"] != "Namespace"]
    assert {m["metadata"]["namespace"] for m in namespaced} == {"checkout-saga"}
