"""`crm-erp-sync compare`: the seed explained category by category, and drift made behind the sync's back found."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from streams.local.harness import Harness, live_stack, scalar, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def synced() -> Iterator[Harness]:
    with live_stack("compare") as h:
        yield h


def report(h: Harness) -> dict[str, Any]:
    done = subprocess.run(h.cli("compare", "--format", "json"), capture_output=True, text=True, check=False,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    reports: list[dict[str, Any]] = json.loads(done.stdout)
    return reports[0]


def settled(h: Harness) -> dict[str, Any]:
    """A report once the initial alignment is over (no linked pair drifts but those in conflict)."""
    return wait_for(lambda: (r := report(h)) and not r["drift"] and r, 120, 2.0, "the initial alignment")


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


def test_drift_behind_the_syncs_back_is_found_field_by_field(synced: Harness) -> None:
    """Writes the sync cannot see (the table out of the publication meanwhile): found, category and field exact;
    repaired through the policies, then a second compare is clean."""
    h = synced
    settled(h)
    with h.connect("sync") as conn:
        pairs = conn.execute("SELECT crm_id, erp_id FROM sync.xref WHERE linked_by = 'exact' ORDER BY crm_id"
                             " LIMIT 2").fetchall()
    with h.connect("erp") as erp:
        publication = scalar(erp, "SELECT pubname FROM pg_publication_tables WHERE tablename = 'customers'")
        erp.execute(f"ALTER PUBLICATION {publication} DROP TABLE public.customers")
        try:
            erp.execute("UPDATE customers SET email = 'drift@example.com' WHERE cust_no = %s", (pairs[0][1],))
            erp.execute("UPDATE customers SET address = '漂移路 1 号', credit_limit_fen = credit_limit_fen + 1"
                        " WHERE cust_no = %s", (pairs[1][1],))
            erp.execute("INSERT INTO customers (full_name) VALUES ('背后新客有限公司')")
        finally:
            erp.execute(f"ALTER PUBLICATION {publication} ADD TABLE public.customers")
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
