"""deploy/kubernetes: rendered by kustomize, its generated parts equal to what the native stack runs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.access import needs
from streams.kube import render
from streams.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render deploy/kubernetes"
    out = subprocess.run([kubectl, "kustomize", str(KUBE)], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_generated_files_are_what_connectors_and_monitoring_render() -> None:
    """deploy/kubernetes/generated/ is rendered, never edited: `crm-erp-sync render-kubernetes`."""
    for name, text in render(load_settings(None)).items():
        assert (KUBE / "generated" / name).read_text(encoding="utf-8") == text, name


def test_each_kafka_connector_is_its_connector_file(rendered: list[dict[str, Any]]) -> None:
    connectors = {d["metadata"]["name"]: d for d in of_kind(rendered, "KafkaConnector")}
    files = sorted((REPO / "connectors").glob("*-postgres.json"))
    assert sorted(connectors) == sorted(json.loads(p.read_text(encoding="utf-8"))["name"] for p in files)
    connect = of_kind(rendered, "KafkaConnect")[0]
    settings = load_settings(None)
    env = {e["name"] for e in connect["spec"]["template"]["connectContainer"]["env"]}
    for path in files:
        definition = json.loads(path.read_text(encoding="utf-8"))
        spec = connectors[definition["name"]]["spec"]
        config = {**spec["config"], "connector.class": spec["class"], "tasks.max": str(spec["tasksMax"])}
        # The Connect pods log in as the capture role: the DBA's publication, the captured tables only
        assert config == {**definition["config"], "publication.autocreate.mode": "disabled",
                          "table.include.list": config["table.include.list"]}
        source = definition["config"]["topic.prefix"]
        assert {t.replace("\\.", ".") for t in config["table.include.list"].split(",")} \
            == needs(settings)[source].captured | {"sync_meta.heartbeat", "sync_meta.debezium_signal"}
        assert connectors[definition["name"]]["metadata"]["labels"]["strimzi.io/cluster"] \
            == connect["metadata"]["name"]
        placeholders = {v.split(":", 1)[1].rstrip("}") for v in definition["config"].values()
                        if isinstance(v, str) and v.startswith("${env:")}
        assert placeholders <= env, placeholders - env  # every ${env:...} is set on the Connect pods


def test_alerts_and_dashboards_are_the_monitoring_files(rendered: list[dict[str, Any]]) -> None:
    rule = of_kind(rendered, "PrometheusRule")[0]
    alerts = yaml.safe_load((REPO / "monitoring" / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    assert rule["spec"]["groups"] == alerts["groups"]
    boards = next(d for d in of_kind(rendered, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard"))
    for path in (REPO / "monitoring" / "grafana" / "dashboards").glob("*.json"):
        assert json.loads(boards["data"][path.name]) == json.loads(path.read_text(encoding="utf-8"))


def test_the_workers_run_a_valid_production_config(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    deployment = of_kind(rendered, "Deployment")[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == mounts[str(config_path.parent)])
    config_map = next(d for d in of_kind(rendered, "ConfigMap")
                      if d["metadata"]["name"] == volume["configMap"]["name"])  # the generated, hashed name
    local = tmp_path / config_path.name
    local.write_text(config_map["data"][config_path.name], encoding="utf-8")
    settings = load_settings(local)  # a production config: every address named, else this raises
    assert not settings.local.enabled and settings.kafka.replication_factor == 3
    assert settings.processors.metrics_port == int(container["ports"][0]["containerPort"])
    assert str(settings.local.state_dir).startswith("/tmp") and "/tmp" in mounts  # writable: an emptyDir
    password_dir = next(p for p, n in mounts.items() if n == "db-passwords")
    assert all(str(settings.database(db).password_file).startswith(password_dir) for db in ("crm", "erp", "store"))
    assert container["readinessProbe"]["httpGet"]["path"] == "/metrics"
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_kafka_is_the_tested_topology(rendered: list[dict[str, Any]]) -> None:
    pool = of_kind(rendered, "KafkaNodePool")[0]
    kafka = of_kind(rendered, "Kafka")[0]
    assert pool["spec"]["replicas"] == 3 and set(pool["spec"]["roles"]) == {"controller", "broker"}
    config = kafka["spec"]["kafka"]["config"]
    assert (config["default.replication.factor"], config["min.insync.replicas"]) == (3, 2)
    assert config["unclean.leader.election.enable"] is False
