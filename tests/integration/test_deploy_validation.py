"""deploy/ checked without a Docker engine or a cluster: the compose file against the compose specification's
own JSON schema (compose-go, the library `docker compose` parses with) and against the files the native stack
runs; the rendered Kubernetes resources decoded strictly into their Go API types (deploy/kubernetes/check);
the Dockerfiles parsed and linted by BuildKit's Dockerfile frontend (deploy/docker/check). All come from the
Go module proxy, into a cache outside the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from streams.cli import build_parser, cmd_worker
from streams.local import jars
from streams.settings import LocalSettings, load_settings

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose"
DOCKER = REPO / "deploy" / "docker"
COMPOSE_GO = "github.com/compose-spec/compose-go/v2@v2.16.2"


def go(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the go command with its module cache under ~/.cache/crm-erp-sync/go."""
    binary = shutil.which("go")
    assert binary, "Go is needed to fetch the compose schema and the Kubernetes API types from the Go module proxy"
    cache = Path.home() / ".cache" / "crm-erp-sync" / "go"
    env = {**os.environ, "GOMODCACHE": str(cache / "mod"), "GOPATH": str(cache), "GOFLAGS": "-mod=mod"}
    return subprocess.run([binary, *args], capture_output=True, text=True, env=env, cwd=cwd, input=stdin,
                          check=False, timeout=900)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    """The compose specification's schema, from the compose-go module (downloaded once into a cache)."""
    done = go("mod", "download", "-json", COMPOSE_GO)
    assert done.returncode == 0, done.stdout + done.stderr
    schema: dict[str, Any] = json.loads((Path(json.loads(done.stdout)["Dir"]) / "schema" / "compose-spec.json")
                                        .read_text(encoding="utf-8"))
    return schema


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text(encoding="utf-8"))
    return data


def test_the_compose_file_follows_the_compose_specification(spec: dict[str, Any], compose: dict[str, Any]) -> None:
    errors = sorted(jsonschema.Draft202012Validator(spec).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]
    # It does catch mistakes: a misspelt key is refused.
    broken = {**compose, "services": {**compose["services"], "worker1": {**compose["services"]["worker1"],
                                                                          "comand": ["worker"]}}}
    assert list(jsonschema.Draft202012Validator(spec).iter_errors(broken))


def test_it_mounts_the_files_the_native_stack_runs(compose: dict[str, Any]) -> None:
    mounted: dict[str, Path] = {}
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                mounted[f"{name}:{volume.split(':')[1]}"] = (COMPOSE / source).resolve()
    secrets = (COMPOSE / "secrets").resolve()
    assert "deploy/compose/secrets/" in (REPO / ".gitignore").read_text(encoding="utf-8")  # made by the user
    assert all(path.exists() for path in mounted.values() if path != secrets), mounted
    assert mounted["prometheus:/etc/prometheus/prometheus.yml"] == REPO / "monitoring/prometheus/prometheus.yml"
    assert mounted["prometheus:/etc/prometheus/alerts.yml"] == REPO / "monitoring/prometheus/alerts.yml"
    assert mounted["grafana:/var/lib/grafana/dashboards/crm-erp-sync"] == REPO / "monitoring/grafana/dashboards"
    assert not re.search(r"PASSWORD:\s*[\"']?\w", (COMPOSE / "compose.yaml").read_text(encoding="utf-8")
                         .replace("PASSWORD: ${", "")), "a password in the compose file"


def test_its_parts_fit_together(compose: dict[str, Any], tmp_path: Path) -> None:
    services = compose["services"]
    settings = load_settings(COMPOSE / "sync.yaml")  # a production config: every address named
    hosts = {settings.crm.host, settings.erp.host, settings.store.host,
             *(s.split(":")[0] for s in settings.kafka.bootstrap_servers.split(",")),
             re.sub(r"https?://([^:/]+).*", r"\1", settings.registry.url),
             re.sub(r"https?://([^:/]+).*", r"\1", settings.capture.connect_url)}
    assert hosts <= set(services), hosts - set(services)
    assert (settings.kafka.replication_factor, settings.kafka.min_insync_replicas) == (3, 2)
    kafka = [s for s in services.values() if str(s.get("image", "")).startswith("apache/kafka")]
    assert len(kafka) == 3 and all(s["environment"]["KAFKA_MIN_INSYNC_REPLICAS"] == "2" for s in kafka)
    assert {s["image"] for s in kafka} == {f"apache/kafka:{jars.KAFKA_VERSION}"}  # the version the tests run
    # Every ${env:...} of the connectors is set on the Connect container.
    env = services["connect"]["environment"]
    for path in (REPO / "connectors").glob("*-postgres.json"):
        config = json.loads(path.read_text(encoding="utf-8"))["config"]
        needed = {v[6:-1] for v in config.values() if isinstance(v, str) and v.startswith("${env:")}
        assert needed <= set(env), needed - set(env)
    # Prometheus scrapes the ports the processes serve.
    targets = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in (COMPOSE / "prometheus-targets").glob("*")}
    workers = [n for n, s in services.items() if s.get("command", [])[-1:] == ["worker"]]
    assert sorted(targets["worker"][0]["targets"]) == sorted(f"{w}:{settings.processors.metrics_port}"
                                                             for w in workers)
    assert targets["capture"][0]["targets"] == [
        f"capture:{services['capture']['environment']['CRM_ERP_SYNC__CAPTURE__METRICS_PORT']}"]
    # Every command is one the CLI has; every image is pinned.
    parser = build_parser()
    for name, service in services.items():
        if "command" in service and str(service.get("image", "")).startswith("crm-erp-sync/"):
            parser.parse_args(service["command"])
        image = str(service.get("image", ""))
        assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), (name, image)


