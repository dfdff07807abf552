"""Customer master sync on the real stack: PostgreSQL, Debezium capture, broker, registry, Faust."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from psycopg import sql

from streams.local.erps import DemoErp
from streams.local.harness import (
    Harness,
    TopicReader,
    running,
    scalar,
    scratch_harness,
    wait_for,
    wait_for_capture,
    wait_for_identity,
)
from streams.topics import raw_topic

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sync(demo_erp: DemoErp, failures: Callable[[], bool]) -> Iterator[Harness]:
    # Its own services: the identity counts and the timing must not depend on other modules' edits.
    # The worker and the CLI log in as deploy/sql's applier role (rendered for these profiles), not the owner.
    with scratch_harness(f"sync-{demo_erp.name}", failures, erp=demo_erp.name, least_privilege=True) as harness:
        with running(harness.spawn("capture")), running(harness.spawn("worker", log_name="worker.log")):
            wait_for_capture(harness, ("crm.public.accounts", raw_topic("erp", demo_erp.customer_table)))
            wait_for_identity(harness)
            yield harness


def _pair(h: Harness, kind: str = "exact") -> tuple[str, str]:
    with h.connect("sync") as conn:
        row = conn.execute("SELECT crm_id, erp_id FROM sync.xref WHERE linked_by = %s ORDER BY crm_id LIMIT 1",
                           (kind,)).fetchone()
    assert row is not None
    return row[0], row[1]


def test_seed_links_as_designed(sync: Harness) -> None:
    m = sync.manifest
    assert m is not None
    with sync.connect("sync") as conn:
        kinds = dict(conn.execute("SELECT linked_by, count(*) FROM sync.xref GROUP BY 1").fetchall())
        reviews = scalar(conn, "SELECT count(*) FROM sync.identity_review WHERE status = 'open'")
    assert (kinds["exact"], kinds["name"], kinds["fuzzy"]) == (m.exact_pairs, m.name_pairs, m.fuzzy_pairs)
    assert reviews == m.ambiguous_crm
    # Records on one side only stay single, or gain a counterpart the sync created (never a new link row).
    one_sided = m.ambiguous_crm + m.crm_only + m.ambiguous_erp + m.erp_only
    assert kinds.get("single", 0) + kinds.get("created", 0) == one_sided


def test_owner_edits_reach_the_other_side(sync: Harness, demo_erp: DemoErp) -> None:
    crm_id, erp_id = _pair(sync)
    with sync.connect("crm") as crm:
        crm.execute("UPDATE accounts SET email = 'Owner.Edit@Example.com', address = '上海市浦东新区世纪大道1号'"
                    " WHERE id = %s", (crm_id,))
    with sync.connect("erp") as erp:
        demo_erp.set_credit(erp, erp_id, Decimal("987654321.01"))
        wait_for(lambda: demo_erp.customer(erp, erp_id, "email", "address") == (
            "owner.edit@example.com", "上海市浦东新区世纪大道1号"), 60, 0.3, "the CRM edit in the ERP")
    with sync.connect("crm") as crm:
        wait_for(lambda: scalar(crm, "SELECT credit_limit FROM accounts WHERE id = %s", crm_id)
                 == Decimal("987654321.01"), 60, 0.3, "the ERP credit limit in the CRM, exact")


def test_canonical_topic_has_the_merged_customer_for_downstream(sync: Harness) -> None:
    crm_id, erp_id = _pair(sync)
    with sync.connect("sync") as conn:
        gid = scalar(conn, "SELECT global_id::text FROM sync.xref WHERE crm_id = %s", crm_id)
    reader = TopicReader(sync.bootstrap, sync.registry_url, ["canonical.customer.v1"])
    hashed = hashlib.sha256(b"owner.edit@example.com").hexdigest()
    try:
        record = reader.wait(lambda rs: next((r["value"] for r in reversed(rs) if r["key"] == gid.encode()
                                              and r["value"]["email"] == hashed
                                              and r["value"]["credit_limit_fen"] == 98765432101), None),
                             60, "the merged customer on the canonical topic")
    finally:
        reader.close()
    assert (record["global_id"], record["crm_id"], record["erp_id"]) == (gid, crm_id, erp_id)
    assert record["address"] == "上海市浦东新区世纪大道1号"  # not personal: in clear
    assert record["phone"] is None or len(record["phone"]) == 64  # personal: hashed
    meta = record["metadata"]
    assert meta["source_system"] in ("crm", "erp") and meta["event_id"].count("/") == 2
    assert meta["source_commit_time"] <= meta["capture_time"]


def test_new_records_are_created_on_the_other_side_once(sync: Harness, demo_erp: DemoErp) -> None:
    with sync.connect("erp") as erp:
        highest = demo_erp.last_customer(erp)
    with sync.connect("crm") as crm:
        tier_c = scalar(crm, "INSERT INTO accounts (name, legal_name, tier, status) VALUES"
                              " ('丙级新客', '丙级新客贸易有限公司', 'C', 'active') RETURNING id::text")
        tier_a = scalar(crm, "INSERT INTO accounts (name, legal_name, tier, status, credit_limit, email) VALUES"
                              " ('甲级新客', '甲级新客科技有限公司', 'A', 'active', 300000.00, 'new.a@example.com')"
                              " RETURNING id::text")
    with sync.connect("erp") as erp:
        new_erp = demo_erp.insert_customer(erp, "乙方新客物流有限公司", "new.b@example.com")
        made = wait_for(lambda: demo_erp.customers_named(erp, "甲级新客科技有限公司"), 60, 0.3,
                        "the tier-A account created in the ERP")
        assert made == [(made[0][0], "new.a@example.com")]
        # A credit limit the ERP keeps in a child row is not written by the sync (the ERP owns it).
        limit = Decimal("300000.00") if demo_erp.credit_limit_written else Decimal("0.00")
        assert demo_erp.credit_limit(erp, made[0][0]) == limit
        assert made[0][0] > highest  # a new number from the ERP's sequence
        # Processed in commit order: the tier-C account, committed first, was not created.
        assert demo_erp.customers_named(erp, "丙级新客贸易有限公司") == []
    with sync.connect("crm") as crm:
        wait_for(lambda: scalar(crm, "SELECT count(*) FROM accounts WHERE legal_name = '乙方新客物流有限公司'"),
                 60, 0.3, "the ERP customer created in the CRM")
        row = crm.execute("SELECT name, email, status FROM accounts WHERE legal_name = '乙方新客物流有限公司'"
                          ).fetchall()
        assert row == [("乙方新客物流有限公司", "new.b@example.com", "active")]
    with sync.connect("sync") as conn:
        def link(column: str, key: str) -> tuple[str, str | None, str | None] | None:
            query = sql.SQL("SELECT linked_by, crm_id, erp_id FROM sync.xref WHERE {} = %s").format(
                sql.Identifier(column))
            return conn.execute(query, (key,)).fetchone()

        # The new rows' own change events attach them to the records they were created for.
        wait_for(lambda: link("crm_id", tier_a) == ("created", tier_a, made[0][0]), 60, 0.3,
                 "the link to the new ERP row")
        wait_for(lambda: (x := link("erp_id", new_erp)) and x[0] == "created" and x[1], 60, 0.3,
                 "the link to the new CRM row")
        assert link("crm_id", tier_c) == ("single", tier_c, None)


def test_deleted_erp_customer_deactivates_the_crm_account(sync: Harness, demo_erp: DemoErp) -> None:
    with sync.connect("erp") as erp:
        # A linked customer without orders (orders reference customers and would block the delete).
        candidates = demo_erp.customers_without_orders(erp)
    with sync.connect("sync") as conn:
        crm_id, erp_id = conn.execute(
            "SELECT crm_id, erp_id FROM sync.xref WHERE linked_by = 'exact' AND erp_id = ANY(%s) LIMIT 1",
            (candidates,)).fetchone()
    with sync.connect("crm") as crm:
        crm.execute("UPDATE accounts SET status = 'active' WHERE id = %s", (crm_id,))
    with sync.connect("erp") as erp:
        demo_erp.delete_customer(erp, erp_id)
    with sync.connect("crm") as crm:
        wait_for(lambda: scalar(crm, "SELECT status FROM accounts WHERE id = %s", crm_id) == "inactive", 60, 0.3,
                 "the CRM account deactivated")
        assert scalar(crm, "SELECT count(*) FROM accounts WHERE id = %s", crm_id) == 1  # never deleted
    with sync.connect("sync") as conn:  # audited as a deactivation caused by the ERP's delete
        entries = wait_for(lambda: conn.execute(
            "SELECT kind, old_value, new_value, cause_system FROM sync.audit WHERE system = 'crm' AND key = %s"
            " AND column_name = 'status' AND new_value = '\"inactive\"'", (crm_id,)).fetchall(), 60, 0.3,
            "the deactivation in the audit trail")
        assert entries == [("deactivation", "active", "inactive", "erp")]


def test_a_review_item_decided_by_a_person_is_linked_and_aligned(sync: Harness, demo_erp: DemoErp) -> None:
    listed = subprocess.run(sync.cli("identity", "review"), capture_output=True, text=True, check=True)
    with sync.connect("sync") as conn:
        crm_id, candidates = conn.execute(
            "SELECT source_id, candidates FROM sync.identity_review WHERE status = 'open' ORDER BY id LIMIT 1"
        ).fetchone()
    assert crm_id in listed.stdout
    erp_id = candidates[0]
    with sync.connect("crm") as crm:
        phone = scalar(crm, "SELECT phone FROM accounts WHERE id = %s", crm_id)
    done = subprocess.run(sync.cli("identity", "link", "--crm", crm_id, "--erp", erp_id), capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    with sync.connect("erp") as erp:
        # The CRM owns the phone: once linked, the ERP record takes it.
        wait_for(lambda: demo_erp.customer(erp, erp_id, "phone")[0] == phone, 90, 0.5, "the newly linked pair aligned")
    with sync.connect("sync") as conn:
        assert conn.execute("SELECT linked_by, erp_id FROM sync.xref WHERE crm_id = %s", (crm_id,)).fetchone() \
            == ("manual", erp_id)
    again = subprocess.run(sync.cli("identity", "link", "--crm", crm_id, "--erp", candidates[1]),
                           capture_output=True, text=True, check=False)
    assert again.returncode == 2 and "already linked" in again.stderr


def test_non_owner_edit_is_reverted_visibly(sync: Harness, demo_erp: DemoErp) -> None:
    crm_id, erp_id = _pair(sync, "name")
    with sync.connect("crm") as crm:
        crm_phone = scalar(crm, "SELECT phone FROM accounts WHERE id = %s", crm_id)
    with sync.connect("erp") as erp:
        # Wait until the first alignment made the ERP hold the CRM's phone (the CRM owns it).
        wait_for(lambda: demo_erp.customer(erp, erp_id, "phone")[0] == crm_phone, 60, 0.3, "the initial alignment")
        demo_erp.update_customer(erp, erp_id, phone="010-99999999")
        wait_for(lambda: demo_erp.customer(erp, erp_id, "phone")[0] == crm_phone, 60, 0.3,
                 "the non-owner edit reverted")
    with sync.connect("sync") as conn:
        row = conn.execute(
            "SELECT c.kind, c.resolution, c.erp_value FROM sync.conflicts c JOIN sync.xref x"
            " ON x.global_id = c.global_id WHERE x.erp_id = %s AND c.field = 'phone' ORDER BY c.id DESC LIMIT 1",
            (erp_id,)).fetchone()
    assert row == ("non_owner_edit", "reverted", "010-99999999")


def _inject(sync: Harness, crm_id: str, after: dict[str, Any], ts_step: int = 1) -> tuple[dict[str, Any], bytes]:
    """Produce a raw update event of CRM account ``crm_id`` with ``after`` changed (bytes the profile may refuse)."""
    reader = TopicReader(sync.bootstrap, sync.registry_url, ["crm.public.accounts"], decode=False)
    client = SchemaRegistryClient({"url": sync.registry_url})
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    decode = AvroDeserializer(client)

    def latest_of_row(rs: list[dict[str, Any]]) -> dict[str, Any] | None:
        for r in reversed(rs):
            if r["value"] is not None and decode(r["value"], None)["after"]["id"] == crm_id:
                return r
        return None

    original = reader.wait(latest_of_row, 60, "a raw event of the account")
    reader.close()
    schema = client.get_latest_version("crm.public.accounts-value").schema.schema_str
    event = decode(original["value"], None)
    event["op"] = "u"
    event["before"] = dict(event["after"])
    event["after"] = {**event["after"], **after}
    event["source"] = {**event["source"], "ts_ms": event["source"]["ts_ms"] + ts_step,
                       "lsn": (event["source"]["lsn"] or 0) + ts_step, "sequence": None, "snapshot": "false"}
    value = AvroSerializer(client, schema, conf={"auto.register.schemas": False, "use.latest.version": True})(
        event, SerializationContext("crm.public.accounts", MessageField.VALUE))
    producer = Producer({"bootstrap.servers": sync.bootstrap})
    producer.produce("crm.public.accounts", key=original["key"], value=value)
    assert producer.flush(10) == 0
    return original, value


def test_one_bad_field_is_one_dead_letter_and_the_row_keeps_syncing(sync: Harness, demo_erp: DemoErp) -> None:
    """An invalid tier does not hold up the row: a phone edit made with the tier still invalid arrives."""
    crm_id, erp_id = _pair(sync, "name")
    _inject(sync, crm_id, {"tier": "Q"})
    _inject(sync, crm_id, {"tier": "Q", "phone": "021-77770001"}, ts_step=2)
    with sync.connect("erp") as erp:
        wait_for(lambda: demo_erp.customer(erp, erp_id, "phone")[0] == "021-77770001", 60, 0.3,
                 "the phone edit of a row whose tier is invalid")
    with sync.connect("sync") as conn:
        letters = conn.execute("SELECT stage, reason FROM sync.dead_letters WHERE reason LIKE %s",
                               ("%invalid enum value 'Q'%",)).fetchall()
    assert letters == [("map", "field tier (crm.tier): invalid enum value 'Q'; allowed: A, B, C")], letters


@pytest.mark.parametrize("bad_after, reason", [
    ({"tier": "Z"}, "invalid enum value 'Z'"),
    ({"name": "   "}, "required but empty"),
    ({"name": "长" * 101}, "over 100"),
])
def test_bad_input_goes_to_the_dead_letters_and_the_line_goes_on(
    sync: Harness, demo_erp: DemoErp, bad_after: dict[str, Any], reason: str
) -> None:
    crm_id, erp_id = _pair(sync)
    _, value = _inject(sync, crm_id, bad_after)

    dlq = TopicReader(sync.bootstrap, sync.registry_url, ["sync.dlq"])
    try:
        letter = dlq.wait(lambda rs: next((r["value"] for r in rs if reason in r["value"]["reason"]), None), 60,
                          f"a dead letter saying {reason!r}")
    finally:
        dlq.close()
    assert letter["topic"] == "crm.public.accounts" and letter["value"] == value and letter["stage"] == "map"
    with sync.connect("sync") as conn:
        assert scalar(conn, "SELECT count(*) FROM sync.dead_letters WHERE reason LIKE %s", f"%{reason}%") == 1
    # The next good event still syncs.
    marker = f"after.dlq.{abs(hash(reason)) % 10**6}@example.com"
    with sync.connect("crm") as crm:
        crm.execute("UPDATE accounts SET email = %s WHERE id = %s", (marker, crm_id))
    with sync.connect("erp") as erp:
        wait_for(lambda: demo_erp.customer(erp, erp_id, "email")[0] == marker, 60, 0.3,
                 "the next good edit in the ERP")
    assert json.dumps(letter["reason"])


def test_changes_in_batch_records_and_in_records_of_their_own_both_sync(sync: Harness, demo_erp: DemoErp) -> None:
    """``sync.changes`` carries batch records (``streams.batching``); a change written as a record of its own
    (by a worker from before batches, or a dead letter replayed) still syncs, at the partition Kafka's own
    partitioner picks for its key; an item of a batch that cannot be read is a dead letter named by its index,
    and the batch's other items sync."""
    from confluent_kafka.schema_registry import record_subject_name_strategy
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    from streams import batching
    from streams.codecs import SCHEMAS

    topic = "sync.changes.customer"
    with sync.connect("sync") as conn:
        crm_id, erp_id, gid = conn.execute(
            "SELECT crm_id, erp_id, global_id::text FROM sync.xref WHERE linked_by = 'exact'"
            " ORDER BY crm_id DESC LIMIT 1").fetchone()
    with sync.connect("crm") as crm, sync.connect("erp") as erp:
        crm.execute("UPDATE accounts SET email = 'batch.before@example.com' WHERE id = %s", (crm_id,))
        wait_for(lambda: demo_erp.customer(erp, erp_id, "email")[0] == "batch.before@example.com", 60, 0.3,
                 "a CRM edit through batch records")
    reader = TopicReader(sync.bootstrap, sync.registry_url, [topic], decode=False)
    client = SchemaRegistryClient({"url": sync.registry_url})
    decode = AvroDeserializer(client)
    edits = reader.wait(lambda rs: [c for r in rs if r["key"] == gid.encode()
                                    for c in [decode(r["value"], None)] if c["system"] == "crm"],
                        30, "the CRM edit's change item")
    partitions = len(reader.consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    reader.close()
    change = edits[-1]
    assert change["global_id"] == gid and json.loads(change["values_json"])["email"] == "batch.before@example.com"
    encode = AvroSerializer(client, client.get_latest_version(f"{topic}-value").schema.schema_str,
                            conf={"auto.register.schemas": False, "use.latest.version": True})

    def later(n: int, email: str) -> bytes:  # the same change, n LSNs later, with another e-mail
        values = {**json.loads(change["values_json"]), "email": email}
        order = change["source_order"]
        rec = {**change, "values_json": json.dumps(values), "source_order": [order[0], order[1] + n],
               "metadata": {**change["metadata"], "lsn": (change["metadata"]["lsn"] or 0) + n}}
        return encode(rec, SerializationContext(topic, MessageField.VALUE))

    delivered: list[int] = []
    producer = Producer({"bootstrap.servers": sync.bootstrap, "partitioner": "murmur2_random"})
    producer.produce(topic, key=gid.encode(), value=later(1, "own.record@example.com"),
                     on_delivery=lambda err, msg: delivered.append(msg.partition()))
    assert producer.flush(10) == 0
    assert delivered == [batching.partition_of(gid.encode(), partitions)]  # where Kafka's partitioner put it
    with sync.connect("erp") as erp:
        wait_for(lambda: demo_erp.customer(erp, erp_id, "email")[0] == "own.record@example.com", 60, 0.3,
                 "a change in a record of its own")
    wrap = AvroSerializer(client, (SCHEMAS / batching.SCHEMA).read_text(encoding="utf-8"),
                          conf={"subject.name.strategy": record_subject_name_strategy})
    batch = wrap({"keys": [gid.encode(), gid.encode()], "values": [later(2, "in.a.batch@example.com"), b"unreadable"]},
                 SerializationContext(topic, MessageField.VALUE))
    producer.produce(topic, value=batch, partition=delivered[0], headers=[(batching.HEADER, b"1")])
    assert producer.flush(10) == 0
    with sync.connect("erp") as erp, sync.connect("sync") as conn:
        wait_for(lambda: demo_erp.customer(erp, erp_id, "email")[0] == "in.a.batch@example.com", 60, 0.3,
                 "the readable item of the batch")
        letter = wait_for(lambda: conn.execute(
            "SELECT stage, partition, item, reason FROM sync.dead_letters WHERE topic = %s", (topic,)).fetchall(),
            30, 0.3, "the unreadable item as a dead letter")
    assert [(s, p, i) for s, p, i, _ in letter] == [("reconcile", delivered[0], 1)], letter
    assert "not Confluent wire-format Avro" in letter[0][3]
    with sync.connect("crm") as crm, sync.connect("erp") as erp:  # the CRM's own value again on both sides
        crm.execute("UPDATE accounts SET email = 'batch.after@example.com' WHERE id = %s", (crm_id,))
        wait_for(lambda: demo_erp.customer(erp, erp_id, "email")[0] == "batch.after@example.com", 60, 0.3,
                 "the next CRM edit")
