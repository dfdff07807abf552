"""Faults injected into a running sync: each heals by itself and nothing is lost or doubled.

An exception inside each step of the worker (transient: retried in the process; a crash: the worker
ends without acknowledging and a new one re-reads), a value the target refuses, a topic deleted
and created again, the registry away while the worker starts cold, PostgreSQL restarted.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from streams.bench.convergence import metric, wait_agreed
from streams.local.harness import (
    REPO,
    Harness,
    running,
    scalar,
    scratch_harness,
    wait_for,
    wait_for_capture,
    wait_for_identity,
    win_deal,
)
from streams.local.ports import free_port
from streams.local.status import scrape
from streams.registry.server import RegistryServer
from streams.registry.store import RegistryStore
from streams.topics import ensure_planned

pytestmark = pytest.mark.integration
MAPPINGS = REPO / "schemas" / "mappings"
CRASHED = 70  # streams.agents.loop.EXIT_STALLED


@pytest.fixture(scope="module")
def stack(failures: Callable[[], bool]) -> Iterator[Harness]:
    with scratch_harness("faults", failures) as h:
        h.write_config(processors={"profiles": [str(MAPPINGS / "demo.yaml"), str(MAPPINGS / "demo-products.yaml")],
                                   "documents": [str(MAPPINGS / "demo-orders.yaml")], "stall_exit_s": 20})
        with running(h.spawn("capture")):
            wait_for_capture(h)
            with running(h.spawn("worker", log_name="worker.log")):
                wait_for_identity(h)  # the sync store and the links exist for every test
            yield h


def worker(h: Harness, faults: str = "", port: int | None = None) -> subprocess.Popen[bytes]:
    env = {"CRM_ERP_SYNC_FAULTS": faults} if faults else {}
    if port:
        env["CRM_ERP_SYNC__PROCESSORS__METRICS_PORT"] = str(port)
    return h.spawn("worker", log_name="worker.log", env=env)


def linked_pairs(h: Harness, n: int, offset: int = 0) -> list[tuple[str, str]]:
    with h.connect("sync") as conn:
        return conn.execute("SELECT crm_id, erp_id FROM sync.xref WHERE entity = 'customer' AND linked_by = 'exact'"
                            " ORDER BY crm_id OFFSET %s LIMIT %s", (offset, n)).fetchall()


class Traffic:
    """Edits both ways, new accounts and won deals; then checks every one arrived exactly once."""

    def __init__(self, h: Harness, tag: str, offset: int) -> None:
        self.h, self.tag = h, tag
        self.pairs = linked_pairs(h, 5, offset)
        self.emails = {erp_id: f"{tag}-{i}@example.com" for i, (_, erp_id) in enumerate(self.pairs)}
        self.limits = {crm_id: Decimal(1000 + i) for i, (crm_id, _) in enumerate(self.pairs)}
        self.accounts = [f"{tag}故障{i}科技有限公司" for i in range(3)]
        with h.connect("erp") as erp:
            self.skus = [r[0] for r in erp.execute("SELECT sku FROM items ORDER BY sku LIMIT 2").fetchall()]
            self.orders_before = self._orders(erp)
            self.started = scalar(erp, "SELECT now()")

    def _orders(self, erp: Any) -> dict[str, int]:
        dealers = [erp_id for _, erp_id in self.pairs[:2]]
        counts = dict(erp.execute("SELECT cust_no, count(*) FROM sales_orders WHERE cust_no = ANY(%s)"
                                  " GROUP BY cust_no", (dealers,)).fetchall())
        return {c: counts.get(c, 0) for c in dealers}

    def make(self) -> None:
        with self.h.connect("crm") as crm, self.h.connect("erp") as erp:
            for (crm_id, erp_id), (_, limit) in zip(self.pairs, self.limits.items(), strict=True):
                crm.execute("UPDATE accounts SET email = %s WHERE id = %s", (self.emails[erp_id], crm_id))
                erp.execute("UPDATE customers SET credit_limit_fen = %s WHERE cust_no = %s", (int(limit * 100), erp_id))
            for name in self.accounts:
                crm.execute("INSERT INTO accounts (name, legal_name, tier, status) VALUES (%s, %s, 'A', 'active')",
                            (name[:-6], name))
        for crm_id, _ in self.pairs[:2]:
            win_deal(self.h, crm_id, [(sku, "1", "10.00") for sku in self.skus], title="fault")

    def arrived(self) -> bool:
        with self.h.connect("crm") as crm, self.h.connect("erp") as erp:
            emails = dict(erp.execute("SELECT cust_no, email FROM customers WHERE cust_no = ANY(%s)",
                                      (list(self.emails),)).fetchall())
            limits = dict(crm.execute("SELECT id::text, credit_limit FROM accounts WHERE id::text = ANY(%s)",
                                      (list(self.limits),)).fetchall())
            made = dict(erp.execute("SELECT full_name, count(*) FROM customers WHERE full_name = ANY(%s)"
                                    " GROUP BY full_name", (self.accounts,)).fetchall())
            orders = self._orders(erp)
        return (emails == self.emails and limits == self.limits and made == dict.fromkeys(self.accounts, 1)
                and orders == {c: n + 1 for c, n in self.orders_before.items()})

    def wait(self, timeout: float, what: str) -> None:
        """Until every change arrived and each of their writes is in the audit trail."""
        wait_for(self.arrived, timeout, 0.5, what)
        wait_for(self.audited, 60, 0.5, f"{what}: the writes in the audit trail")

    def check_once(self) -> None:
        """Nothing doubled: each new account once, one order per deal, each write once in the audit trail."""
        assert self.arrived()
        assert self.audited()

    def audited(self) -> bool:
        """Each write of the traffic is in the audit trail exactly once, with its cause (False: not all yet)."""
        with self.h.connect("sync") as sync, self.h.connect("erp") as erp:
            def entries(where: str, *params: Any) -> list[tuple[Any, ...]]:
                return sync.execute("SELECT kind, cause_system, cause_event FROM sync.audit WHERE written_at >= %s"
                                    f" AND {where}", (self.started, *params)).fetchall()

            found = [entries("system = 'erp' AND key = %s AND column_name = 'email' AND new_value = to_jsonb(%s::text)",
                             erp_id, email) for erp_id, email in self.emails.items()]
            found += [entries("system = 'crm' AND key = %s AND column_name = 'credit_limit'"
                              " AND new_value = to_jsonb(%s::bigint)", crm_id, int(limit * 100))
                      for crm_id, limit in self.limits.items()]
            found += [entries("system = 'erp' AND kind = 'create' AND table_name = 'public.customers'"
                              " AND new_value->>'legal_name' = %s", name) for name in self.accounts]
            orders = erp.execute("SELECT c.key FROM sync_meta.created c JOIN sales_orders o ON o.order_no::text = c.key"
                                 " WHERE o.cust_no = ANY(%s) AND c.created_at >= %s",
                                 (list(self.orders_before), self.started)).fetchall()
            found += [entries("system = 'erp' AND kind = 'create' AND table_name = 'public.sales_orders' AND key = %s",
                              key) for key, in orders]
        if len(orders) != len(self.orders_before) or not all(found):
            return False
        assert all(len(f) == 1 for f in found), f"a write audited more than once: {found}"
        assert all(cause and event for f in found for _, cause, event in f), found
        return True


def dead_letters(h: Harness) -> int:
    with h.connect("sync") as conn:
        return int(scalar(conn, "SELECT count(*) FROM sync.dead_letters WHERE replayed_at IS NULL") or 0)


def test_an_exception_in_each_step_is_retried_and_loses_nothing(stack: Harness) -> None:
    h = stack
    dead = dead_letters(h)
    port = free_port()
    with running(worker(h, "normalize.send=transient,reconcile.commit=transient,apply.write=transient,"
                           "documents.step=transient,audit.move=transient", port)) as proc:
        wait_for_identity(h)
        traffic = Traffic(h, "transient", 0)
        traffic.make()
        traffic.wait(120, "every change despite an exception in each step")
        assert proc.poll() is None, "a transient fault ended the worker"
        for stage in ("normalize", "reconcile", "apply", "documents", "audit"):
            assert metric(port, "sync_retries_total", stage=stage) >= 1, f"no retry counted for {stage}"
    traffic.check_once()
    assert dead_letters(h) == dead


def test_a_crash_in_each_step_leaves_the_batch_unacknowledged(stack: Harness) -> None:
    """Each worker crashes once in one step; the next one reads the batch again and finishes it."""
    h = stack
    dead = dead_letters(h)
    traffic = Traffic(h, "crash", 5)
    traffic.make()
    # In the order a change meets them: a crash leaves its batch unacknowledged, so the next worker
    # reaches the same step again, passes it and meets the next crash. The last one crashes after
    # the targets committed, with the audit notes in the store but not yet out of the outboxes.
    for step in ("documents.step", "normalize.send", "reconcile.commit", "apply.write", "audit.move"):
        proc = worker(h, f"{step}=crash")
        with running(proc):
            code = wait_for(lambda p=proc: p.poll(), 120, 0.5, f"the worker to crash at {step}")
        assert code == CRASHED, f"{step}: exit status {code}"
    with running(worker(h)):
        traffic.wait(120, "every change after five crashes")
    traffic.check_once()
    assert dead_letters(h) == dead


def test_a_refused_write_is_visible_and_the_next_value_goes_through(stack: Harness) -> None:
    h = stack
    (crm_id, erp_id), = linked_pairs(h, 1, 29)
    with h.connect("sync") as conn:
        refused_before = scalar(conn, "SELECT count(*) FROM sync.dead_letters WHERE stage = 'apply-crm'")
    with running(worker(h)):
        with h.connect("erp") as erp:
            # 10^17 fen is 10^15 yuan: more than the CRM's numeric(14,2) holds. The CRM refuses it.
            erp.execute("UPDATE customers SET credit_limit_fen = 100000000000000000 WHERE cust_no = %s", (erp_id,))
            with h.connect("sync") as conn:
                wait_for(lambda: scalar(conn, "SELECT count(*) FROM sync.dead_letters WHERE stage = 'apply-crm'"
                                              " AND reason LIKE %s", "%NumericValueOutOfRange%"), 90, 0.5,
                         "the refused write in the dead letters")
            erp.execute("UPDATE customers SET credit_limit_fen = 12345600 WHERE cust_no = %s", (erp_id,))
        with h.connect("crm") as crm:
            wait_for(lambda: scalar(crm, "SELECT credit_limit FROM accounts WHERE id = %s", crm_id)
                     == Decimal("123456.00"), 90, 0.5, "the next valid credit limit in the CRM")
        status = subprocess.run(h.cli("status"), capture_output=True, text=True, timeout=60, check=True)
        assert f"writes refused by the target: crm {refused_before + 1}, erp" in status.stdout, status.stdout
    with h.connect("sync") as conn:  # refused once: not sent again with every later change of the row
        assert scalar(conn, "SELECT count(*) FROM sync.dead_letters WHERE stage = 'apply-crm'") == refused_before + 1


def test_a_topic_deleted_and_created_again_is_read_afresh(stack: Harness) -> None:
    """The applier's progress and the group's offsets of the old topic must not swallow the new one's records."""
    h = stack
    port = free_port()
    proc = worker(h, port=port)
    with running(proc):
        wait_for(lambda: scrape(port) is not None, 60, 0.3, "the worker to run (it knows the topics' ids)")
        wait_agreed(h, 120, "agreement before the fault")
        admin = AdminClient(h.client_config())
        admin.delete_topics(["sync.commands.erp"], operation_timeout=30)["sync.commands.erp"].result(60)
        wait_for(lambda: "sync.commands.erp" not in admin.list_topics(timeout=10).topics, 60, 0.5, "the deletion")
        from streams.settings import load_settings

        ensure_planned(load_settings(h.config_path))  # as any start of capture or a worker does
        code = wait_for(lambda: proc.poll(), 60, 0.5, "the worker to notice the new topic and end")
        assert code == CRASHED
    traffic = Traffic(h, "recreated", 10)
    with running(worker(h, port=port)):
        traffic.make()
        traffic.wait(120, "the changes through the new sync.commands.erp")
        assert metric(port, "sync_apply_commands_total", system="erp", outcome="replayed") == 0
    traffic.check_once()


