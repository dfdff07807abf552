"""Dry run: the whole pipeline runs and writes nothing; `plan` lists what the real run then does."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from psycopg import sql

from streams.local.harness import (
    REPO,
    Harness,
    group_lag,
    live_stack,
    running,
    scalar,
    wait_for,
    wait_for_identity,
    win_deal,
)
from streams.mapping.profile import load_profile

pytestmark = pytest.mark.integration
MAPPINGS = REPO / "schemas" / "mappings"
FIELDS = set(load_profile(MAPPINGS / "demo.yaml").fields)
TOPICS = ["crm.public.accounts", "erp.public.customers", "crm.public.opportunities", "crm.public.opportunity_lines",
          "sync.changes.customer"]


@pytest.fixture(scope="module")
def services(failures: Callable[[], bool]) -> Iterator[Harness]:
    """Databases, broker, registry and capture; no worker yet (the sync has never run)."""
    # The owner's login: the test shows the dry run creates nothing in either system, not even the
    # applier's bookkeeping (which deploy/sql's script would have made beforehand).
    with live_stack("dry-run", worker=False, least_privilege=False, failed=failures,
                    processors={"documents": [str(MAPPINGS / "demo-orders.yaml")]}) as h:
        yield h


def fingerprint(h: Harness) -> dict[str, str]:
    """A digest of every row of every table of both systems."""
    out = {}
    for system in ("crm", "erp"):
        with h.connect(system) as conn:
            tables = [r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables"
                                                 " WHERE table_schema = 'public' ORDER BY 1")]
            for table in tables:
                out[f"{system}.{table}"] = scalar(conn, sql.SQL(
                    "SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM public.{} t").format(
                    sql.Identifier(table)))
    return out


def traffic(h: Harness) -> dict[str, Any]:
    """An edit each way on a twin pair, a new tier-A account, a won deal."""
    with h.connect("crm") as crm, h.connect("erp") as erp:
        taxes = dict(erp.execute("SELECT tax_no, cust_no FROM customers WHERE tax_no IS NOT NULL").fetchall())
        crm_id, tax = crm.execute("SELECT id::text, uscc FROM accounts WHERE uscc = ANY(%s) AND tier = 'A'"
                                  " AND status = 'active' ORDER BY id LIMIT 1", (list(taxes),)).fetchone()
        crm.execute("UPDATE accounts SET email = 'planned@example.com' WHERE id = %s", (crm_id,))
        erp.execute("UPDATE customers SET credit_limit_fen = 7777700 WHERE cust_no = %s", (taxes[tax],))
        crm.execute("INSERT INTO accounts (name, legal_name, tier, status) VALUES ('计划新客', '计划新客有限公司', 'A',"
                    " 'active')")
        sku = scalar(erp, "SELECT sku FROM items ORDER BY sku LIMIT 1")
    deal = win_deal(h, crm_id, [(sku, "3", "10.00")])
    return {"crm_id": crm_id, "cust_no": taxes[tax], "deal": deal}


def writes(rows: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    """Plan entries and audit entries alike: (op, system, global id, field or rule, value of a field write)."""
    out = set()
    for r in rows:
        if r.get("op") == "conflict":
            continue  # not a write
        field = r["field"]
        if r["kind"] == "create":
            out.add(("create", r["system"], r["global_id"], field))
        elif field in FIELDS:
            out.add(("set", r["system"], r["global_id"], field, repr(r["value"] if "value" in r else r["new_value"])))
        else:  # a rollup (a rule writing several columns)
            out.add(("row", r["system"], r["global_id"], field))
    return out


def test_a_dry_run_writes_nothing_and_plans_what_the_real_run_does(services: Harness) -> None:
    h = services
    made = traffic(h)
    before = fingerprint(h)
    dry = {"CRM_ERP_SYNC__SYNC__DRY_RUN": "true"}
    with running(h.spawn("worker", log_name="worker-dry-run.log", env=dry)):
        wait_for_identity(h)
        with h.connect("sync") as conn:
            def planned() -> list[dict[str, Any]]:
                cur = conn.execute("SELECT * FROM sync.plan ORDER BY id")
                names = [d.name for d in cur.description or []]
                return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

            wait_for(lambda: {"email", "credit_limit_fen", "sales_order"} <= {e["field"] for e in planned()}
                     and any(e["kind"] == "create" and e["field"] == "" for e in planned()), 120, 0.5,
                     "the edits, the new account and the deal's order in the plan")
            wait_for(lambda: group_lag(h.client_config(), TOPICS, "crm-erp-sync-dry-run") == 0, 90, 0.5,
                     "the dry run to read everything")
    assert fingerprint(h) == before  # not one row of either system changed
    for system in ("crm", "erp"):
        with h.connect(system) as conn:  # no applier ever connected (it would have made its bookkeeping)
            assert scalar(conn, "SELECT to_regclass('sync_meta.applied_tx')") is None
    with h.connect("sync") as conn:
        assert scalar(conn, "SELECT count(*) FROM sync.audit") == 0
        assert scalar(conn, "SELECT count(*) FROM sync.entity_state") == 0  # the dry run kept its own state
        plan = planned()
    email = next(e for e in plan if e["field"] == "email" and e["system"] == "erp" and e["key"] == made["cust_no"])
    assert email["value"] == "planned@example.com" and email["kind"] == "update"
    shown = subprocess.run(h.cli("plan"), capture_output=True, text=True, check=True).stdout
    assert "write erp.email" in shown and "create on erp (sales_order)" in shown, shown

    with running(h.spawn("worker", log_name="worker.log")):  # writes on: the first real run
        with h.connect("crm") as crm, h.connect("erp") as erp:
            wait_for(lambda: scalar(erp, "SELECT email FROM customers WHERE cust_no = %s", made["cust_no"])
                     == "planned@example.com"
                     and scalar(erp, "SELECT count(*) FROM customers WHERE full_name = '计划新客有限公司'") == 1
                     and scalar(crm, "SELECT erp_order_no FROM opportunities WHERE id = %s", made["deal"]),
                     120, 0.5, "the real run's writes")
            wait_for(lambda: group_lag(h.client_config(), [*TOPICS, "sync.commands.crm", "sync.commands.erp"]) == 0
                     and not scalar(crm, "SELECT count(*) FROM sync_meta.audit_outbox")
                     and not scalar(erp, "SELECT count(*) FROM sync_meta.audit_outbox"), 90, 0.5,
                     "the real run to finish and its audit trail")
            own = {s: {int(r[0]) for r in c.execute("SELECT xid FROM sync_meta.applied_tx")}
                   for s, c in (("crm", crm), ("erp", erp))}
    with h.connect("sync") as conn:
        cur = conn.execute("SELECT * FROM sync.audit")
        names = [d.name for d in cur.description or []]
        audit = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    planned_writes, real_writes = writes(plan), writes(audit)
    assert planned_writes <= real_writes, sorted(planned_writes - real_writes)  # every planned write happened
    # What happened unplanned: a value a planned field passed through on the way to its planned one,
    # or what followed from the real run's own writes (a created order's rollups; an order whose
    # customer the real run created, tried again by the pending-documents timer: the dry run only
    # planned that customer, so its order stayed pending there).
    fields = {w[:4] for w in planned_writes}
    unplanned = [e for e in audit if next(iter(writes([e]))) not in planned_writes]
    assert all(next(iter(writes([e])))[:4] in fields
               or (e["cause_tx_id"] is not None and e["cause_tx_id"] % 2**32 in own[e["cause_system"]])
               or (e["kind"] == "create" and e["cause_event"] == "retry")
               for e in unplanned), unplanned
