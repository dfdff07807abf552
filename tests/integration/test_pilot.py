"""A pilot: the customer profile's `scope` limits the sync to tier-A accounts; nothing outside it is written."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from streams.local.harness import REPO, Harness, group_lag, live_stack, scalar, wait_for, win_deal
from streams.local.scratch import scratch_dir

pytestmark = pytest.mark.integration
MAPPINGS = REPO / "schemas" / "mappings"
TOPICS = ["crm.public.accounts", "erp.public.customers", "crm.public.opportunities", "crm.public.opportunity_lines",
          "sync.changes.customer", "sync.commands.crm", "sync.commands.erp"]


@pytest.fixture(scope="module")
def pilot(failures: Callable[[], bool]) -> Iterator[Harness]:
    profile = ((MAPPINGS / "demo.yaml").read_text(encoding="utf-8")
               .replace("canonical_schema: ../canonical/customer.avsc",
                        f"canonical_schema: {REPO / 'schemas' / 'canonical' / 'customer.avsc'}")
               .replace("\nfields:", "\nscope: {crm: {tier: [A]}}   # the pilot: tier-A accounts only\nfields:", 1))
    assert "scope:" in profile
    with scratch_dir("pilot-profile", failures) as folder:
        (folder / "customer.yaml").write_text(profile, encoding="utf-8")
        with live_stack("pilot", failed=failures, processors={"profiles": [str(folder / "customer.yaml")],
                                                              "documents": [str(MAPPINGS / "demo-orders.yaml")]}) as h:
            yield h


def pair_of_tier(h: Harness, tier: str) -> tuple[str, str]:
    with h.connect("sync") as sync, h.connect("crm") as crm:
        pairs = dict(sync.execute("SELECT crm_id, erp_id FROM sync.xref WHERE entity = 'customer'"
                                  " AND linked_by = 'exact'").fetchall())
        crm_id = scalar(crm, "SELECT id::text FROM accounts WHERE id::text = ANY(%s) AND tier = %s ORDER BY id"
                             " LIMIT 1", list(pairs), tier)
    return crm_id, pairs[crm_id]


def test_a_pilot_writes_nothing_outside_its_scope(pilot: Harness) -> None:
    h = pilot
    inside, outside = pair_of_tier(h, "A"), pair_of_tier(h, "B")
    with h.connect("sync") as sync:
        since = scalar(sync, "SELECT now()")
    with h.connect("crm") as crm, h.connect("erp") as erp:
        before = {"email": scalar(erp, "SELECT email FROM customers WHERE cust_no = %s", outside[1]),
                  "limit": scalar(crm, "SELECT credit_limit FROM accounts WHERE id = %s", outside[0]),
                  "orders": scalar(erp, "SELECT count(*) FROM sales_orders WHERE cust_no = %s", outside[1])}
        for (crm_id, erp_id), tag in ((outside, "out"), (inside, "in")):  # outside first: read before inside
            crm.execute("UPDATE accounts SET email = %s WHERE id = %s", (f"pilot-{tag}@example.com", crm_id))
            erp.execute("UPDATE customers SET credit_limit_fen = 4242400 WHERE cust_no = %s", (erp_id,))
        for tier, name in (("B", "试点外新客有限公司"), ("A", "试点内新客有限公司")):
            crm.execute("INSERT INTO accounts (name, legal_name, tier, status) VALUES (%s, %s, %s, 'active')",
                        (name[:4], name, tier))
    with h.connect("erp") as erp:
        sku = scalar(erp, "SELECT sku FROM items ORDER BY sku LIMIT 1")
    out_deal, in_deal = (win_deal(h, account, [(sku, "2", "50.00")]) for account in (outside[0], inside[0]))
    with h.connect("crm") as crm, h.connect("erp") as erp:
        wait_for(lambda: scalar(erp, "SELECT email FROM customers WHERE cust_no = %s", inside[1])
                 == "pilot-in@example.com"
                 and scalar(crm, "SELECT credit_limit FROM accounts WHERE id = %s", inside[0]) == 42424
                 and scalar(erp, "SELECT count(*) FROM customers WHERE full_name = '试点内新客有限公司'") == 1
                 and scalar(crm, "SELECT erp_order_no FROM opportunities WHERE id = %s", in_deal) is not None,
                 120, 0.5, "the tier-A edits, the new tier-A account and the tier-A deal's order")
        wait_for(lambda: group_lag(h.client_config(), TOPICS) == 0, 90, 0.5, "the worker to read everything")
        assert scalar(erp, "SELECT email FROM customers WHERE cust_no = %s", outside[1]) == before["email"]
        assert scalar(crm, "SELECT credit_limit FROM accounts WHERE id = %s", outside[0]) == before["limit"]
        assert scalar(erp, "SELECT count(*) FROM sales_orders WHERE cust_no = %s", outside[1]) == before["orders"]
        assert scalar(erp, "SELECT count(*) FROM customers WHERE full_name = '试点外新客有限公司'") == 0
        assert scalar(crm, "SELECT erp_order_no FROM opportunities WHERE id = %s", out_deal) is None
    with h.connect("sync") as sync:  # the audit trail agrees: writes for the tier-A records only
        written = {r[0] for r in sync.execute("SELECT key FROM sync.audit WHERE written_at >= %s", (since,))}
        assert inside[0] in written and inside[1] in written
        assert not written & {outside[0], outside[1]}, written
    pending = subprocess.run(h.cli("documents", "--pending"), capture_output=True, text=True, check=True).stdout
    assert "out of the pilot's scope (crm.tier in ['A'])" in pending, pending
    done = subprocess.run(h.cli("compare", "--format", "json"), capture_output=True, text=True, check=True)
    found: dict[str, Any] = json.loads(done.stdout)[0]
    with h.connect("crm") as crm:
        not_a = scalar(crm, "SELECT count(*) FROM accounts WHERE tier IS DISTINCT FROM 'A'")
    out_of_scope = found["categories"]["crm"]["out_of_scope"]
    assert 0 < out_of_scope <= not_a  # tier B and C: linked or not, out of scope (unknown or in review aside)
    assert sum(found["categories"]["crm"].values()) == found["totals"]["crm"]
    assert not any(d["crm_id"] == outside[0] for d in found["drift"])  # out of scope: not drift to repair
