"""The README's `up` on a fresh state dir, driven through the real CLI, and its start-up errors."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from upstack import cli, db, one_error_line, start_up, stop_up, wait_up, write_config

from streams.local.harness import Harness, TopicReader, end_offsets, wait_for
from streams.local.ports import free_port
from streams.local.postgres import LocalPostgres, find_pg_bin

pytestmark = pytest.mark.e2e


def _topics_hold_every_row(config: Path) -> None:
    """For every captured table, the topic has one live key per row of the table."""
    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    bootstrap = f"127.0.0.1:{cfg['local']['broker_port']}"
    registry = f"http://127.0.0.1:{cfg['local']['registry_port']}"

    def row_counts() -> dict[str, int]:  # read each time: the running worker creates counterparts
        counts: dict[str, int] = {}
        for system in ("crm", "erp"):
            with db(config, system) as conn:
                for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall():
                    row = conn.execute(f"SELECT count(*) FROM public.{table}").fetchone()
                    counts[f"{system}.public.{table}"] = int(row[0]) if row else 0
        return counts

    populated = [t for t, n in row_counts().items() if n]
    wait_for(lambda: all(end_offsets({"bootstrap.servers": bootstrap}, populated).values()), 120, 0.5,
             "every populated table's topic")
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
        reader.wait(lambda _: live_keys() == {t: n for t, n in row_counts().items() if t in populated}, 180,
                    "topics to hold every row")
    finally:
        reader.close()


def _seeded_accounts(conn: Any) -> int:
    """CRM accounts not created by the sync (the worker creates counterparts of ERP-only customers)."""
    if conn.execute("SELECT to_regclass('sync_meta.created')").fetchone()[0] is None:
        return int(conn.execute("SELECT count(*) FROM accounts").fetchone()[0])
    return int(conn.execute("SELECT count(*) FROM accounts a WHERE NOT EXISTS"
                            " (SELECT 1 FROM sync_meta.created c WHERE c.key = a.id::text)").fetchone()[0])


def _records(config: Path, topic: str) -> int:
    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    return end_offsets({"bootstrap.servers": f"127.0.0.1:{cfg['local']['broker_port']}"}, [topic])[topic]


def test_up_down_up_keeps_topics_and_never_reseeds_or_resnapshots(scratch_root: Path) -> None:
    root = scratch_root
    config = write_config(root)
    log = root / "up.log"
    proc = start_up(config, log)
    try:
        wait_up(proc, log)
        with db(config, "crm") as conn:
            accounts = _seeded_accounts(conn)
            contacts = int(conn.execute("SELECT count(*) FROM contacts").fetchone()[0])
        _topics_hold_every_row(config)
        status = subprocess.run(cli(config, "status"), capture_output=True, text=True, check=True)
        assert "registry  ok" in status.stdout and "slot crm_erp_sync_crm active" in status.stdout
        assert "topic sync.changes.customer" in status.stdout and "capture crm   connector RUNNING" in status.stdout
        snapshot = _records(config, "crm.public.contacts")  # nothing but capture writes this topic
        assert snapshot == contacts
    finally:
        stop_up(proc)
    text = log.read_text(encoding="utf-8")
    assert "demo schema and data created" in text and "stopped." in text

    proc = start_up(config, log)
    try:
        wait_up(proc, log, times=2)
        assert "crm (crm): already seeded" in log.read_text(encoding="utf-8")
        with db(config, "crm") as conn:
            assert _seeded_accounts(conn) == accounts
            conn.execute("UPDATE contacts SET title = 'after restart'"
                         " WHERE id = (SELECT id FROM contacts ORDER BY id LIMIT 1)")
        # The topics survived, and capture resumed from its offsets: the edit is the one new record
        # (a re-snapshot would have written every contact again before it).
        wait_for(lambda: _records(config, "crm.public.contacts") > snapshot, 120, 0.5, "the edit captured")
        assert _records(config, "crm.public.contacts") == snapshot + 1
        _topics_hold_every_row(config)
        # A second `up` on the same state dir is refused while the first runs.
        again = subprocess.run(cli(config, "up"), capture_output=True, text=True, timeout=60)
        assert "already running" in one_error_line(again)
    finally:
        down = subprocess.run(cli(config, "down"), capture_output=True, text=True, timeout=180)
        assert down.returncode == 0, down.stderr
        proc.wait(30)


def test_up_with_the_erpnext_like_erp_syncs_through_its_own_profiles(scratch_root: Path) -> None:
    """`up --erp erpnext` with no profiles configured: its schema, seed and profiles, and an edit goes through."""
    root = scratch_root
    config = write_config(root)
    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    del cfg["processors"]  # the chosen ERP's own profiles
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    log = root / "up.log"
    proc = start_up(config, log, "--erp", "erpnext")
    try:
        wait_up(proc, log)
        assert "erp (erp): demo schema and data created" in log.read_text(encoding="utf-8")
        with db(config, "sync") as conn:
            crm_id, erp_id = wait_for(lambda: conn.execute(
                "SELECT crm_id, erp_id FROM sync.xref WHERE entity = 'customer' AND linked_by = 'exact'"
                " ORDER BY crm_id LIMIT 1").fetchone(), 120, 0.5, "a linked pair")
        assert erp_id.startswith("CUST-")
        with db(config, "crm") as crm:
            crm.execute("UPDATE accounts SET email = 'up.erpnext@example.com' WHERE id = %s", (crm_id,))
        with db(config, "erp") as erp:
            wait_for(lambda: erp.execute('SELECT email_id, modified_by FROM "tabCustomer" WHERE name = %s',
                                         (erp_id,)).fetchone() == ("up.erpnext@example.com", "crm-erp-sync"),
                     120, 0.5, "the CRM edit in the ERPNext-like customer")
    finally:
        stop_up(proc)


def test_taken_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        config = write_config(tmp_path, local={"broker_port": port})
        result = subprocess.run(cli(config, "up"), capture_output=True, text=True, timeout=120)
    line = one_error_line(result)
    assert f"port {port} (local.broker_port) is already in use" in line
    assert "CRM_ERP_SYNC__LOCAL__BROKER_PORT" in line


def test_missing_prometheus_is_one_clear_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = subprocess.run(cli(config, "up"), capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PATH": str(tmp_path)})  # no prometheus on it
    line = one_error_line(result)
    assert "prometheus is not installed" in line and "local.prometheus: false" in line


def test_missing_maven_is_one_clear_line(tmp_path: Path) -> None:
    """A machine whose jar cache is empty and that has no Maven: one line naming Maven, nothing started."""
    java_home = Path(shutil.which("java") or "java").resolve().parent.parent
    config = write_config(tmp_path, local={"jar_cache": str(tmp_path / "empty-cache"), "prometheus": False})
    result = subprocess.run(cli(config, "up"), capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PATH": str(tmp_path), "JAVA_HOME": str(java_home)})
    line = one_error_line(result)
    assert "Maven (mvn) not found" in line and "apt-get install maven" in line, line
    assert "starting PostgreSQL" not in result.stdout


def test_a_worker_that_cannot_start_fails_up_with_its_reason(scratch_root: Path) -> None:
    root = scratch_root
    config = write_config(root, processors={"profiles": [str(root / "missing.yaml")]})
    result = subprocess.run(cli(config, "up"), capture_output=True, text=True, timeout=300)
    line = one_error_line(result)
    assert "worker did not start" in line and "missing.yaml" in line, line


def test_missing_java_is_one_clear_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    env = {**os.environ, "JAVA_HOME": "/nonexistent/java"}
    result = subprocess.run(cli(config, "up"), capture_output=True, text=True, timeout=120, env=env)
    line = one_error_line(result)
    assert "Java not found" in line and "openjdk-17" in line
    assert "starting PostgreSQL" not in result.stdout  # nothing was started


def test_database_without_logical_wal_is_one_clear_line(harness: Harness, scratch_root: Path) -> None:
    root = scratch_root
    pg = LocalPostgres(root / "data", free_port(), find_pg_bin(None), root / "pw")
    pg.initdb()
    with (root / "data" / "postgresql.auto.conf").open("a", encoding="utf-8") as conf:
        conf.write("wal_level = replica\n")
    pg.start()
    try:
        pw_file = str(pg.password_file)
        config = harness.write_config(crm={"port": pg.port, "password_file": pw_file})
        result = subprocess.run(harness.cli("capture"), capture_output=True, text=True, timeout=120)
        line = one_error_line(result)
        assert "wal_level=replica" in line and "ALTER SYSTEM SET wal_level = logical" in line
    finally:
        harness.write_config()
        pg.stop()
    assert config.exists()
