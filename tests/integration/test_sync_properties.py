"""System-level properties on the real stack: no ping-pong under concurrent edits, replay is a no-op."""

from __future__ import annotations

import random
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient
from psycopg import sql

from streams.batching import partition_of
from streams.bench.convergence import disagreements, metric, wait_agreed
from streams.local.harness import (
    Harness,
    TopicReader,
    records_in,
    running,
    scalar,
    scratch_harness,
    wait_for,
    wait_for_capture,
    wait_for_identity,
)
from streams.local.ports import free_port

pytestmark = pytest.mark.integration
RAW = ["crm.public.accounts", "erp.public.customers"]
COMMANDS = ["sync.commands.crm", "sync.commands.erp"]


def caught_up(h: Harness, port: int) -> bool:
    """The worker finished every raw event and applied every command in the topics."""
    try:
        reconciled = metric(port, "sync_reconcile_events_total")
        applied = metric(port, "sync_apply_commands_total")
    except OSError:
        return False  # the worker is still starting
    return reconciled > 0 and reconciled >= records_in(h, RAW) and applied >= records_in(h, COMMANDS)


def wait_quiet(h: Harness, port: int, what: str) -> None:
    wait_for(lambda: caught_up(h, port) and caught_up(h, port), 120, 1.0, what)


@pytest.fixture(scope="module")
def stack(failures: Callable[[], bool]) -> Iterator[tuple[Harness, int]]:
    with scratch_harness("props", failures) as h:
        port = free_port()
        h.write_config(processors={"metrics_port": port})
        try:
            with running(h.spawn("capture")):
                worker = h.spawn("worker", log_name="worker.log")
                WORKERS.append(worker)
                wait_for_capture(h)
                wait_for_identity(h)
                wait_quiet(h, port, "the initial alignment")
                yield h, port
        finally:
            for proc in WORKERS:
                with running(proc):
                    pass


WORKERS: list[Any] = []  # the module's main worker (replaced when a test kills it)


