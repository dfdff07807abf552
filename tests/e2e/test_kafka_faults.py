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
from pathlib import Path
from typing import Any

import psycopg
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
    """Edits on both systems, new tier-A CRM accounts and won deals, from several threads.

    Every statement is retried on a connection error, so the load rides through a PostgreSQL
    restart; inserts carry their own ids, so a retried one never doubles.
    """

    def __init__(self, h: Harness, tag: str = "故障演练", edits: int = EDITS, accounts: int = NEW_ACCOUNTS,
                 deals: int = DEALS) -> None:
        self.h = h
        self.done = 0
        self.edits = edits
        self.lock = threading.Lock()
        self.errors: list[BaseException] = []
        with h.connect("sync") as conn:
            self.pairs = conn.execute("SELECT crm_id, erp_id FROM sync.xref WHERE entity = 'customer'"
                                      " AND linked_by IN ('exact', 'name')"
                                      " ORDER BY crm_id").fetchall()
        with h.connect("erp") as erp:
            self.skus = [r[0] for r in erp.execute("SELECT sku FROM items ORDER BY sku LIMIT 5").fetchall()]
        self.tag = tag
        self.accounts = {str(uuid.uuid4()): f"{tag}{i:03d}科技有限公司" for i in range(accounts)}
        self.deals = [(str(uuid.uuid4()), crm_id) for crm_id, _ in self.pairs[-deals:]]
        self.dealers = [erp_id for _, erp_id in self.pairs[-deals:]]
        self.orders_before = self.orders()

    def orders(self) -> dict[str, int]:
        """Sales orders of each customer the burst wins a deal for."""
        with self.h.connect("erp") as erp:
            counts = dict(erp.execute("SELECT cust_no, count(*) FROM sales_orders WHERE cust_no = ANY(%s)"
                                      " GROUP BY cust_no", (self.dealers,)).fetchall())
        return {c: counts.get(c, 0) for c in self.dealers}

    def created(self) -> dict[str, int]:
        """ERP customers made for the burst's new accounts, by name."""
        with self.h.connect("erp") as erp:
            return dict(erp.execute("SELECT full_name, count(*) FROM customers WHERE full_name = ANY(%s)"
                                    " GROUP BY full_name", (list(self.accounts.values()),)).fetchall())

    def _count(self, n: int = 1) -> None:
        with self.lock:
            self.done += n

    def _run(self, system: str, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Statements in one transaction, again on a new connection if the database went away."""
        for _ in range(120):
            try:
                with self.h.connect(system, autocommit=False) as conn:
                    for query, params in statements:
                        conn.execute(query, params)
                    conn.commit()
                return
            except psycopg.OperationalError:
                time.sleep(0.5)  # the database restarts: try again
        raise RuntimeError(f"{system} did not come back within a minute")

    def crm_edits(self, n: int, seed: int) -> None:
        rng = random.Random(seed)
        columns = [("email", "b{}@crm.example.com"), ("phone", "021-6{:07d}"), ("address", "故障路 {} 号")]
        for i in range(n):
            crm_id, _ = rng.choice(self.pairs)
            column, pattern = rng.choice(columns)
            self._run("crm", [(f"UPDATE accounts SET {column} = %s WHERE id = %s",
                               (pattern.format(seed * 100000 + i), crm_id))])
            self._count()

    def erp_edits(self, n: int, seed: int) -> None:
        rng = random.Random(seed)
        for i in range(n):
            _, erp_id = rng.choice(self.pairs)
            if i % 2:
                self._run("erp", [("UPDATE customers SET credit_limit_fen = %s WHERE cust_no = %s",
                                   ((seed * 100000 + i) * 100, erp_id))])
            else:
                self._run("erp", [("UPDATE customers SET payment_terms = %s WHERE cust_no = %s",
                                   (rng.choice(["NET30", "NET60", "COD"]), erp_id))])
            self._count()

    def creates_and_deals(self) -> None:
        for account_id, name in self.accounts.items():
            self._run("crm", [("INSERT INTO accounts (id, name, legal_name, tier, status) VALUES (%s, %s, %s, 'A',"
                               " 'active') ON CONFLICT (id) DO NOTHING", (account_id, name[:-6], name))])
            self._count()
        for deal, crm_id in self.deals:  # a won deal and its lines in one transaction
            self._run("crm", [("INSERT INTO opportunities (id, account_id, title, stage, currency) VALUES"
                               " (%s, %s, '故障演练订单', 'closed_won', 'CNY') ON CONFLICT (id) DO NOTHING",
                               (deal, crm_id))]
                      + [("INSERT INTO opportunity_lines (opportunity_id, product_code, quantity, unit_price)"
                          " SELECT %s, %s, 2, 10.50 WHERE NOT EXISTS (SELECT 1 FROM opportunity_lines"
                          " WHERE opportunity_id = %s AND product_code = %s)", (deal, sku, deal, sku))
                         for sku in self.skus[:3]])
            self._count(4)

    def run(self) -> list[threading.Thread]:
        share = -(-(self.edits - len(self.accounts) - 4 * len(self.deals)) // 4)  # rounded up: at least `edits`

        def guarded(fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except BaseException as exc:  # reported by the test
                self.errors.append(exc)

        seed = abs(hash(self.tag)) % 1000 * 10
        threads = [threading.Thread(target=guarded, args=(self.crm_edits, share, seed + 1)),
                   threading.Thread(target=guarded, args=(self.crm_edits, share, seed + 2)),
                   threading.Thread(target=guarded, args=(self.erp_edits, share, seed + 3)),
                   threading.Thread(target=guarded, args=(self.erp_edits, share, seed + 4)),
                   threading.Thread(target=guarded, args=(self.creates_and_deals,))]
        for t in threads:
            t.start()
        return threads

    def converged(self) -> bool:
        """Every new account once in the ERP, one more order per dealer, both databases agreeing."""
        one_more = {c: n + 1 for c, n in self.orders_before.items()}
        return (self.created() == dict.fromkeys(self.accounts.values(), 1) and self.orders() == one_more
                and not disagreements(self.h))


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


def _converged(h: Harness, burst: Burst, finished: float, what: str = "the faults") -> None:
    wait_for(burst.converged, 600, 2.0, f"both databases to converge after {what}")
    took = time.monotonic() - finished
    with h.connect("sync") as conn:
        dead = scalar(conn, "SELECT count(*) FROM sync.dead_letters")
        linked = scalar(conn, "SELECT count(*) FROM sync.xref WHERE crm_id IS NOT NULL AND erp_id IS NOT NULL")
    print(f"{what}: converged {took:.1f} s after the burst of {burst.done} changes: {linked} linked pairs agree on"
          f" every mapped field, {len(burst.accounts)} new accounts each created once, {len(burst.deals)} won deals"
          f" with one order each, {dead} dead letters")
    assert burst.created() == dict.fromkeys(burst.accounts.values(), 1)
    assert burst.orders() == {c: n + 1 for c, n in burst.orders_before.items()}
    assert dead == 0


LOAD = 2000  # changes per burst in the fault matrix


class Stack:
    """One broker, Kafka Connect, one worker: the parts a fault hits, and how each is started again."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.port = free_port()
        self.worker = self.start_worker()

    def start_worker(self) -> Any:
        return self.h.spawn("worker", log_name="worker.log", env={"CRM_ERP_SYNC__PROCESSORS__METRICS_PORT":
                                                                  str(self.port)})

    def broker_restart(self) -> None:
        kafka = self.h.kafka
        assert kafka is not None
        kafka.stop_node(1)
        kafka.start_node(1)

    def postgresql_restart(self) -> None:
        assert self.h.pg is not None
        self.h.pg.stop()
        self.h.pg.start()

    def registry_away(self) -> None:
        """The registry stopped while the worker starts again with nothing cached: it must wait, not drop."""
        from streams.registry.server import RegistryServer
        from streams.registry.store import RegistryStore

        registry = self.h.registry
        assert registry is not None
        port = int(registry.url.rsplit(":", 1)[1])
        registry.stop()
        self.worker.kill()
        self.worker.wait(10)
        self.worker = self.start_worker()
        wait_for(lambda: _retries(self.port) > 0, 120, 0.5, "the cold worker to retry against the missing registry")
        self.h.registry = RegistryServer(RegistryStore(self.h.conninfo("sync")), "127.0.0.1", port).start()

    def worker_sigkill(self) -> None:
        self.worker.kill()
        self.worker.wait(10)
        self.worker = self.start_worker()

    def capture_sigkill(self) -> None:
        self.h.kill_connect()
        self.h.start_connect()


def _retries(port: int) -> float:
    from tests.convergence import metric

    try:
        return metric(port, "sync_retries_total")
    except OSError:
        return 0.0  # starting


def test_each_fault_under_load_then_all_together_heals_and_loses_nothing() -> None:
    """Bursts of 2,000 changes; a third into each, one fault (then all five in one burst)."""
    h = Harness(Path(tempfile.mkdtemp(prefix="crm-erp-sync-matrix-", dir="/tmp")), seed_accounts=120,
                capture_mode="connect").start()
    h.write_config(processors={"profiles": [str(MAPPINGS / "demo.yaml"), str(MAPPINGS / "demo-products.yaml")],
                               "documents": [str(MAPPINGS / "demo-orders.yaml")], "stall_exit_s": 60})
    stack: Stack | None = None
    try:
        with running(h.spawn("capture")):
            stack = Stack(h)
            wait_for_capture(h)
            wait_for_identity(h)
            wait_for(lambda: not disagreements(h), 180, 1.0, "the initial alignment")
            faults = {"broker restart": stack.broker_restart, "PostgreSQL restart": stack.postgresql_restart,
                      "registry away (worker restarted cold)": stack.registry_away,
                      "worker SIGKILL": stack.worker_sigkill, "capture (Kafka Connect) SIGKILL": stack.capture_sigkill}
            rounds = [(name, [fault]) for name, fault in faults.items()] + [("all five", list(faults.values()))]
            print()
            for n, (name, injected) in enumerate(rounds):
                burst = Burst(h, tag=f"矩阵{n}演练", edits=LOAD, accounts=10, deals=5)
                threads = burst.run()
                wait_for(lambda b=burst: b.done >= LOAD // 3, 300, 0.2, f"a third of the burst ({name})")
                for fault in injected:
                    fault()
                for t in threads:
                    t.join(600)
                assert not burst.errors, burst.errors
                _converged(h, burst, time.monotonic(), name)
    finally:
        if stack is not None:
            with running(stack.worker):
                pass
        h.stop()
