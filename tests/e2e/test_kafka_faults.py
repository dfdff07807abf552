"""The production topology under faults: 3 Kafka brokers (RF 3, min ISR 2), Kafka Connect, two workers.

During a burst of mixed changes on both systems (edits, new accounts, won deals) the test SIGKILLs
the broker leading a partition the sync reads, the Kafka Connect worker running Debezium and one
of the two Faust workers, then starts them again. Afterwards both databases must agree on every
mapped field of every linked pair, every new account must exist once in the ERP, every won deal
must have exactly one order, and nothing may be in the dead letters. It prints the counts and the
time the sync took to converge after the burst.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from streams.local.harness import REPO, Harness, running, scalar, wait_for, wait_for_capture, wait_for_identity
from streams.local.ports import free_port
from tests.convergence import disagreements

pytestmark = pytest.mark.e2e
MAPPINGS = REPO / "schemas" / "mappings"
EDITS = 5000
NEW_ACCOUNTS = 40
DEALS = 30


def leader_of(h: Harness, topic: str, partition: int = 0) -> int:
    meta = AdminClient(h.client_config()).list_topics(topic, timeout=10)
    return int(meta.topics[topic].partitions[partition].leader)


class Burst:
    """Edits on both systems, new tier-A CRM accounts and won deals, from several threads."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.done = 0
        self.lock = threading.Lock()
        self.errors: list[BaseException] = []
        with h.connect("sync") as conn:
            self.pairs = conn.execute("SELECT crm_id, erp_id FROM sync.xref WHERE entity = 'customer'"
                                      " AND linked_by IN ('exact', 'name')"
                                      " ORDER BY crm_id").fetchall()
        with h.connect("erp") as erp:
            self.skus = [r[0] for r in erp.execute("SELECT sku FROM items ORDER BY sku LIMIT 5").fetchall()]
        self.accounts = [f"故障演练{i:03d}科技有限公司" for i in range(NEW_ACCOUNTS)]
        self.deals: list[str] = []
        self.dealers = [erp_id for _, erp_id in self.pairs[-DEALS:]]
        self.orders_before = self.orders()

    def orders(self) -> dict[str, int]:
        """Sales orders of each customer the burst wins a deal for."""
        with self.h.connect("erp") as erp:
            counts = dict(erp.execute("SELECT cust_no, count(*) FROM sales_orders WHERE cust_no = ANY(%s)"
                                      " GROUP BY cust_no", (self.dealers,)).fetchall())
        return {c: counts.get(c, 0) for c in self.dealers}

    def _count(self, n: int = 1) -> None:
        with self.lock:
            self.done += n

    def crm_edits(self, n: int, seed: int) -> None:
        rng = random.Random(seed)
        columns = [("email", "b{}@crm.example.com"), ("phone", "021-6{:07d}"), ("address", "故障路 {} 号")]
        with self.h.connect("crm") as crm:
            for i in range(n):
                crm_id, _ = rng.choice(self.pairs)
                column, pattern = rng.choice(columns)
                crm.execute(f"UPDATE accounts SET {column} = %s WHERE id = %s",
                            (pattern.format(seed * 100000 + i), crm_id))
                self._count()

    def erp_edits(self, n: int, seed: int) -> None:
        rng = random.Random(seed)
        with self.h.connect("erp") as erp:
            for i in range(n):
                _, erp_id = rng.choice(self.pairs)
                if i % 2:
                    erp.execute("UPDATE customers SET credit_limit_fen = %s WHERE cust_no = %s",
                                ((seed * 100000 + i) * 100, erp_id))
                else:
                    erp.execute("UPDATE customers SET payment_terms = %s WHERE cust_no = %s",
                                (rng.choice(["NET30", "NET60", "COD"]), erp_id))
                self._count()

    def creates_and_deals(self) -> None:
        with self.h.connect("crm") as crm:
            for name in self.accounts:
                crm.execute("INSERT INTO accounts (name, legal_name, tier, status) VALUES (%s, %s, 'A', 'active')",
                            (name[:-6], name))
                self._count()
        with self.h.connect("crm", autocommit=False) as crm:
            for crm_id, _ in self.pairs[-DEALS:]:
                deal = str(uuid.uuid4())
                crm.execute("INSERT INTO opportunities (id, account_id, title, stage, currency)"
                            " VALUES (%s, %s, '故障演练订单', 'negotiation', 'CNY')", (deal, crm_id))
                for sku in self.skus[:3]:
                    crm.execute("INSERT INTO opportunity_lines (opportunity_id, product_code, quantity, unit_price)"
                                " VALUES (%s, %s, %s, %s)", (deal, sku, Decimal("2"), Decimal("10.50")))
                crm.commit()
                crm.execute("UPDATE opportunities SET stage = 'closed_won' WHERE id = %s", (deal,))
                crm.commit()
                self.deals.append(deal)
                self._count(5)

    def run(self) -> list[threading.Thread]:
        share = -(-(EDITS - NEW_ACCOUNTS - 5 * DEALS) // 4)  # rounded up: at least EDITS in all

        def guarded(fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except BaseException as exc:  # reported by the test
                self.errors.append(exc)

        threads = [threading.Thread(target=guarded, args=(self.crm_edits, share, 1)),
                   threading.Thread(target=guarded, args=(self.crm_edits, share, 2)),
                   threading.Thread(target=guarded, args=(self.erp_edits, share, 3)),
                   threading.Thread(target=guarded, args=(self.erp_edits, share, 4)),
                   threading.Thread(target=guarded, args=(self.creates_and_deals,))]
        for t in threads:
            t.start()
        return threads


def test_brokers_connect_and_a_worker_killed_during_a_burst_lose_and_double_nothing() -> None:
    h = Harness(Path(tempfile.mkdtemp(prefix="crm-erp-sync-faults-", dir="/tmp")), seed_accounts=120, brokers=3,
                capture_mode="connect").start()
    ports = [free_port(), free_port()]
    h.write_config(processors={"profiles": [str(MAPPINGS / "demo.yaml"), str(MAPPINGS / "demo-products.yaml")],
                               "documents": [str(MAPPINGS / "demo-orders.yaml")]})
    try:
        with running(h.spawn("capture")) as _capture:
            workers = [h.spawn("worker", log_name=f"worker{i}.log",
                               env={"CRM_ERP_SYNC__PROCESSORS__METRICS_PORT": str(p)}) for i, p in enumerate(ports)]
            try:
                wait_for_capture(h)
                wait_for_identity(h)
                wait_for(lambda: not disagreements(h), 180, 1.0, "the initial alignment")
                burst = Burst(h)
                threads = burst.run()
                wait_for(lambda: burst.done >= EDITS // 4, 300, 0.2, "a quarter of the burst")
                victim = leader_of(h, "sync.changes.customer")
                h.kafka.kill(victim)  # type: ignore[union-attr]
                h.kill_connect()
                workers[0].kill()
                workers[0].wait(10)
                wait_for(lambda: burst.done >= EDITS // 2, 300, 0.2, "half of the burst, with the faults")
                h.kafka.start_node(victim)  # type: ignore[union-attr]
                h.start_connect()
                workers[0] = h.spawn("worker", log_name="worker0.log",
                                     env={"CRM_ERP_SYNC__PROCESSORS__METRICS_PORT": str(ports[0])})
                for t in threads:
                    t.join(600)
                assert not burst.errors, burst.errors
                finished = time.monotonic()
                print(f"\nburst of {burst.done} changes; broker {victim}, Kafka Connect and a worker killed at"
                      f" {EDITS // 4} and restarted at {EDITS // 2}")
                _converged(h, burst, finished)
            finally:
                for proc in workers:
                    with running(proc):
                        pass
    finally:
        h.stop()


def _converged(h: Harness, burst: Burst, finished: float) -> None:
    def created() -> dict[str, int]:
        with h.connect("erp") as erp:
            return dict(erp.execute("SELECT full_name, count(*) FROM customers WHERE full_name LIKE '故障演练%%'"
                                    " GROUP BY full_name").fetchall())

    one_more = {c: n + 1 for c, n in burst.orders_before.items()}
    wait_for(lambda: created() == dict.fromkeys(burst.accounts, 1) and burst.orders() == one_more
             and not disagreements(h), 600, 2.0, "both databases to converge after the faults")
    took = time.monotonic() - finished
    with h.connect("sync") as conn:
        dead = scalar(conn, "SELECT count(*) FROM sync.dead_letters")
        linked = scalar(conn, "SELECT count(*) FROM sync.xref WHERE crm_id IS NOT NULL AND erp_id IS NOT NULL")
    print(f"converged {took:.1f} s after the burst: {linked} linked pairs agree on every mapped field,"
          f" {len(created())} new accounts each created once, {len(burst.deals)} won deals with one order each,"
          f" {dead} dead letters")
    assert created() == dict.fromkeys(burst.accounts, 1)
    assert burst.orders() == one_more
    assert dead == 0
