"""`up` runs a real Prometheus scraping every part: every dashboard panel and alert expression
returns data under traffic, and a stalled source is told apart from an idle one."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from upstack import cli, db, start_up, stop_up, wait_up, write_config

from streams.local.harness import wait_for
from streams.local.prometheus import expressions

pytestmark = pytest.mark.e2e
# The alert's expression (alerts.yml: SyncSourceStalled) with its 60 s threshold lowered to 20 s, so
# the test waits seconds, not minutes; an idle source heartbeats every 5 s.
STALLED = "time() - max by (source) (sync_capture_last_heartbeat_timestamp_seconds) > 20"


def query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def traffic(config: Path) -> None:
    """Edits both ways and a non-owner edit (a conflict)."""
    with db(config, "sync") as sync:
        pairs = sync.execute("SELECT crm_id, erp_id FROM sync.xref WHERE linked_by = 'exact' LIMIT 5").fetchall()
    with db(config, "crm") as crm, db(config, "erp") as erp:
        for i, (crm_id, erp_id) in enumerate(pairs):
            crm.execute("UPDATE accounts SET email = %s WHERE id = %s", (f"mon{i}@example.com", crm_id))
            erp.execute("UPDATE customers SET credit_limit_fen = credit_limit_fen + 100 WHERE cust_no = %s", (erp_id,))
        erp.execute("UPDATE customers SET email = 'erp-side@example.com' WHERE cust_no = %s", (pairs[0][1],))


def test_prometheus_sees_every_panel_and_alert_and_tells_stalled_from_idle(scratch_root: Path) -> None:
    root = scratch_root
    config = write_config(root, compare={"interval_s": 10})  # continuous compare on: its panel has data
    base = f"http://127.0.0.1:{yaml.safe_load(config.read_text(encoding='utf-8'))['local']['prometheus_port']}"
    log = root / "up.log"
    proc = start_up(config, log)
    try:
        wait_up(proc, log)
        assert f"Prometheus {base}" in log.read_text(encoding="utf-8")
        wait_for(lambda: len(query(base, 'up{job=~"crm-erp-sync-.*"} == 1')) == 3, 120, 1.0,
                 "Prometheus to scrape capture, worker and registry")
        with db(config, "sync") as sync:
            wait_for(lambda: sync.execute("SELECT count(*) FROM sync.xref WHERE linked_by = 'exact'").fetchone()[0],
                     120, 0.5, "the identity bootstrap")
        traffic(config)
        for where, expr in expressions().items():
            wait_for(lambda e=expr: query(base, e), 120, 1.0, f"data for {where}: {expr}")

        # Idle: nothing changes now, but both sources still heartbeat. Stalled: the ERP's heartbeat
        # query waits on a lock, so its capture delivers nothing, while its process stays up.
        wait_for(lambda: query(base, STALLED) == [], 60, 1.0, "both sources heartbeating")
        with db(config, "erp") as erp:
            erp.autocommit = False
            erp.execute("LOCK TABLE sync_meta.heartbeat IN ACCESS EXCLUSIVE MODE")
            try:
                stalled = wait_for(lambda: query(base, STALLED), 90, 1.0, "the ERP source to count as stalled")
                assert [r["metric"]["source"] for r in stalled] == ["erp"]
                assert len(query(base, 'up{job="crm-erp-sync-capture"} == 1')) == 1  # stalled, not down
            finally:
                erp.rollback()
        wait_for(lambda: query(base, STALLED) == [], 60, 1.0, "the ERP source to recover")
        status = subprocess.run(cli(config, "status"), capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        lines = {ln.split()[1]: ln for ln in status.stdout.splitlines() if ln.strip().startswith(("source", "flow"))}
        assert set(lines) == {"crm", "erp", "customer", "product"}, status.stdout
        assert all(("streaming" in lines[s] or "idle" in lines[s]) and "heartbeat" in lines[s] for s in ("crm", "erp"))
        assert all("consumer lag" in lines[f] and "conflicts waiting" in lines[f] for f in ("customer", "product"))
        assert "dead letters 0 not replayed" in status.stdout, status.stdout
        assert re.search(r"documents \d+ pending, \d+ diverged \(crm-erp-sync documents\)", status.stdout)
    finally:
        stop_up(proc)
