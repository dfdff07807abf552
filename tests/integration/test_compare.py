"""`crm-erp-sync compare`: the seed explained category by category, and drift made behind the sync's back found."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from streams.bench.convergence import metric
from streams.local.harness import Harness, live_stack, running, scalar, wait_for
from streams.local.ports import free_port
from streams.local.status import scrape

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def synced(failures: Callable[[], bool]) -> Iterator[Harness]:
    with live_stack("compare", failed=failures) as h:
        yield h


def report(h: Harness) -> dict[str, Any]:
    done = subprocess.run(h.cli("compare", "--format", "json"), capture_output=True, text=True, check=False,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    reports: list[dict[str, Any]] = json.loads(done.stdout)
    return reports[0]


def settled(h: Harness) -> dict[str, Any]:
    """A report once the initial alignment is over: no linked pair drifts (but those in conflict), no creation
    waits for its hold, every row the sync created at start has come back through capture and been linked, and
    two reports in a row count the same (a creation between its hold and its write is in neither count)."""
    last: dict[str, Any] = {}
    pending = [0]

    def aligned() -> dict[str, Any] | None:
        previous = last.get("categories")
        last.update(report(h))
        with h.connect("sync") as conn:
            pending[0] = int(scalar(conn, "SELECT count(*) FROM sync.pending_creates"))
        in_flight = sum(last["categories"][system]["created_unlinked"] for system in ("crm", "erp"))
        done = not last["drift"] and not in_flight and not pending[0] and last["categories"] == previous
        return dict(last) if done else None

    def still_open() -> str:
        return (f"{len(last['drift'])} drifting fields, {pending[0]} creations on hold, created and not linked yet"
                f" (CRM, ERP) {[last['categories'][s]['created_unlinked'] for s in ('crm', 'erp')]}")

    found: dict[str, Any] = wait_for(aligned, 120, 2.0, "the initial alignment", still_open)
    return found


def test_the_seed_is_explained_and_adds_up(synced: Harness) -> None:
    h = synced
    found = settled(h)
    with h.connect("crm") as crm, h.connect("erp") as erp, h.connect("sync") as conn:
        totals = {"crm": scalar(crm, "SELECT count(*) FROM accounts"),
                  "erp": scalar(erp, "SELECT count(*) FROM customers")}
        pairs = scalar(conn, "SELECT count(*) FROM sync.xref WHERE entity = 'customer' AND crm_id IS NOT NULL"
                             " AND erp_id IS NOT NULL")
        reviewing = scalar(conn, "SELECT count(*) FROM sync.identity_review WHERE status = 'open' AND system = 'crm'")
    assert found["totals"] == totals
    for system in ("crm", "erp"):
        assert sum(found["categories"][system].values()) == totals[system]  # every record in one category
        linked = sum(found["categories"][system][c] for c in ("linked_equal", "linked_drifted", "in_conflict"))
        assert linked == pairs
    assert found["categories"]["crm"]["in_review"] == reviewing > 0
    assert found["categories"]["crm"]["not_eligible"] > 0  # the seed's tier-C singles: the rule wants A or B
    assert any("tier in" in reason for reason in found["not_eligible_because"]), found["not_eligible_because"]
    assert found["categories"]["crm"]["unknown"] == found["categories"]["erp"]["unknown"] == 0
    done = subprocess.run(h.cli("compare", "--format", "csv"), capture_output=True, text=True, check=True, timeout=300)
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    for system in ("crm", "erp"):  # the same counts, for a spreadsheet
        assert sum(int(r["count"]) for r in rows if r["row"] == "count" and r["entity_or_rule"] == "customer"
                   and r["system"] == system) == totals[system]


def test_a_row_the_sync_created_and_has_not_seen_yet_is_not_unknown(synced: Harness) -> None:
    """Created by the applier (recorded in sync_meta.created), its change event not read yet: said so."""
    h = synced
    settled(h)
    with h.connect("erp") as erp:
        key = scalar(erp, "SELECT max(cust_no) FROM customers") + "Z"
    behind_the_syncs_back(h, ("INSERT INTO customers (cust_no, full_name) VALUES (%s, '刚建客户有限公司')", (key,)),
                          ("INSERT INTO sync_meta.created (entity, global_id, key) VALUES ('customer', %s, %s)",
                           (str(uuid.uuid4()), key)))
    try:
        found = report(h)
        assert found["categories"]["erp"]["created_unlinked"] == 1 and found["categories"]["erp"]["unknown"] == 0
    finally:
        with h.connect("erp") as erp:  # gone again, before its change event can ever be read
            erp.execute("DELETE FROM sync_meta.created WHERE key = %s", (key,))
        behind_the_syncs_back(h, ("DELETE FROM customers WHERE cust_no = %s", (key,)))


def behind_the_syncs_back(h: Harness, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Run ERP writes no change event will carry: the table is out of the publication meanwhile."""
    with h.connect("erp") as erp:
        publication = scalar(erp, "SELECT pubname FROM pg_publication_tables WHERE tablename = 'customers'")
        erp.execute(f"ALTER PUBLICATION {publication} DROP TABLE public.customers")
        try:
            for statement, params in statements:
                erp.execute(statement, params)
        finally:
            erp.execute(f"ALTER PUBLICATION {publication} ADD TABLE public.customers")


