"""The embedded stack's Prometheus: ``monitoring/prometheus`` plus file_sd targets for local ports."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml

from streams import resources
from streams.errors import PreflightError
from streams.local.ports import http_ok
from streams.settings import Settings

MONITORING = resources.resource("monitoring", "prometheus")
HINT = "install the Debian package prometheus (./run.sh up does) or set local.prometheus: false"


def binary() -> str:
    """The ``prometheus`` server on PATH."""
    found = shutil.which("prometheus")
    if found is None:
        raise PreflightError("prometheus is not installed", hint=HINT)
    return found


def targets(settings: Settings) -> dict[str, str]:
    """Scrape job suffix -> ``host:port`` of each part of the embedded stack."""
    return {
        "capture": f"127.0.0.1:{settings.capture.metrics_port}",
        "worker": f"127.0.0.1:{settings.processors.metrics_port}",
        "registry": f"127.0.0.1:{settings.local.registry_port}",
    }


def prepare(settings: Settings) -> Path:
    """Copy the config and rules into the state dir, write the targets; the config file's path."""
    home = settings.local.state_dir / "prometheus"
    (home / "targets").mkdir(parents=True, exist_ok=True)
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copyfile(MONITORING / name, home / name)
    for job, address in targets(settings).items():
        body = [{"targets": [address], "labels": {"stack": "embedded"}}]
        (home / "targets" / f"{job}.json").write_text(json.dumps(body), encoding="utf-8")
    return home / "prometheus.yml"


def argv(settings: Settings, config: Path) -> list[str]:
    """The server's command line."""
    return [
        binary(), f"--config.file={config}", f"--storage.tsdb.path={config.parent / 'data'}",
        f"--web.listen-address=127.0.0.1:{settings.local.prometheus_port}", "--storage.tsdb.retention.time=7d",
    ]


def url(settings: Settings) -> str:
    """Where the embedded Prometheus answers."""
    return f"http://127.0.0.1:{settings.local.prometheus_port}"


def ready(settings: Settings) -> bool:
    """True once the server answers ``/-/ready``."""
    return http_ok(f"{url(settings)}/-/ready")


GRAFANA = MONITORING.parent / "grafana"
_THRESHOLD = re.compile(r"\s*(>|<|==|!=|>=|<=)\s*[0-9.e+]+\s*$")


def expressions() -> dict[str, str]:
    """Every PromQL expression of the dashboards and alert rules (``where -> expr``).

    Dashboard variables take their default; an alert's threshold comparison is dropped, leaving
    the series it compares (so "returns data" means the metric exists, firing or not).
    """
    out: dict[str, str] = {}
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        defaults = {v["name"]: v["current"]["value"] for v in board.get("templating", {}).get("list", [])}
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for name, value in defaults.items():
                    expr = expr.replace(f"${name}", value)
                out[f"{path.name}: {panel['title']} [{target['refId']}]"] = expr
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            out[f"alerts.yml: {rule['alert']}"] = _THRESHOLD.sub("", rule["expr"])
    return out