def test_kubernetes_resources_decode_strictly_into_their_api_types() -> None:
    rendered = _rendered()
    check = REPO / "deploy" / "kubernetes" / "check"
    done = go("run", ".", cwd=check, stdin=rendered)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    checked = {tuple(line.split()[1:3]) for line in lines if line.startswith("ok ")}
    assert {("Deployment", "crm-erp-sync-worker"), ("PodMonitor", "crm-erp-sync-worker"),
            ("PrometheusRule", "crm-erp-sync"), ("Namespace", "crm-erp-sync")} <= checked, lines
    # It catches what the API server would refuse: a misspelt field of the worker's container.
    broken = rendered.replace("readinessProbe:", "readinesProbe:", 1)
    assert broken != rendered
    refused = go("run", ".", cwd=check, stdin=broken)
    assert refused.returncode == 1 and 'unknown field "readinesProbe"' in refused.stdout, refused.stdout


def _rendered() -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render deploy/kubernetes"
    return subprocess.run([kubectl, "kustomize", str(REPO / "deploy" / "kubernetes")], capture_output=True,
                          text=True, check=True).stdout


def test_strimzi_resources_decode_into_strimzis_own_model_with_no_unknown_field() -> None:
    """Kafka, node pool, Connect, connectors and users as Strimzi's operator reads them (io.strimzi:api)."""
    classpath = jars.classpath(jars.ensure(jars.STRIMZI_API, LocalSettings().jar_cache))
    check = REPO / "deploy" / "kubernetes" / "strimzi-check" / "Check.java"

    def run(text: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["java", "-cp", classpath, str(check)], input=text, capture_output=True, text=True,
                              timeout=300, check=False)

    rendered = _rendered()
    done = run(rendered)
    assert done.returncode == 0, done.stdout + done.stderr
    checked = sorted(tuple(line.split()[1:3]) for line in done.stdout.splitlines() if line.startswith("ok "))
    assert checked == [("Kafka", "crm-erp-sync"), ("KafkaConnect", "crm-erp-sync-connect"),
                       ("KafkaConnector", "crm-postgres"), ("KafkaConnector", "erp-postgres"),
                       ("KafkaNodePool", "dual-role"), ("KafkaUser", "crm-erp-sync"),
                       ("KafkaUser", "crm-erp-sync-connect")], done.stdout
    # Strimzi keeps a field it does not know instead of refusing it; the check finds it anywhere.
    broken = rendered.replace("\n    listeners:", "\n    listenerz:", 1)
    assert broken != rendered
    refused = run(broken)
    assert refused.returncode == 1 and "FAIL Kafka crm-erp-sync: unknown field Kafka.spec.kafka.listenerz" in (
        refused.stdout), refused.stdout


def test_the_dockerfiles_pass_docker_builds_frontend_and_pin_what_the_native_stack_runs(
        compose: dict[str, Any], tmp_path: Path) -> None:
    """Both images as `docker build` reads them (BuildKit's parser and linter: a warning fails), and
    what they build: the worker from the wheel of this project, as a non-root user, running the CLI's
    worker; Kafka Connect from Debezium's image of the version the native stack runs, with the Avro
    converter of the registry's version; compose builds each and tags it with those versions."""
    check = DOCKER / "check"
    done = go("run", ".", str(DOCKER / "worker.Dockerfile"), str(DOCKER / "connect.Dockerfile"), cwd=check)
    assert done.returncode == 0, done.stdout + done.stderr
    worker, connect = json.loads(done.stdout)
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", worker["bases"][0]), worker["bases"]
    assert worker["copied"] == [f"dist/{project['name'].replace('-', '_')}-*.whl"]  # `pip wheel --no-deps -w dist .`
    assert worker["user"].isdigit() and int(worker["user"]) > 0 and not worker["shell_form"]
    assert worker["entrypoint"] == ["crm-erp-sync"] and "crm-erp-sync" in project["scripts"]
    assert build_parser().parse_args(worker["cmd"]).func is cmd_worker
    assert connect["bases"] == [f"quay.io/debezium/connect:{jars.DEBEZIUM_VERSION}"]
    services = compose["services"]
    registry = next(s["image"] for s in services.values() if "schema-registry" in str(s.get("image", "")))
    avro = connect["args"]["AVRO_CONVERTER"]
    assert avro == registry.rsplit(":", 1)[1]
    strimzi_connect = (REPO / "deploy" / "kubernetes" / "connect.yaml").read_text(encoding="utf-8")
    assert f"/versions/{avro}/" in strimzi_connect and f"version: {jars.DEBEZIUM_VERSION}" in strimzi_connect
    built = {Path(s["build"]["dockerfile"]).name: s["image"] for s in services.values() if "build" in s}
    assert built == {"worker.Dockerfile": f"crm-erp-sync/worker:{project['version']}",
                     "connect.Dockerfile": f"crm-erp-sync/connect:{jars.DEBEZIUM_VERSION.removesuffix('.Final')}"}
    # It refuses what `docker build` would refuse (a misspelt instruction) or warn about (a lint rule).
    for text, reason in (("FROM python:3.11.11-slim-bookworm\nENTRYPONT [\"crm-erp-sync\"]\n", "unknown instruction"),
                         ("FROM python:3.11.11-slim-bookworm as worker\n", "FromAsCasing")):
        bad = tmp_path / "bad.Dockerfile"
        bad.write_text(text, encoding="utf-8")
        refused = go("run", ".", str(bad), cwd=check)
        assert refused.returncode == 1 and reason in refused.stdout, refused.stdout