def test_concurrent_edits_converge_without_ping_pong(stack: tuple[Harness, int]) -> None:
    h, port = stack
    assert disagreements(h) == [], "the initial alignment left differences"
    with h.connect("sync") as conn:
        pairs = conn.execute("SELECT crm_id, erp_id FROM sync.xref WHERE linked_by = 'exact'").fetchall()
    writes_before = metric(port, "sync_apply_commands_total", outcome="written")
    edits = {"crm": [("email", "{}@crm.example.com"), ("phone", "021-5550{:04d}"), ("address", "CRM 路 {} 号"),
                     ("legal_name", "CRM 改名 {} 有限公司")],
             "erp": [("email", "{}@erp.example.com"), ("contact_phone", "010-5550{:04d}"),
                     ("credit_limit_fen", None), ("full_name", "ERP 改名 {} 有限公司")]}
    rng = random.Random(7)
    counter = iter(range(1, 10**6))
    lock = threading.Lock()

    def edit(system: str, n: int) -> None:
        table, key = ("accounts", "id") if system == "crm" else ("customers", "cust_no")
        with h.connect(system) as conn:
            for _ in range(n):
                with lock:
                    i = next(counter)
                    pair = rng.choice(pairs)
                    column, pattern = rng.choice(edits[system])
                value: Any = i * 100 if pattern is None else pattern.format(i)
                statement = sql.SQL("UPDATE {} SET {} = %s WHERE {} = %s").format(
                    sql.Identifier(table), sql.Identifier(column), sql.Identifier(key))
                conn.execute(statement, (value, pair[0] if system == "crm" else pair[1]))

    threads = [threading.Thread(target=edit, args=(s, 100)) for s in ("crm", "erp")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    source_changes = 200  # every edit writes a value never written before
    wait_agreed(h, 30, "both databases to agree on every mapped field")
    wait_quiet(h, port, "the sync to settle")
    assert disagreements(h) == []
    writes = metric(port, "sync_apply_commands_total", outcome="written") - writes_before
    assert 0 < writes <= source_changes, f"{writes} writes for {source_changes} source changes"
    print(f"\nwrites per source change: {writes:.0f}/{source_changes} = {writes / source_changes:.2f}")


def test_worker_killed_mid_stream_loses_no_change(stack: tuple[Harness, int]) -> None:
    h, _ = stack
    with h.connect("sync") as conn:
        pairs = conn.execute("SELECT crm_id, erp_id FROM sync.xref WHERE linked_by IN ('exact', 'name')").fetchall()
    with h.connect("erp") as erp:
        customers = erp.execute("SELECT count(*) FROM customers").fetchone()
    expected = {}
    with h.connect("crm") as crm:
        for i, (crm_id, erp_id) in enumerate(pairs * 4):
            email = f"kill{i}@example.com"
            crm.execute("UPDATE accounts SET email = %s WHERE id = %s", (email, crm_id))
            expected[erp_id] = email
            if i == len(pairs):
                WORKERS[-1].send_signal(signal.SIGKILL)  # mid-stream: edits before and after the kill
                WORKERS[-1].wait(10)
    WORKERS.append(h.spawn("worker", log_name="worker.log"))

    def all_there() -> bool:
        with h.connect("erp") as erp:
            rows = dict(erp.execute("SELECT cust_no, email FROM customers WHERE cust_no = ANY(%s)",
                                    (list(expected),)).fetchall())
        return rows == expected

    wait_for(all_there, 120, 0.5, "every edit made around the kill in the ERP")
    # The restarted worker resumes from committed offsets (its counters start at zero): wait for agreement.
    wait_agreed(h, 60, "both databases to agree after the restart")
    with h.connect("erp") as erp:
        assert erp.execute("SELECT count(*) FROM customers").fetchone() == customers  # nothing duplicated


def test_worker_killed_while_creating_makes_each_customer_once(stack: tuple[Harness, int]) -> None:
    """New tier-A accounts around a SIGKILL: each becomes exactly one ERP customer, linked to it."""
    h, _ = stack
    names = [f"断电测试{i:02d}科技有限公司" for i in range(30)]
    created = "SELECT full_name, count(*) FROM customers WHERE full_name LIKE '断电测试%%' GROUP BY full_name"

    def insert(batch: list[str]) -> list[str]:
        with h.connect("crm") as crm:
            return [scalar(crm, "INSERT INTO accounts (name, legal_name, tier, status) VALUES (%s, %s, 'A', 'active')"
                                " RETURNING id::text", name[:-6], name) for name in batch]

    ids = insert(names[:15])
    with h.connect("erp") as erp:
        wait_for(lambda: erp.execute(created).fetchall(), 60, 0.05, "the first creation")
        WORKERS[-1].send_signal(signal.SIGKILL)  # mid-creation: some made, some not yet
        WORKERS[-1].wait(10)
        made_before_kill = len(erp.execute(created).fetchall())
    ids += insert(names[15:])
    WORKERS.append(h.spawn("worker", log_name="worker.log"))
    with h.connect("erp") as erp:
        wait_for(lambda: len(erp.execute(created).fetchall()) == len(names), 120, 0.5, "every account in the ERP")
    with h.connect("sync") as conn:
        def links() -> list[tuple[str, str]]:
            return conn.execute("SELECT linked_by, erp_id FROM sync.xref WHERE crm_id = ANY(%s)", (ids,)).fetchall()

        wait_for(lambda: [k for k, e in links() if k == "created" and e] == ["created"] * len(ids), 60, 0.5,
                 "each account linked to the customer made for it")
        assert len({e for _, e in links()}) == len(names)
    with h.connect("erp") as erp:
        assert dict(erp.execute(created).fetchall()) == dict.fromkeys(names, 1), "a customer made twice"
    assert made_before_kill < len(names), "the kill came after every creation: nothing was tested"


def test_a_database_down_is_retried_not_dead_lettered(stack: tuple[Harness, int]) -> None:
    """The ERP refuses connections while a CRM edit waits: the applier retries, then writes it."""
    h, port = stack
    with h.connect("sync") as conn:
        crm_id, erp_id = conn.execute("SELECT crm_id, erp_id FROM sync.xref WHERE linked_by = 'exact' LIMIT 1"
                                      ).fetchone()
    retries, dead = metric(port, "sync_retries_total", stage="apply"), metric(port, "sync_dead_letters_total")
    with h.connect("sync") as admin:
        admin.execute("ALTER DATABASE erp ALLOW_CONNECTIONS false")
        try:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = 'erp' AND application_name = 'crm-erp-sync apply erp'")
            with h.connect("crm") as crm:
                crm.execute("UPDATE accounts SET email = 'while-down@example.com' WHERE id = %s", (crm_id,))
            wait_for(lambda: metric(port, "sync_retries_total", stage="apply") > retries, 60, 0.3,
                     "the applier to retry against the refusing ERP")
        finally:
            admin.execute("ALTER DATABASE erp ALLOW_CONNECTIONS true")
    with h.connect("erp") as erp:
        wait_for(lambda: scalar(erp, "SELECT email FROM customers WHERE cust_no = %s", erp_id)
                 == "while-down@example.com", 90, 0.3, "the edit written once the ERP is back")
    assert metric(port, "sync_dead_letters_total") == dead, "a transient failure became a dead letter"


def test_workers_share_reconcile_by_global_id(stack: tuple[Harness, int]) -> None:
    """A second worker in the group takes partitions of sync.changes.customer; each entity stays on one."""
    h, port = stack
    second = free_port()
    WORKERS.append(h.spawn("worker", log_name="worker2.log",
                           env={"CRM_ERP_SYNC__PROCESSORS__METRICS_PORT": str(second)}))
    with h.connect("sync") as conn:
        pairs = conn.execute("SELECT crm_id, erp_id FROM sync.xref WHERE linked_by = 'exact'").fetchall()
    waves = iter(range(1, 10**6))

    def reconciled(p: int) -> float:
        try:
            return metric(p, "sync_reconcile_events_total", outcome="commands")
        except OSError:
            return 0.0  # still starting

    def both_reconcile() -> bool:
        """Edit every linked pair once more; true when both workers have reconciled some of it."""
        wave = next(waves)
        expected = {erp_id: f"share{wave}-{crm_id}@example.com" for crm_id, erp_id in pairs}
        with h.connect("crm") as crm:
            for crm_id, erp_id in pairs:
                crm.execute("UPDATE accounts SET email = %s WHERE id = %s", (expected[erp_id], crm_id))

        def arrived() -> bool:
            with h.connect("erp") as erp:
                return dict(erp.execute("SELECT cust_no, email FROM customers WHERE cust_no = ANY(%s)",
                                        (list(expected),)).fetchall()) == expected

        wait_for(arrived, 60, 0.5, f"wave {wave} of edits in the ERP")
        return reconciled(port) > 0 and reconciled(second) > 0

    wait_for(both_reconcile, 180, 0.0, "the second worker to take a share of the entities")
    # Both members of the group hold partitions of every kind of topic: raw, changes and commands.
    def stable_group() -> Any:
        admin = AdminClient(h.client_config())
        try:
            group = admin.describe_consumer_groups(["crm-erp-sync"], request_timeout=10)["crm-erp-sync"].result(30)
        except Exception:  # a rebalance in progress: ask again
            return None
        return group if group.state == ConsumerGroupState.STABLE else None

    group = wait_for(stable_group, 60, 1.0, "the consumer group to be stable")
    shares = [{(tp.topic, tp.partition) for tp in m.assignment.topic_partitions} for m in group.members]
    assert len(shares) == 2 and not shares[0] & shares[1], shares
    for topic in (*RAW, "sync.changes.customer", *COMMANDS):
        assert all(any(t == topic for t, _ in share) for share in shares), (topic, shares)
    reader = TopicReader(h.bootstrap, h.registry_url, ["sync.changes.customer"])
    try:
        while reader.poll(1.0):
            pass
        partitions: dict[str, set[int]] = {}
        count = len(reader.consumer.list_topics("sync.changes.customer", timeout=10)
                    .topics["sync.changes.customer"].partitions)
        for r in reader.records:  # the items of batch records, each where the Java client would put its key
            assert r["key"].decode() == r["value"]["global_id"]
            assert r["partition"] == partition_of(r["key"], count), r
            partitions.setdefault(r["value"]["global_id"], set()).add(r["partition"])
        assert any(r["item"] > 0 for r in reader.records), "no batch record carried more than one change"
    finally:
        reader.close()
    assert all(len(p) == 1 for p in partitions.values()), "an entity's changes on several partitions"
    assert len(set().union(*partitions.values())) > 1, "every entity on one partition"
    wait_agreed(h, 60, "both databases to agree with two workers")


def test_replaying_every_raw_topic_changes_neither_database(stack: tuple[Harness, int]) -> None:
    h, _ = stack
    with h.connect("crm") as crm, h.connect("erp") as erp:
        before = (crm.execute("SELECT * FROM accounts ORDER BY id").fetchall(),
                  erp.execute("SELECT * FROM customers ORDER BY cust_no").fetchall())
    port = free_port()
    h.write_config(processors={"metrics_port": port, "app_id": "crm-erp-sync-replay"})
    with running(h.spawn("worker", log_name="replay.log")):  # a new consumer group reads from the start
        wait_quiet(h, port, "the replay to finish")
        assert metric(port, "sync_apply_commands_total", outcome="written") == 0
        assert metric(port, "sync_reconcile_events_total") >= records_in(h, RAW) > 0
    with h.connect("crm") as crm, h.connect("erp") as erp:
        after = (crm.execute("SELECT * FROM accounts ORDER BY id").fetchall(),
                 erp.execute("SELECT * FROM customers ORDER BY cust_no").fetchall())
    assert after == before
