"""Order benchmark (flow F2): N deals won in a burst -> their ERP sales orders, commit to commit.

Runs on its own local services (PostgreSQL, Apache Kafka, registry, capture, worker with the demo
profiles and document profile). The deals and their lines are prepared first (stage negotiation);
then every deal is moved to ``closed_won`` in its own transaction as fast as one connection can.
Latency of each deal: the ERP order row written (an audit trigger's ``clock_timestamp()``, the same
server clock) minus the server clock when the deal's ``closed_won`` update ran (its own transaction, so
its commit; not ``updated_at``, which the sync's write-back of the order's progress moves later).
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from streams.bench.report import latency_line, latency_summary, write
from streams.bench.steady import worker_idle
from streams.local.harness import REPO, Harness, running, scratch_harness, wait_for, wait_for_capture, wait_for_identity
from streams.local.ports import free_port

MAPPINGS = REPO / "schemas" / "mappings"
AUDIT = """
CREATE SCHEMA IF NOT EXISTS bench;
CREATE TABLE IF NOT EXISTS bench.orders (order_no text PRIMARY KEY, cust_no text, at timestamptz NOT NULL
  DEFAULT clock_timestamp());
CREATE OR REPLACE FUNCTION bench.note_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO bench.orders (order_no, cust_no) VALUES (NEW.order_no, NEW.cust_no); RETURN NEW; END $$;
DROP TRIGGER IF EXISTS bench_order ON public.sales_orders;
CREATE TRIGGER bench_order AFTER INSERT ON public.sales_orders FOR EACH ROW EXECUTE FUNCTION bench.note_order();
"""


def _prepare(h: Harness, deals: int) -> list[str]:
    """Deals (3 lines each) of linked accounts, not won yet; their ids."""
    with h.connect("sync") as conn:
        accounts = [r[0] for r in conn.execute(
            "SELECT crm_id FROM sync.xref WHERE entity = 'customer' AND crm_id IS NOT NULL AND erp_id IS NOT NULL"
            " ORDER BY crm_id").fetchall()]
    with h.connect("erp") as erp:
        erp.execute("UPDATE customers SET credit_limit_fen = 10000000000, blocked = false")
        skus = [r[0] for r in erp.execute("SELECT sku FROM items ORDER BY sku").fetchall()]
        erp.execute(AUDIT)
    ids = [str(uuid.uuid4()) for _ in range(deals)]
    with h.connect("crm", autocommit=False) as crm, crm.cursor() as cur:
        cur.executemany("INSERT INTO opportunities (id, account_id, title, stage) VALUES (%s, %s, %s, 'negotiation')",
                        [(d, accounts[i % len(accounts)], f"基准订单{i}") for i, d in enumerate(ids)])
        cur.executemany("INSERT INTO opportunity_lines (opportunity_id, product_code, quantity, unit_price)"
                        " VALUES (%s, %s, %s, %s)",
                        [(d, skus[(i * 3 + k) % len(skus)], Decimal(k + 1), Decimal("12.34"))
                         for i, d in enumerate(ids) for k in range(3)])
        crm.commit()
    return ids


def run(deals: int = 500, out: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run and return the figures (also written as JSON to ``out``)."""
    with scratch_harness("bench", seed_accounts=300) as h:
        port = free_port()
        h.write_config(processors={"profiles": [str(MAPPINGS / "demo.yaml"), str(MAPPINGS / "demo-products.yaml")],
                                   "documents": [str(MAPPINGS / "demo-orders.yaml")], "metrics_port": port})
        with running(h.spawn("capture")), running(h.spawn("worker", log_name="worker.log")):
            wait_for_capture(h, timeout=180)
            wait_for_identity(h)
            ids = _prepare(h, deals)
            if progress:
                print(f"  {deals} deals prepared; waiting for the worker to finish the start-up work ...", flush=True)
            wait_for(lambda: worker_idle(port) and worker_idle(port), 600, 5.0, "the worker to finish the start-up")
            if progress:
                print("  winning them", flush=True)
            started = time.monotonic()
            won: dict[str, float] = {}
            with h.connect("crm") as crm:
                for deal in ids:
                    row = crm.execute("UPDATE opportunities SET stage = 'closed_won' WHERE id = %s"
                                      " RETURNING extract(epoch FROM clock_timestamp())", (deal,)).fetchone()
                    assert row is not None, f"deal {deal} is gone"
                    won[deal] = float(row[0])
            burst_s = time.monotonic() - started

            def created() -> int:
                with h.connect("sync") as conn, h.connect("erp") as erp:
                    made = {r[0] for r in erp.execute("SELECT global_id FROM sync_meta.created"
                                                      " WHERE entity = 'sales_order'").fetchall()}
                    gids = conn.execute("SELECT global_id::text FROM sync.xref WHERE entity = 'sales_order'"
                                        " AND crm_id = ANY(%s)", (ids,)).fetchall()
                return sum(1 for (g,) in gids if g in made)

            wait_for(lambda: created() == deals, 600, 1.0, "every won deal's order")
            total_s = time.monotonic() - started
            with h.connect("erp") as erp, h.connect("sync") as conn:
                gid_of = dict(conn.execute("SELECT global_id::text, crm_id FROM sync.xref WHERE entity ="
                                           " 'sales_order' AND crm_id = ANY(%s)", (ids,)).fetchall())
                order_gid = dict(erp.execute("SELECT key, global_id FROM sync_meta.created"
                                             " WHERE entity = 'sales_order'").fetchall())
                at = dict(erp.execute("SELECT order_no, extract(epoch FROM at) FROM bench.orders").fetchall())
    ms = [(float(at[o]) - float(won[gid_of[g]])) * 1000 for o, g in order_gid.items() if g in gid_of and o in at]
    result = {"benchmark": "orders", "flow": "F2 won deal -> ERP sales order (3 lines)", "deals": deals,
              "measured": len(ms), "burst_s": round(burst_s, 2), "all_created_s": round(total_s, 1),
              "latency_ms": latency_summary(ms)}
    return write(result, out)


def format_result(result: dict[str, Any]) -> str:
    """One line per figure."""
    lat = result["latency_ms"]
    return (f"{result['deals']} deals won in a burst ({result['burst_s']} s) -> ERP sales orders, closed_won commit"
            f" -> order written ({result['measured']} measured; all created after {result['all_created_s']} s):\n"
            f"  {latency_line(lat)}")
