"""The README's `up` on a fresh state dir, driven through the real CLI, and its start-up errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest
import yaml

from streams.local.harness import REPO, Harness, TopicReader, topic_names, wait_for
from streams.local.ports import free_port, free_ports
from streams.local.postgres import LocalPostgres, find_pg_bin

pytestmark = pytest.mark.e2e


def _config(root: Path, **sections: dict[str, object]) -> Path:
    pg_port, broker_port, registry_port = free_ports(3)
    cfg = {"local": {"state_dir": str(root / "state"), "postgres_port": pg_port, "broker_port": broker_port,
                     "registry_port": registry_port, "seed_accounts": 40},
           "capture": {"connectors_dir": str(REPO / "connectors")}}
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)  # type: ignore[attr-defined]
    path = root / "sync.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _cli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "streams", "--config", str(config), *args]


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def _db(config: Path, dbname: str) -> psycopg.Connection[object]:
    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    password = (Path(cfg["local"]["state_dir"]) / "secrets" / "db-password").read_text(encoding="utf-8").strip()
    return psycopg.connect(host="127.0.0.1", port=cfg["local"]["postgres_port"], dbname=dbname,
                           user="sync", password=password, autocommit=True)


def _topics_hold_every_row(config: Path) -> None:
    """For every captured table, the topic has one live key per row of the table."""
    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    bootstrap = f"127.0.0.1:{cfg['local']['broker_port']}"
    registry = f"http://127.0.0.1:{cfg['local']['registry_port']}"
    expected: dict[str, int] = {}
    for system in ("crm", "erp"):
        with _db(config, system) as conn:
            for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall():
                row = conn.execute(f"SELECT count(*) FROM public.{table}").fetchone()
                expected[f"{system}.public.{table}"] = int(row[0]) if row else 0
    populated = [t for t, n in expected.items() if n]
    wait_for(lambda: set(populated) <= set(topic_names(bootstrap)), 120, 0.5, "every populated table's topic")
    reader = TopicReader(bootstrap, registry, populated)

    def live_keys() -> dict[str, int]:
        latest: dict[tuple[str, str], object] = {}
        for r in reader.records:
            latest[(r["topic"], repr(r["key"]))] = r["value"]
        counts = dict.fromkeys(populated, 0)
        for (topic, _), value in latest.items():
            counts[topic] += value is not None
        return counts

    try:
        reader.wait(lambda _: live_keys() == {t: expected[t] for t in populated}, 180,
                    f"topics to hold every row {expected}")
    finally:
        reader.close()


def _start_up(config: Path, log: Path) -> subprocess.Popen[str]:
    out = log.open("a", encoding="utf-8")
    return subprocess.Popen(_cli(config, "up"), stdout=out, stderr=subprocess.STDOUT, text=True, cwd=REPO)


def _stop_up(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) == 0


def test_up_stop_up_never_reseeds_and_resnapshots_into_empty_broker() -> None:
    root = Path(tempfile.mkdtemp(prefix="crm-erp-sync-e2e-", dir="/tmp"))
    os.chmod(root, 0o755)  # the postgres user must reach the data dir when we run as root
    config = _config(root)
    log = root / "up.log"
    proc = _start_up(config, log)
    try:
        wait_for(lambda: "crm-erp-sync is up" in log.read_text(encoding="utf-8") or proc.poll() is not None,
                 180, 0.5, "`up` to report it is up")
        assert proc.poll() is None, log.read_text(encoding="utf-8")
        with _db(config, "crm") as conn:
            accounts = conn.execute("SELECT count(*) FROM accounts").fetchone()
        _topics_hold_every_row(config)
        status = subprocess.run(_cli(config, "status"), capture_output=True, text=True, check=True)
        assert "registry  ok" in status.stdout and "slot crm_erp_sync_crm active" in status.stdout
    finally:
        _stop_up(proc)
    text = log.read_text(encoding="utf-8")
    assert "demo schema and data created" in text and "stopped." in text

    proc = _start_up(config, log)
    try:
        wait_for(lambda: log.read_text(encoding="utf-8").count("crm-erp-sync is up") == 2 or proc.poll() is not None,
                 180, 0.5, "the second `up`")
        assert proc.poll() is None, log.read_text(encoding="utf-8")
        assert "crm: already seeded" in log.read_text(encoding="utf-8")
        with _db(config, "crm") as conn:
            assert conn.execute("SELECT count(*) FROM accounts").fetchone() == accounts
        _topics_hold_every_row(config)
        # A second `up` on the same state dir is refused while the first runs.
        again = subprocess.run(_cli(config, "up"), capture_output=True, text=True, timeout=60)
        assert "already running" in _one_error_line(again)
    finally:
        down = subprocess.run(_cli(config, "down"), capture_output=True, text=True, timeout=180)
        assert down.returncode == 0, down.stderr
        proc.wait(30)


def test_taken_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        config = _config(tmp_path, local={"broker_port": port})
        result = subprocess.run(_cli(config, "up"), capture_output=True, text=True, timeout=120)
    line = _one_error_line(result)
    assert f"port {port} (local.broker_port) is already in use" in line
    assert "CRM_ERP_SYNC__LOCAL__BROKER_PORT" in line


def test_missing_java_is_one_clear_line(harness: Harness) -> None:
    env = {**os.environ, "JAVA_HOME": "/nonexistent/java"}
    result = subprocess.run(harness.cli("capture"), capture_output=True, text=True, timeout=120, env=env)
    line = _one_error_line(result)
    assert "Java not found" in line and "openjdk-17" in line


def test_database_without_logical_wal_is_one_clear_line(harness: Harness) -> None:
    root = Path(tempfile.mkdtemp(prefix="crm-erp-sync-replica-", dir="/tmp"))
    os.chmod(root, 0o755)
    pg = LocalPostgres(root / "data", free_port(), find_pg_bin(None), root / "pw")
    pg.initdb()
    with (root / "data" / "postgresql.auto.conf").open("a", encoding="utf-8") as conf:
        conf.write("wal_level = replica\n")
    pg.start()
    try:
        pw_file = str(pg.password_file)
        config = harness.write_config(crm={"port": pg.port, "password_file": pw_file})
        result = subprocess.run(harness.cli("capture"), capture_output=True, text=True, timeout=120)
        line = _one_error_line(result)
        assert "wal_level=replica" in line and "ALTER SYSTEM SET wal_level = logical" in line
    finally:
        harness.write_config()
        pg.stop()
    assert config.exists()
