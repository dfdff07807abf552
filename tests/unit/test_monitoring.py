"""The monitoring files: promtool accepts the config and rules, the alert unit tests pass, and every
metric the dashboards and alerts name is one the code declares."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from streams import metrics
from streams.local import prometheus
from streams.local.status import source_state
from streams.settings import load_settings

PROMTOOL = shutil.which("promtool")


def promtool(*args: str, cwd: Path = prometheus.MONITORING) -> str:
    assert PROMTOOL is not None, "promtool missing: ./run.sh installs the Debian package prometheus"
    result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_alert_rules_are_valid_and_their_unit_tests_pass() -> None:
    assert "SUCCESS: 12 rules found" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")


def test_every_alert_has_a_severity_a_summary_and_a_runbook() -> None:
    rules = yaml.safe_load((prometheus.MONITORING / "alerts.yml").read_text(encoding="utf-8"))
    tested = (prometheus.MONITORING / "alerts.test.yml").read_text(encoding="utf-8")
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"], rule["alert"]
        assert f"alertname: {rule['alert']}" in tested, f"{rule['alert']} has no unit test"


def test_the_embedded_config_with_its_targets_is_valid(tmp_path: Path) -> None:
    settings = load_settings(None, local={"state_dir": str(tmp_path)})
    config = prometheus.prepare(settings)
    targets = json.loads((config.parent / "targets" / "worker.json").read_text(encoding="utf-8"))
    assert targets[0]["targets"] == [f"127.0.0.1:{settings.processors.metrics_port}"]
    out = promtool("check", "config", str(config), cwd=tmp_path)
    assert "is valid prometheus config file syntax" in out and "WARNING" not in out


def _declared() -> set[str]:
    metrics.init_processor_series("customer")
    names = {"up"}
    for family in REGISTRY.collect():
        if family.name.startswith("sync_"):
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
            names |= {family.name + s for s in suffixes}
    return names


def test_dashboards_and_alerts_name_only_declared_metrics() -> None:
    declared = _declared()
    exprs = prometheus.expressions()
    assert len(exprs) > 20
    for where, expr in exprs.items():
        used = set(re.findall(r"\b(sync_[a-z_]+|up)\b(?=\s*[{\[)]|\s*$)", expr))
        assert used, f"{where}: no metric in {expr}"
        assert used <= declared, f"{where}: undeclared {used - declared}"


def test_dashboards_are_provisioned_with_one_datasource() -> None:
    provisioning = prometheus.GRAFANA / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))
    uid = source["datasources"][0]["uid"]
    assert yaml.safe_load((provisioning / "dashboards" / "crm-erp-sync.yml").read_text(encoding="utf-8"))["providers"]
    boards = sorted((prometheus.GRAFANA / "dashboards").glob("*.json"))
    assert {b.name for b in boards} == {"overview.json", "flow.json"}
    for board in boards:
        data = json.loads(board.read_text(encoding="utf-8"))
        ids = [p["id"] for p in data["panels"]]
        assert len(ids) == len(set(ids)), board.name
        for panel in data["panels"]:
            assert panel["datasource"]["uid"] == uid and panel["targets"], (board.name, panel["title"])


@pytest.mark.parametrize("event_age, heartbeat_age, state", [
    (2.0, 3.0, "streaming"),
    (600.0, 3.0, "idle"),
    (None, 3.0, "idle"),
    (600.0, 90.0, "STALLED"),
    (2.0, 90.0, "STALLED"),
    (None, None, "starting"),
])
def test_a_source_is_idle_while_it_heartbeats_and_stalled_when_it_does_not(
    event_age: float | None, heartbeat_age: float | None, state: str
) -> None:
    assert source_state(event_age, heartbeat_age) == state


@pytest.mark.parametrize("topic, heartbeat, data", [
    ("__debezium-heartbeat.crm", True, False),
    ("crm.sync_meta.heartbeat", True, False),  # the heartbeat action query's table changes every beat
    ("crm.sync_meta.debezium_signal", False, False),
    ("crm.transaction", False, False),
    ("crm.public.accounts", False, True),
])
def test_only_business_changes_count_as_events(topic: str, heartbeat: bool, data: bool) -> None:
    from streams.capture.sources import is_data, is_heartbeat

    assert (is_heartbeat(topic), is_data(topic, "crm")) == (heartbeat, data)


def test_a_worker_behind_without_progress_is_stalled_and_an_idle_one_is_not() -> None:
    from streams.local.status import worker_state

    def samples(lag: float, progress: float | None) -> dict[str, list[tuple[dict[str, str], float]]]:
        out: dict[str, list[tuple[dict[str, str], float]]] = {
            "sync_consumer_lag_messages": [({"topic": "t", "partition": "0"}, lag)]}
        if progress is not None:
            out["sync_stage_last_progress_timestamp_seconds"] = [({"stage": "reconcile"}, progress)]
        return out

    assert worker_state(samples(0, 1000.0), 5000.0).startswith("idle")
    assert worker_state(samples(7, 4990.0), 5000.0).startswith("progressing, 7")
    assert worker_state(samples(7, 1000.0), 5000.0) == "STALLED: 7 messages behind, last progress 4000s ago"
    assert worker_state(samples(7, None), 5000.0).startswith("STALLED")
    assert worker_state(None, 5000.0).startswith("unknown")
