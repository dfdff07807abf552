"""The applier on a real ERP database: pipelined writes, a bad command among good ones, replay."""

from __future__ import annotations

import uuid

import pytest

from streams.apply.executor import Applier, Delivery
from streams.local.harness import REPO, Harness
from streams.mapping.profile import load_profiles
from streams.reconcile.core import Command
from streams.reconcile.records import cause_at, command_record

pytestmark = pytest.mark.integration

TOPIC = f"test.apply.{uuid.uuid4().hex[:8]}"  # its own progress rows


def _command(cust_no: str, field: str, value: object, expect: object) -> dict[str, object]:
    return command_record("customer", str(uuid.uuid4()), cust_no, Command("erp", field, value, expect, None),
                          cause_at(1_700_000_000_000, "test/0/0"))


def test_a_bad_write_among_good_ones_is_reported_and_the_rest_apply_once(harness: Harness) -> None:
    with harness.connect("erp") as erp:
        rows = erp.execute("SELECT cust_no, email, credit_limit_fen FROM customers"
                           " ORDER BY cust_no DESC LIMIT 3").fetchall()
    (a, a_email, _), (b, _, b_limit), (c, c_email, _) = rows
    batch = [
        Delivery(TOPIC, 0, 10, _command(a, "email", "pipelined-a@example.com", a_email)),
        Delivery(TOPIC, 0, 11, _command(b, "credit_limit_fen", 10**20, b_limit)),  # over bigint: the database says no
        Delivery(TOPIC, 0, 12, _command(c, "email", "pipelined-c@example.com", c_email)),
        # Compare-and-set: the row does not hold what the command expects, so nothing is written.
        Delivery(TOPIC, 0, 13, _command(c, "email", "stale@example.com", "someone.else@example.com")),
    ]
    applier = Applier(load_profiles([REPO / "schemas" / "mappings" / "demo.yaml"]), "erp", harness.conninfo("erp"))
    try:
        first = applier.apply(batch)
        again = applier.apply(batch)  # a replay: at or below the stored progress
        good = applier.apply([Delivery(TOPIC, 0, 14, _command(a, "email", "pipelined-a2@example.com",
                                                              "pipelined-a@example.com"))])
    finally:
        assert applier.conn is not None
        applier.conn.close()

    assert (first.written, first.skipped, first.replayed) == (2, 1, 0)
    assert [(d.offset, reason) for d, reason in first.failed] == [(11, "NumericValueOutOfRange: bigint out of range")]
    assert (again.written, again.skipped, again.replayed, again.failed) == (0, 0, 4, [])
    assert (good.written, good.failed) == (1, [])
    with harness.connect("erp") as erp:
        now = dict(erp.execute("SELECT cust_no, email FROM customers WHERE cust_no = ANY(%s)", ([a, c],)).fetchall())
        limit = erp.execute("SELECT credit_limit_fen FROM customers WHERE cust_no = %s", (b,)).fetchone()
    assert now == {a: "pipelined-a2@example.com", c: "pipelined-c@example.com"}
    assert limit == (b_limit,)


def test_a_topic_created_again_is_a_new_incarnation_not_a_replay(harness: Harness) -> None:
    """Its offsets start at 0 again: the applier's progress of the old topic must not swallow them."""
    topic = f"test.apply.{uuid.uuid4().hex[:8]}"
    with harness.connect("erp") as erp:
        cust_no, email = erp.execute("SELECT cust_no, email FROM customers ORDER BY cust_no LIMIT 1").fetchone()
    applier = Applier(load_profiles([REPO / "schemas" / "mappings" / "demo.yaml"]), "erp", harness.conninfo("erp"))
    try:
        old = applier.apply([Delivery(topic, 0, 500, _command(cust_no, "email", "old-topic@example.com", email),
                                      "id-of-the-old-topic")])
        new = applier.apply([Delivery(topic, 0, 3, _command(cust_no, "email", "new-topic@example.com",
                                                            "old-topic@example.com"), "id-of-the-new-topic")])
        replay = applier.apply([Delivery(topic, 0, 3, _command(cust_no, "email", "again@example.com",
                                                               "new-topic@example.com"), "id-of-the-new-topic")])
    finally:
        assert applier.conn is not None
        applier.conn.close()
    assert (old.written, new.written, new.replayed) == (1, 1, 0)
    assert (replay.written, replay.replayed) == (0, 1)  # within one incarnation, a replay is still a no-op
    with harness.connect("erp") as erp:
        assert erp.execute("SELECT email FROM customers WHERE cust_no = %s", (cust_no,)).fetchone() == (
            "new-topic@example.com",)


def test_creates_are_made_once_each_and_a_bad_one_does_not_sink_the_rest(harness: Harness) -> None:
    from streams.reconcile.records import cause_at, create_record

    def create(gid: str, name: str, limit: int) -> dict[str, object]:
        values = {"legal_name": name, "name": name, "credit_limit_fen": limit, "payment_terms": "NET30"}
        return create_record("customer", gid, "erp", values, cause_at(1_700_000_000_000, "test/0/0"))

    topic = f"{TOPIC}.create"
    first, second, bad = (str(uuid.uuid4()) for _ in range(3))
    batch = [
        Delivery(topic, 0, 1, create(first, "管道创建测试一有限公司", 100)),
        Delivery(topic, 0, 2, create(first, "管道创建测试一有限公司", 100)),  # repeated: no second row
        Delivery(topic, 0, 3, create(bad, "管道创建测试坏有限公司", 10**20)),  # over bigint
        Delivery(topic, 0, 4, create(second, "管道创建测试二有限公司", 200)),
    ]
    applier = Applier(load_profiles([REPO / "schemas" / "mappings" / "demo.yaml"]), "erp", harness.conninfo("erp"))
    try:
        done = applier.apply(batch)
        again = applier.apply([Delivery(topic, 0, 5, create(second, "管道创建测试二有限公司", 200))])  # a new offset
    finally:
        assert applier.conn is not None
        applier.conn.close()
    assert (done.created, [d.offset for d, _ in done.failed], again.created) == (2, [3], 0)
    assert "out of range" in done.failed[0][1]
    with harness.connect("erp") as erp:
        names = [r[0] for r in erp.execute("SELECT full_name FROM customers WHERE full_name LIKE '管道创建测试%%'"
                                           " ORDER BY full_name").fetchall()]
        recorded = erp.execute("SELECT count(*) FROM sync_meta.created WHERE global_id = ANY(%s)",
                               ([first, second, bad],)).fetchone()
    assert names == ["管道创建测试一有限公司", "管道创建测试二有限公司"] and recorded == (2,)
