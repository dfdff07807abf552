"""Fault scenarios on the real stack, run by ``crm-erp-sync bench faults`` and by the e2e tests.

* ``three_brokers``: 3 Kafka brokers (RF 3, min ISR 2), Kafka Connect, two workers; during a burst
  of 5,000 mixed changes on both systems the broker leading a partition the sync reads, the Kafka
  Connect worker and one worker are SIGKILLed, then started again.
* ``matrix``: one broker, Kafka Connect, one worker; bursts of 2,000 changes, each with one fault a
  third in (broker restart, PostgreSQL restart, the registry away while the worker restarts cold,
  worker SIGKILL, Kafka Connect SIGKILL), then all five in one burst.

After each burst: both databases agree on every mapped field of every linked pair, every new
account exists once in the ERP, every won deal has exactly one order, nothing is in the dead
letters; the time from the end of the burst until then is the figure reported.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka.admin import AdminClient
from psycopg import sql

from streams.bench.convergence import disagreements, metric, wait_agreed
from streams.bench.report import write
from streams.local.harness import (
    REPO,
    Harness,
    running,
    scalar,
    scratch_harness,
    wait_for,
    wait_for_capture,
    wait_for_identity,
)
from streams.local.ports import free_port
from streams.registry.server import RegistryServer
from streams.registry.store import RegistryStore

MAPPINGS = REPO / "schemas" / "mappings"
EDITS = 5000
NEW_ACCOUNTS = 40
DEALS = 30
LOAD = 2000  # changes per burst in the fault matrix
SYNC_PROFILES = {"profiles": [str(MAPPINGS / "demo.yaml"), str(MAPPINGS / "demo-products.yaml")],
                 "documents": [str(MAPPINGS / "demo-orders.yaml")]}


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

    def _run(self, system: str, statements: list[tuple[Any, tuple[Any, ...]]]) -> None:
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
            statement = sql.SQL("UPDATE accounts SET {} = %s WHERE id = %s").format(sql.Identifier(column))
            self._run("crm", [(statement, (pattern.format(seed * 100000 + i), crm_id))])
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
        registry = self.h.registry
        assert registry is not None
        port = int(registry.url.rsplit(":", 1)[1])
        registry.stop()
        self.worker.kill()
        self.worker.wait(10)
        self.worker = self.start_worker()
        wait_for(lambda: _retries(self.port) > 0, 120, 0.5, "the cold worker to retry against the missing registry")
        self.h.registry = RegistryServer(RegistryStore(self.h.store_conninfo()), "127.0.0.1", port).start()

    def worker_sigkill(self) -> None:
        self.worker.kill()
        self.worker.wait(10)
        self.worker = self.start_worker()

    def capture_sigkill(self) -> None:
        self.h.kill_connect()
        self.h.start_connect()


def _retries(port: int) -> float:
    try:
        return metric(port, "sync_retries_total")
    except OSError:
        return 0.0  # starting


def converged(h: Harness, burst: Burst, finished: float, what: str, progress: bool = True) -> dict[str, Any]:
    """Wait until the burst converged; its figures (time after the burst, counts)."""
    wait_for(burst.converged, 600, 2.0, f"both databases to converge after {what}")
    took = time.monotonic() - finished
    with h.connect("sync") as conn:
        dead = scalar(conn, "SELECT count(*) FROM sync.dead_letters")
        linked = scalar(conn, "SELECT count(*) FROM sync.xref WHERE crm_id IS NOT NULL AND erp_id IS NOT NULL")
    figures = {"fault": what, "changes": burst.done, "converged_after_s": round(took, 1), "linked_pairs": linked,
               "new_accounts_created_once": sum(1 for n in burst.created().values() if n == 1),
               "new_accounts": len(burst.accounts), "deals_with_one_order": sum(
                   1 for c, n in burst.orders().items() if n == burst.orders_before[c] + 1),
               "deals": len(burst.deals), "dead_letters": dead}
    if progress:
        print(format_round(figures), flush=True)
    return figures


def format_round(r: dict[str, Any]) -> str:
    """One line per burst."""
    return (f"  {r['fault']}: converged {r['converged_after_s']} s after the burst of {r['changes']} changes:"
            f" {r['linked_pairs']} linked pairs agree on every mapped field, {r['new_accounts_created_once']} of"
            f" {r['new_accounts']} new accounts created once, {r['deals_with_one_order']} of {r['deals']} won deals"
            f" with one order, {r['dead_letters']} dead letters")



def three_brokers(progress: bool = True) -> dict[str, Any]:
    """The production topology: a broker, Kafka Connect and a worker SIGKILLed during a 5,000-change burst."""
    with scratch_harness("faults", seed_accounts=120, brokers=3, capture_mode="connect") as h:
        ports = [free_port(), free_port()]
        h.write_config(processors=SYNC_PROFILES)
        with running(h.spawn("capture")):
            workers = [h.spawn("worker", log_name=f"worker{i}.log",
                               env={"CRM_ERP_SYNC__PROCESSORS__METRICS_PORT": str(p)}) for i, p in enumerate(ports)]
            try:
                wait_for_capture(h)
                wait_for_identity(h)
                wait_agreed(h, 180, "the initial alignment", 1.0)
                burst = Burst(h)
                threads = burst.run()
                wait_for(lambda: burst.done >= EDITS // 4, 300, 0.2, "a quarter of the burst")
                victim = leader_of(h, "sync.changes.customer")
                assert h.kafka is not None
                h.kafka.kill(victim)
                h.kill_connect()
                workers[0].kill()
                workers[0].wait(10)
                wait_for(lambda: burst.done >= EDITS // 2, 300, 0.2, "half of the burst, with the faults")
                h.kafka.start_node(victim)
                h.start_connect()
                workers[0] = h.spawn("worker", log_name="worker0.log",
                                     env={"CRM_ERP_SYNC__PROCESSORS__METRICS_PORT": str(ports[0])})
                for t in threads:
                    t.join(600)
                if burst.errors:
                    raise RuntimeError(f"the load failed: {burst.errors[0]!r}")
                what = f"broker {victim} (a partition leader), Kafka Connect and a worker SIGKILLed"
                return converged(h, burst, time.monotonic(), what, progress)
            finally:
                for proc in workers:
                    with running(proc):
                        pass


def matrix(progress: bool = True) -> list[dict[str, Any]]:
    """Each fault on its own during a 2,000-change burst, then all five in one burst."""
    stack: Stack | None = None
    out = []
    with scratch_harness("matrix", seed_accounts=120, capture_mode="connect") as h:
        h.write_config(processors={**SYNC_PROFILES, "stall_exit_s": 60})
        try:
            with running(h.spawn("capture")):
                stack = Stack(h)
                wait_for_capture(h)
                wait_for_identity(h)
                wait_agreed(h, 180, "the initial alignment", 1.0)
                faults = {"broker restart": stack.broker_restart, "PostgreSQL restart": stack.postgresql_restart,
                          "registry away (worker restarted cold)": stack.registry_away,
                          "worker SIGKILL": stack.worker_sigkill,
                          "capture (Kafka Connect) SIGKILL": stack.capture_sigkill}
                rounds = [(name, [fault]) for name, fault in faults.items()] + [("all five", list(faults.values()))]
                for n, (name, injected) in enumerate(rounds):
                    burst = Burst(h, tag=f"矩阵{n}演练", edits=LOAD, accounts=10, deals=5)
                    threads = burst.run()
                    wait_for(lambda b=burst: b.done >= LOAD // 3, 300, 0.2, f"a third of the burst ({name})")
                    for fault in injected:
                        fault()
                    for t in threads:
                        t.join(600)
                    if burst.errors:
                        raise RuntimeError(f"the load failed: {burst.errors[0]!r}")
                    out.append(converged(h, burst, time.monotonic(), name, progress))
        finally:
            if stack is not None:
                with running(stack.worker):
                    pass
    return out


def run(out: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Both scenarios; their figures (also written as JSON to ``out``)."""
    if progress:
        print("3 brokers, Kafka Connect, two workers:", flush=True)
    result: dict[str, Any] = {"benchmark": "faults", "three_brokers": three_brokers(progress)}
    write(result, out)
    if progress:
        print("fault matrix, one broker:", flush=True)
    result["matrix"] = matrix(progress)
    return write(result, out)


def format_result(result: dict[str, Any]) -> str:
    """Every burst, one line each."""
    return "\n".join(["faults: time from the end of each burst until both databases agreed, nothing lost or doubled",
                      format_round(result["three_brokers"]), *(format_round(r) for r in result["matrix"])])
