"""Settings: YAML + env overrides, clear errors, masked secrets, local-mode addresses."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.settings import load_settings


def test_yaml_then_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "sync.yaml"
    cfg.write_text("crm:\n  dbname: crm\n  host: db.example\n  password: s3cr3t-value\n"
                   "kafka:\n  bootstrap_servers: k1:9092\nlocal:\n  enabled: false\n", encoding="utf-8")
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


def test_shipped_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "sync.yaml"
    s = load_settings(example)
    assert s.capture.sources == ("crm", "erp")


def test_kafka_security_reaches_faust(tmp_path: Path) -> None:
    import faust

    from streams.app import broker_credentials

    cfg = tmp_path / "sync.yaml"
    cfg.write_text("local:\n  enabled: false\nkafka:\n  security_protocol: SASL_SSL\n  sasl_mechanism: SCRAM-SHA-512\n"
                   "  sasl_username: sync\n  sasl_password: pw-from-test\n", encoding="utf-8")
    creds = broker_credentials(load_settings(cfg))
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, str(creds.mechanism.value)) == ("sync", "pw-from-test", "SCRAM-SHA-512")
    assert creds.ssl_context is not None
    assert broker_credentials(load_settings(None, local={"enabled": True})) is None
