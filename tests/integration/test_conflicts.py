"""Conflicts on the real stack: both systems edit the same fields before the sync sees either."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from streams.local.harness import (
    REPO,
    Harness,
    running,
    scalar,
    wait_for,
    wait_for_capture,
    wait_for_identity,
)
from streams.mapping.profile import load_profile

pytestmark = pytest.mark.integration
DEMO = REPO / "schemas" / "mappings" / "demo.yaml"
PROFILE_FIELDS = load_profile(DEMO).synced_fields()


@pytest.fixture(scope="module")
def stack() -> Iterator[Harness]:
    h = Harness(Path(tempfile.mkdtemp(prefix="crm-erp-sync-conflicts-", dir="/tmp"))).start()
    # One policy of each kind, by editing the profile only: address becomes "latest".
    profile = (DEMO.read_text(encoding="utf-8")
               .replace("canonical_schema: ../canonical/customer.avsc",
                        f"canonical_schema: {REPO / 'schemas' / 'canonical' / 'customer.avsc'}")
               .replace("{crm: {column: address, convert: text}, erp: {column: address, convert: text},\n"
                        "                     policy: source_of_truth, owner: crm}",
                        "{crm: {column: address, convert: text}, erp: {column: address, convert: text},\n"
                        "                     policy: latest}"))
    assert "policy: latest}" in profile
    (h.root / "profile.yaml").write_text(profile, encoding="utf-8")
    h.write_config(processors={"profiles": [str(h.root / "profile.yaml")]})
    try:
        with running(h.spawn("capture")):
            wait_for_capture(h)
            yield h
    finally:
        h.stop()


SKEWS = [0, 60, -60]


@pytest.mark.parametrize("skew", SKEWS, ids=lambda s: f"worker_clock_{s:+d}s")
def test_one_conflict_per_policy_kind_and_manual_resolve(stack: Harness, skew: int) -> None:
    """The same results whatever the worker's clock says: echoes are told by transaction, ``latest`` by the
    databases' commit times (each run on its own pair, with its own values)."""
    h, n = stack, SKEWS.index(skew) + 1
    env = {"CRM_ERP_SYNC_CLOCK_SKEW_S": str(skew)}
    with running(h.spawn("worker", log_name="worker.log", env=env)):
        wait_for_identity(h)
        with h.connect("sync") as conn:
            crm_id, erp_id = conn.execute(
                "SELECT crm_id, erp_id FROM sync.xref WHERE linked_by = 'exact' ORDER BY crm_id OFFSET %s LIMIT 1",
                (n,)).fetchone()
        with h.connect("sync") as conn:
            # Settled: every synced field of the pair agreed, and no write of the sync in flight.
            def settled() -> bool:
                state = scalar(conn, "SELECT state FROM sync.entity_state s JOIN sync.xref x"
                                     " USING (entity, global_id) WHERE x.crm_id = %s", crm_id)
                fields = (state or {}).get("fields", {})
                synced = [f for f in PROFILE_FIELDS if f in fields]
                return len(synced) == len(PROFILE_FIELDS) and all(
                    "synced" in fields[f] and not fields[f]["inflight"] and not fields[f]["deferred"]
                    for f in synced)

            wait_for(settled, 90, 0.3, "the pair's initial alignment to settle")
    # The worker is stopped: edit the same four fields on both sides (the ERP later).
    with h.connect("crm") as crm:
        crm.execute("UPDATE accounts SET email = 'crm.side@example.com', credit_limit = 1.00,"
                    " address = 'CRM 地址', uscc = %s WHERE id = %s", (f"CRMTAX00000000000{n}", crm_id))
    with h.connect("erp") as erp:
        erp.execute("UPDATE customers SET email = 'erp.side@example.com', credit_limit_fen = 200,"
                    " address = 'ERP 地址', tax_no = %s WHERE cust_no = %s", (f"ERPTAX00000000000{n}", erp_id))
    with running(h.spawn("worker", log_name="worker.log", env=env)), h.connect("crm") as crm, h.connect("erp") as erp:
        def both(crm_sql: str, erp_sql: str) -> tuple[Any, Any]:
            return (scalar(crm, crm_sql, crm_id), scalar(erp, erp_sql, erp_id))

        wait_for(lambda: both("SELECT email FROM accounts WHERE id = %s",
                              "SELECT email FROM customers WHERE cust_no = %s")
                 == ("crm.side@example.com",) * 2, 90, 0.3, "email: the CRM (owner) wins")
        wait_for(lambda: both("SELECT credit_limit FROM accounts WHERE id = %s",
                              "SELECT credit_limit_fen FROM customers WHERE cust_no = %s")
                 == (Decimal("2.00"), 200), 90, 0.3, "credit limit: the ERP (owner) wins")
        wait_for(lambda: both("SELECT address FROM accounts WHERE id = %s",
                              "SELECT address FROM customers WHERE cust_no = %s")
                 == ("ERP 地址",) * 2, 90, 0.3, "address: the latest edit (ERP) wins")
        with h.connect("sync") as conn:
            def by_field() -> dict[str, list[dict[str, Any]]]:
                rows = conn.execute(
                    "SELECT field, kind, resolution, status, id FROM sync.conflicts c JOIN sync.xref x"
                    " USING (entity, global_id) WHERE x.crm_id = %s AND c.kind <> 'initial_mismatch'"
                    " AND c.detected_at > now() - interval '10 minutes'", (crm_id,)).fetchall()
                out: dict[str, list[dict[str, Any]]] = {}
                for field, kind, resolution, status, cid in rows:
                    out.setdefault(field, []).append({"kind": kind, "resolution": resolution, "status": status,
                                                      "id": cid})
                return out

            found = wait_for(lambda: (c := by_field()) and "tax_id" in c and c, 90, 0.3, "the manual conflict")
            assert sorted(found) == ["address", "credit_limit_fen", "email", "tax_id"], found
            extra = {f: v for f, v in found.items() if len(v) != 1}
            assert not extra, f"more than one conflict for {sorted(extra)}: {extra}"  # one per field, never more
            assert found["email"][0]["resolution"] in ("crm", "reverted")
            assert found["credit_limit_fen"][0]["resolution"] in ("erp", "reverted")
            assert found["address"][0]["resolution"] == "erp"
            manual = found["tax_id"][0]
            assert (manual["resolution"], manual["status"]) == (None, "open")
            # Waiting for a person: nothing was written for tax_id.
            assert both("SELECT uscc FROM accounts WHERE id = %s", "SELECT tax_no FROM customers WHERE cust_no = %s") \
                == (f"CRMTAX00000000000{n}", f"ERPTAX00000000000{n}")
            listed = subprocess.run(h.cli("conflicts", "list"), capture_output=True, text=True, check=True)
            assert str(manual["id"]) in listed.stdout and "tax_id" in listed.stdout
            done = subprocess.run(h.cli("conflicts", "resolve", str(manual["id"]), "--value", f"AGREED00000000000{n}"),
                                  capture_output=True, text=True, check=False)
            assert done.returncode == 0, done.stderr
            wait_for(lambda: both("SELECT uscc FROM accounts WHERE id = %s",
                                  "SELECT tax_no FROM customers WHERE cust_no = %s")
                     == (f"AGREED00000000000{n}",) * 2, 90, 0.3, "the resolved value on both sides")
            assert scalar(conn, "SELECT status FROM sync.conflicts WHERE id = %s", manual["id"]) == "resolved"
            again = subprocess.run(h.cli("conflicts", "resolve", str(manual["id"]), "--take", "crm"),
                                   capture_output=True, text=True, check=False)
            assert again.returncode == 2 and "already resolved" in again.stderr
