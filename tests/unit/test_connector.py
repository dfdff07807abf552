"""Connector files and placeholder resolution (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.capture.connector import embedded_properties, load_connector, resolve_placeholders
from streams.errors import ConfigError

CONNECTORS = Path(__file__).resolve().parents[2] / "connectors"


@pytest.mark.parametrize("source", ["crm", "erp"])
def test_connector_files_are_connect_rest_form_without_secrets(source: str) -> None:
    data = load_connector(CONNECTORS / f"{source}-postgres.json")
    cfg = data["config"]
    assert data["name"] == f"{source}-postgres" and cfg["topic.prefix"] == source
    assert cfg["database.password"].startswith("${env:")
    assert cfg["decimal.handling.mode"] == "precise"
    assert cfg["producer.override.enable.idempotence"] == "true"
    assert int(cfg["heartbeat.interval.ms"]) <= 10000 and cfg["heartbeat.action.query"]
    assert cfg["value.converter"] == "io.confluent.connect.avro.AvroConverter"


def test_placeholders_resolve_env_and_file() -> None:
    cfg = {"a": "${env:HOST}:${env:PORT}", "b": "${file:/etc/secret.properties:pw}", "c": "plain"}
    out = resolve_placeholders(cfg, {"HOST": "db", "PORT": "5432"}, read_file=lambda p: {"pw": "x1"})
    assert out == {"a": "db:5432", "b": "x1", "c": "plain"}


def test_missing_env_names_key_and_variable() -> None:
    with pytest.raises(ConfigError) as err:
        resolve_placeholders({"database.password": "${env:CRM_DB_PASSWORD}"}, {})
    assert "database.password" in str(err.value) and "CRM_DB_PASSWORD" in str(err.value)


def test_embedded_properties_drop_connect_only_keys(tmp_path: Path) -> None:
    props = embedded_properties({"topic.creation.default.partitions": "3", "producer.override.acks": "all",
                                 "slot.name": "s"}, "crm-postgres", tmp_path / "o", 1000)
    assert "topic.creation.default.partitions" not in props and "producer.override.acks" not in props
    assert props["slot.name"] == "s" and props["offset.storage.file.filename"] == str(tmp_path / "o")