def test_the_registry_away_while_a_worker_starts_cold_is_waited_for(stack: Harness) -> None:
    """Schemas not cached yet and the registry down: retried (counted), never dead letters."""
    h = stack
    dead = dead_letters(h)
    assert h.registry is not None
    port = int(h.registry.url.rsplit(":", 1)[1])
    h.registry.stop()
    try:
        traffic = Traffic(h, "registry", 15)
        traffic.make()
        metrics_port = free_port()
        proc = worker(h, port=metrics_port)
        with running(proc):
            wait_for(lambda: _retries(metrics_port) > 0, 90, 0.5, "the worker to retry against the missing registry")
            h.registry = RegistryServer(RegistryStore(h.store_conninfo()), "127.0.0.1", port).start()
            traffic.wait(120, "every change once the registry is back")
    finally:
        if h.registry._stopped:  # the test failed before starting it again
            h.registry = RegistryServer(RegistryStore(h.store_conninfo()), "127.0.0.1", port).start()
    traffic.check_once()
    assert dead_letters(h) == dead


def test_a_postgresql_restart_heals_by_itself(stack: Harness) -> None:
    h = stack
    assert h.pg is not None
    port = free_port()
    with running(worker(h, port=port)) as proc:
        # Running, not starting: a start that fails (the database away) ends the process for its
        # supervisor to start again, which this test does not do. Its health tick has reported.
        wait_for(lambda: scrape(port) is not None and metric(port, "sync_stage_last_progress_timestamp_seconds"),
                 90, 0.3, "the worker to run")
        wait_agreed(h, 120, "agreement before the restart")
        h.pg.stop()
        h.pg.start()
        traffic = Traffic(h, "pgrestart", 20)
        traffic.make()
        traffic.wait(180, "every change after PostgreSQL restarted")
        assert proc.poll() is None, "the worker should reconnect, not end"
    traffic.check_once()


def _retries(port: int) -> float:
    try:
        return metric(port, "sync_retries_total")
    except OSError:
        return 0.0  # starting
