"""The applier on a real ERP database: pipelined writes, a bad command among good ones, replay."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
import yaml

from streams.apply.executor import Applier, Delivery
from streams.apply.sql import CREATED_OF_KEYS
from streams.ddl import ensure_bookkeeping
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


def test_two_workers_apply_other_partitions_of_a_topic_without_waiting_for_each_other(harness: Harness) -> None:
    """An applier locks the progress rows of its batch's partitions, not the topic's (two workers share it)."""
    topic = f"test.apply.{uuid.uuid4().hex[:8]}"
    with harness.connect("erp") as erp:
        (a, a_email), (b, b_email) = erp.execute("SELECT cust_no, email FROM customers ORDER BY cust_no LIMIT 2"
                                                 ).fetchall()
    profiles = load_profiles([REPO / "schemas" / "mappings" / "demo.yaml"])
    first = Applier(profiles, "erp", harness.conninfo("erp"))
    # The other worker would wait 2 s at most for a lock before it fails.
    second = Applier(profiles, "erp", {**harness.conninfo("erp"), "options": "-c lock_timeout=2000"})
    holder = harness.connect("erp", autocommit=False)
    try:
        applied = first.apply([Delivery(topic, 0, 1, _command(a, "email", "partition-0@example.com", a_email))])
        assert applied.written == 1
        # The first worker is in the middle of its next batch of partition 0: its progress row is locked.
        assert holder.execute("SELECT 1 FROM sync_meta.applier_progress WHERE topic = %s AND partition = 0"
                              " FOR UPDATE", (topic,)).fetchall() == [(1,)]
        done = second.apply([Delivery(topic, 1, 1, _command(b, "email", "partition-1@example.com", b_email))])
    finally:
        holder.rollback()
        holder.close()
        for applier in (first, second):
            if applier.conn is not None:
                applier.conn.close()
    assert (done.written, done.failed) == (1, [])
    with harness.connect("erp") as erp:
        assert erp.execute("SELECT email FROM customers WHERE cust_no = %s", (b,)).fetchone() == (
            "partition-1@example.com",)


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


def test_a_target_with_its_own_conventions_gets_formatted_keys_and_stamped_columns(
        harness: Harness, tmp_path: Path) -> None:
    """A quoted table name with a space, a key from a naming series, its own `modified` columns."""
    from streams.reconcile.records import create_record

    table = f"tabTest Customer {uuid.uuid4().hex[:6]}"
    with harness.connect("erp") as erp:
        erp.execute(f'CREATE SEQUENCE IF NOT EXISTS public.test_customer_series; CREATE TABLE public."{table}" ('
                    " name varchar(140) PRIMARY KEY, customer_name text NOT NULL, tax_id text,"
                    " modified timestamp(6), modified_by text)")
    profile = yaml.safe_load((REPO / "schemas" / "mappings" / "demo.yaml").read_text(encoding="utf-8"))
    profile["canonical_schema"] = str(REPO / "schemas" / "canonical" / "customer.avsc")
    profile["sources"]["erp"] = {
        "table": f"public.{table}", "key": "name",
        "new_key": {"sequence": "public.test_customer_series", "format": "CUST-{year}-{n:05d}"},
        "stamp": {"modified": {"now": "Asia/Shanghai"}, "modified_by": "crm-erp-sync"}}
    profile["fields"] = {"name": {"crm": {"column": "name"}, "erp": {"column": "customer_name"}, "policy": "latest"},
                         "tax_id": {"crm": {"column": "uscc"}, "erp": {"column": "tax_id"}, "policy": "latest"}}
    for key in ("identity", "create", "deactivate", "scope", "canonical"):
        profile.pop(key, None)
    path = tmp_path / "erpnext-like.yaml"
    path.write_text(yaml.safe_dump(profile, allow_unicode=True), encoding="utf-8")
    applier = Applier(load_profiles([path]), "erp", harness.conninfo("erp"))
    cause = cause_at(1_700_000_000_000, "test/0/0")
    topic = f"{TOPIC}.conventions"
    try:
        made = applier.apply([Delivery(topic, 0, n, create_record("customer", str(uuid.uuid4()), "erp",
                                                                   {"name": f"约定{n}", "tax_id": f"91CONV{n}"}, cause))
                              for n in (1, 2)])
        with harness.connect("erp") as erp:
            erp.execute(f'UPDATE public."{table}" SET modified = NULL, modified_by = NULL')
            first = erp.execute(f'SELECT name FROM public."{table}" ORDER BY name LIMIT 1').fetchone()[0]
        set_name = applier.apply([Delivery(topic, 0, 3, command_record(
            "customer", str(uuid.uuid4()), first, Command("erp", "name", "约定一", "约定1", None), cause))])
    finally:
        assert applier.conn is not None
        applier.conn.close()
    assert (made.created, made.failed, set_name.written, set_name.failed) == (2, [], 1, [])
    with harness.connect("erp") as erp:
        rows = erp.execute(f'SELECT name, customer_name, modified_by, modified IS NOT NULL,'
                           f" abs(extract(epoch FROM modified - (now() AT TIME ZONE 'Asia/Shanghai'))) < 600"
                           f' FROM public."{table}" ORDER BY name').fetchall()
        erp.execute(f'DROP TABLE public."{table}"')
        year = erp.execute("SELECT to_char(now(), 'YYYY')").fetchone()[0]  # the write's year
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert all(re.fullmatch(rf"CUST-{year}-\d{{5}}", r[0]) for r in rows), rows
    assert rows[0][1:] == ("约定一", "crm-erp-sync", True, True)  # the update stamped it again
    assert rows[1][2:] == (None, False, None)  # not written since the stamps were cleared


def test_the_rows_the_sync_created_are_looked_up_by_key_also_once_prepared(harness: Harness) -> None:
    """``CREATED_OF_KEYS`` (normalize's look-up of the rows the sync created, per batch): its generic plan — the
    one a statement prepared after five runs may use — finds the keys in the ``(entity, key)`` index instead of
    reading every row of the entity (with ``keys IS NULL OR key = ANY(keys)`` it did: 16.8 ms a batch on average
    over a 50,000-account initial sync, growing with every row created; 0.98 ms by key)."""
    entity = f"lookup-{uuid.uuid4().hex[:8]}"
    params = {"entity": "$1", "keys": "$2"}
    with harness.connect("erp") as erp:
        ensure_bookkeeping(erp)  # as an applier's first connection makes it
    with harness.connect("erp", autocommit=False) as erp:  # rolled back at the end: nothing stays
        erp.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        erp.execute("INSERT INTO sync_meta.created (entity, global_id, key)"
                    " SELECT %s, gen_random_uuid(), 'K' || n FROM generate_series(1, 20000) AS n", (entity,))
        erp.execute("ANALYZE sync_meta.created")
        erp.execute(f"PREPARE created_of_keys (text, text[]) AS {CREATED_OF_KEYS % params}")
        run = f"EXECUTE created_of_keys('{entity}', ARRAY['K7', 'K42'])"
        plan = json.dumps(erp.execute(f"EXPLAIN (FORMAT JSON) {run}").fetchone())
        found = erp.execute(run).fetchall()
        erp.rollback()
    assert "created_by_key" in plan and re.search(r'"Index Cond": "[^"]*key = ANY', plan), plan
    assert sorted(key for key, _ in found) == ["K42", "K7"]