def test_drift_behind_the_syncs_back_is_found_field_by_field(synced: Harness) -> None:
    """Writes the sync cannot see (the table out of the publication meanwhile): found, category and field exact;
    repaired through the policies, then a second compare is clean."""
    h = synced
    settled(h)
    with h.connect("sync") as conn:
        pairs = conn.execute("SELECT crm_id, erp_id FROM sync.xref WHERE linked_by = 'exact' ORDER BY crm_id"
                             " LIMIT 2").fetchall()
        since = scalar(conn, "SELECT now()")
    behind_the_syncs_back(
        h, ("UPDATE customers SET email = 'drift@example.com' WHERE cust_no = %s", (pairs[0][1],)),
        ("UPDATE customers SET address = '漂移路 1 号', credit_limit_fen = credit_limit_fen + 1 WHERE cust_no = %s",
         (pairs[1][1],)),
        ("INSERT INTO customers (full_name) VALUES ('背后新客有限公司')", ()))
    found = report(h)
    drift = sorted((d["erp_id"], d["field"]) for d in found["drift"])
    assert drift == sorted([(pairs[0][1], "email"), (pairs[1][1], "address"), (pairs[1][1], "credit_limit_fen")])
    email = next(d for d in found["drift"] if d["field"] == "email")
    assert email["erp"] == "drift@example.com" and email["crm"] != email["erp"]
    assert found["categories"]["erp"]["unknown"] == 1 and found["categories"]["crm"]["linked_drifted"] == 2
    assert sum(found["categories"]["erp"].values()) == found["totals"]["erp"]
    # Repaired through the policies: the CRM owns e-mail and address (the ERP is set back), the ERP owns
    # the credit limit (the CRM follows); the row the sync never saw meets identity and is created in the CRM.
    done = subprocess.run(h.cli("compare", "--repair"), capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0 and "drifted pairs re-read 2" in done.stderr, done.stderr
    clean = wait_for(lambda: (r := report(h)) and not r["drift"] and not r["categories"]["erp"]["unknown"] and r,
                     120, 2.0, "a clean second compare")
    with h.connect("crm") as crm, h.connect("erp") as erp:
        crm_email = scalar(crm, "SELECT email FROM accounts WHERE id = %s", pairs[0][0])
        assert scalar(erp, "SELECT email FROM customers WHERE cust_no = %s", pairs[0][1]) == crm_email
        assert crm_email != "drift@example.com"
        assert scalar(erp, "SELECT address FROM customers WHERE cust_no = %s", pairs[1][1]) != "漂移路 1 号"
        fen = scalar(erp, "SELECT credit_limit_fen FROM customers WHERE cust_no = %s", pairs[1][1])
        assert scalar(crm, "SELECT credit_limit * 100 FROM accounts WHERE id = %s", pairs[1][0]) == fen
        wait_for(lambda: scalar(crm, "SELECT count(*) FROM accounts WHERE legal_name = '背后新客有限公司'") == 1,
                 60, 1.0, "the unseen ERP customer created in the CRM")
    assert sum(clean["categories"]["erp"].values()) == clean["totals"]["erp"]
    # The repairs are in the audit trail, once each: the ERP's e-mail and address set back (the CRM owns
    # them: the drift is a non-owner edit its policy reverts), the CRM's credit limit following the ERP
    # (its owner), the unseen customer created in the CRM.
    with h.connect("sync") as conn:
        def repairs() -> list[tuple[Any, ...]]:  # the initial alignment's own creates aside
            return sorted(conn.execute(
                "SELECT system, key, column_name, kind FROM sync.audit WHERE written_at >= %s AND (kind <> 'create'"
                " OR new_value->>'legal_name' = '背后新客有限公司')", (since,)).fetchall())

        created = wait_for(lambda: [r for r in repairs() if r[3] == "create"], 60, 1.0, "the create in the audit")
        assert sorted(r for r in repairs() if r[3] != "create") == sorted([
            ("erp", pairs[0][1], "email", "resolution"), ("erp", pairs[1][1], "address", "resolution"),
            ("crm", pairs[1][0], "credit_limit", "update")]), repairs()
        assert [(system, column) for system, _, column, _ in created] == [("crm", "")]


def test_continuous_mode_alerts_on_drift_two_runs_find_and_clears_after_the_repair(synced: Harness) -> None:
    """A worker comparing every 10 s: the drift in its metrics, persisting after the second run, gone once repaired."""
    h = synced
    settled(h)
    port = free_port()
    env = {"CRM_ERP_SYNC__COMPARE__INTERVAL_S": "10", "CRM_ERP_SYNC__PROCESSORS__METRICS_PORT": str(port)}
    with running(h.spawn("worker", log_name="worker-compare.log", env=env)):
        wait_for(lambda: metric(port, "sync_drift_last_run_timestamp_seconds", entity="customer") if scrape(port)
                 else 0, 90, 1.0, "a first run")
        assert metric(port, "sync_drift_records", entity="customer", category="linked_drifted") == 0
        assert metric(port, "sync_drift_records", entity="customer", system="crm", category="linked_equal") > 0
        with h.connect("sync") as conn:
            erp_id = scalar(conn, "SELECT erp_id FROM sync.xref WHERE linked_by = 'exact' ORDER BY crm_id"
                                  " OFFSET 5 LIMIT 1")
        behind_the_syncs_back(h, ("UPDATE customers SET email = 'still-drifting@example.com' WHERE cust_no = %s",
                                  (erp_id,)))
        wait_for(lambda: metric(port, "sync_drift_persisting_records", entity="customer") == 1, 90, 1.0,
                 "the drift found by two runs in a row (SyncDriftPersists fires on it)")
        assert metric(port, "sync_drift_records", entity="customer", system="erp", category="linked_drifted") == 1
        done = subprocess.run(h.cli("compare", "--repair"), capture_output=True, text=True, check=False, timeout=300)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: metric(port, "sync_drift_persisting_records", entity="customer") == 0
                 and metric(port, "sync_drift_records", entity="customer", category="linked_drifted") == 0,
                 90, 1.0, "a run without the drift after the repair")
        with h.connect("erp") as erp:
            assert scalar(erp, "SELECT email FROM customers WHERE cust_no = %s", erp_id) != "still-drifting@example.com"
