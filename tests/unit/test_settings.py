"""Settings: YAML + env overrides, clear errors, masked secrets, local-mode addresses."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.settings import load_settings, production_warnings

# Every address a deployment must name (local.enabled: false).
PRODUCTION = ("local:\n  enabled: false\ncrm:\n  host: crm.db\n  dbname: crm\nerp:\n  host: erp.db\n  dbname: erp\n"
              "store:\n  host: sync.db\n  dbname: sync\n"
              "registry:\n  url: http://registry:8081\ncapture:\n  connect_url: http://connect:8083\n")


def test_yaml_then_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "sync.yaml"
    cfg.write_text(PRODUCTION.replace("crm:\n  host: crm.db\n  dbname: crm\n", "") +
                   "crm:\n  dbname: crm\n  host: db.example\n  password: s3cr3t-value\n"
                   "kafka:\n  bootstrap_servers: k1:9092\n", encoding="utf-8")
    monkeypatch.setenv("CRM_ERP_SYNC__KAFKA__BOOTSTRAP_SERVERS", "k2:9092")
    monkeypatch.setenv("CRM_ERP_SYNC__CRM__PORT", "6543")
    s = load_settings(cfg)
    assert s.crm.host == "db.example" and s.crm.port == 6543
    assert s.kafka.bootstrap_servers == "k2:9092"
    assert s.crm.resolved_password() == "s3cr3t-value"
    dump = s.masked()
    assert dump["crm"]["password"] == "********"
    assert "s3cr3t-value" not in repr(dump) and "s3cr3t-value" not in repr(s)


def test_bad_value_names_key_env_and_fix(tmp_path: Path) -> None:
    cfg = tmp_path / "sync.yaml"
    cfg.write_text("kafka:\n  security_protocol: PLAIN_TEXT\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    line = err.value.one_line()
    assert "kafka.security_protocol" in line and "CRM_ERP_SYNC__KAFKA__SECURITY_PROTOCOL" in line
    assert "PLAIN_TEXT" in line and "\n" not in line


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    cfg = tmp_path / "sync.yaml"
    cfg.write_text("registry:\n  ulr: http://x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"registry\.ulr"):
        load_settings(cfg)


def test_local_mode_derives_addresses_from_local_ports(tmp_path: Path) -> None:
    cfg = tmp_path / "sync.yaml"
    cfg.write_text("local:\n  postgres_port: 6000\n  broker_port: 6001\n  registry_port: 6002\n"
                   "erp:\n  dbname: erp\n  port: 7000\n", encoding="utf-8")
    s = load_settings(cfg)
    assert (s.crm.port, s.erp.port, s.store.port) == (6000, 7000, 6000)
    assert s.kafka.bootstrap_servers == "127.0.0.1:6001" and s.registry.url == "http://127.0.0.1:6002"
    assert s.local.state_dir == tmp_path / ".state"
    assert s.crm.password_file == tmp_path / ".state" / "secrets" / "db-password"


def test_the_local_cluster_creates_the_databases_configured_on_it(tmp_path: Path) -> None:
    from streams.local.stack import local_databases

    cfg = tmp_path / "sync.yaml"
    cfg.write_text("erp:\n  dbname: erpnext\n  port: 7000\nstore:\n  dbname: sync_store\n", encoding="utf-8")
    assert local_databases(load_settings(cfg)) == ("crm", "sync_store")  # the erp is elsewhere


def test_shipped_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "sync.yaml"
    s = load_settings(example)
    assert s.capture.sources == ("crm", "erp")


def test_kafka_security_reaches_faust(tmp_path: Path) -> None:
    import faust

    from streams.app import broker_credentials

    cfg = tmp_path / "sync.yaml"
    cfg.write_text(PRODUCTION + "kafka:\n  bootstrap_servers: k1:9093\n  security_protocol: SASL_SSL\n"
                   "  sasl_mechanism: SCRAM-SHA-512\n  sasl_username: sync\n  sasl_password: pw-from-test\n",
                   encoding="utf-8")
    creds = broker_credentials(load_settings(cfg))
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, str(creds.mechanism.value)) == ("sync", "pw-from-test", "SCRAM-SHA-512")
    assert creds.ssl_context is not None
    assert broker_credentials(load_settings(None, local={"enabled": True})) is None


@pytest.mark.parametrize("missing", ["crm.host", "erp.host", "store.host", "kafka.bootstrap_servers", "registry.url"])
def test_a_production_config_names_every_address(tmp_path: Path, missing: str) -> None:
    """Without the embedded stack, an address left out is an error naming it, not a silent 127.0.0.1."""
    section, key = missing.split(".")
    text = PRODUCTION + "kafka:\n  bootstrap_servers: k1:9092\n"
    lines = text.splitlines()
    at = lines.index(f"{section}:")
    assert lines[at + 1].strip().startswith(f"{key}:")
    del lines[at + 1]
    if at + 1 == len(lines) or not lines[at + 1].startswith("  "):
        del lines[at]  # the section had nothing else
    cfg = tmp_path / "prod.yaml"
    cfg.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    line = err.value.one_line()
    assert missing in line and f"CRM_ERP_SYNC__{section.upper()}__{key.upper()}" in line and "\n" not in line


def test_small_replication_in_production_is_a_warning(tmp_path: Path) -> None:
    cfg = tmp_path / "prod.yaml"
    text = PRODUCTION
    cfg.write_text(text + "kafka:\n  bootstrap_servers: k1:9092\n", encoding="utf-8")
    warned = production_warnings(load_settings(cfg))
    assert len(warned) == 1 and "kafka.replication_factor 1" in warned[0] and "3 / 2" in warned[0]
    cfg.write_text(text + "kafka:\n  bootstrap_servers: k1:9092\n  replication_factor: 3\n"
                   "  min_insync_replicas: 2\n", encoding="utf-8")
    assert production_warnings(load_settings(cfg)) == []


def test_shipped_files_resolve_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default profiles and connectors are the installed ones; a path the user sets is against the config."""
    from streams import resources

    monkeypatch.chdir(tmp_path)
    s = load_settings(None)
    assert s.processors.profiles[0] == resources.resource("schemas", "mappings", "demo.yaml")
    assert all(p.is_file() for p in [*s.processors.profiles, *s.processors.documents])
    assert (s.capture.connectors_dir / "crm-postgres.json").is_file()
    cfg = tmp_path / "conf" / "sync.yaml"
    cfg.parent.mkdir()
    cfg.write_text("processors:\n  profiles: [mine.yaml]\n", encoding="utf-8")
    assert load_settings(cfg).processors.profiles == [cfg.parent / "mine.yaml"]
