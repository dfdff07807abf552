"""Debezium capture into Avro topics on real PostgreSQL, Apache Kafka and registry, in both capture modes.

Every test runs twice: with Debezium inside a Kafka Connect worker (the connector files PUT unchanged)
and with the embedded engine. "Killing capture" kills what runs Debezium: the Connect worker, or the
capture process.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from streams.local.harness import Harness, TopicReader, running, scratch_harness, wait_for, wait_for_capture

pytestmark = pytest.mark.integration


class Capture:
    """The capture of one harness, in one mode, that a test can kill and start again."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.proc: Any = None

    def start(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self.harness.spawn("capture")
        if self.harness.capture_mode == "connect":
            self.harness.start_connect()
        wait_for_capture(self.harness)
        assert self.proc.poll() is None, f"capture exited early: see {self.harness.root / 'capture.log'}"

    def kill(self) -> None:
        """SIGKILL the process running Debezium."""
        if self.harness.capture_mode == "connect":
            self.harness.kill_connect()
        else:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module", params=["connect", "embedded"])
def capture(request: pytest.FixtureRequest, failures: Callable[[], bool]) -> Iterator[Capture]:
    mode = request.param
    with scratch_harness(f"capture-{mode}", failures, capture_mode=mode) as h:
        cap = Capture(h)
        try:
            cap.start()
            yield cap
        finally:
            if cap.proc is not None:
                with running(cap.proc):
                    pass


def _events(records: list[dict[str, object]], topic: str, key_field: str, key: object) -> list[dict[str, object]]:
    return [r for r in records if r["topic"] == topic and r["key"] is not None
            and r["key"][key_field] == key]  # type: ignore[index]


def test_insert_update_delete_round_trip_exact(capture: Capture) -> None:
    harness = capture.harness
    acc_id = uuid.uuid4()
    with harness.connect("crm") as crm:
        crm.execute(
            "INSERT INTO accounts (id, name, legal_name, tier, credit_limit, last_payment_at)"
            " VALUES (%s, %s, %s, 'A', %s, %s)",
            (acc_id, "华信测试", "深圳市华信测试科技股份有限公司", Decimal("123456789012.34"),
             "2026-03-01 08:30:00.123456+08"),
        )
        crm.execute("UPDATE accounts SET credit_limit = 0.01, name = %s WHERE id = %s",
                    ("华信（深圳）测试 Ünïcødé", acc_id))
        crm.execute("DELETE FROM accounts WHERE id = %s", (acc_id,))
    with harness.connect("erp") as erp:
        erp.execute(
            "INSERT INTO customers (cust_no, full_name, credit_limit_fen, modified_on)"
            " VALUES ('T000001', %s, %s, '2026-03-01 16:30:00.654321')",
            ("上海测试贸易有限公司", 9007199254740993),
        )
        erp.execute("UPDATE customers SET credit_limit_fen = credit_limit_fen + 1 WHERE cust_no = 'T000001'")

    reader = TopicReader(harness.bootstrap, harness.registry_url, ["crm.public.accounts", "erp.public.customers"])
    try:
        crm_events = reader.wait(lambda rs: len(_events(rs, "crm.public.accounts", "id", str(acc_id))) >= 4, 60,
                                 "CRM insert, update, delete and tombstone")
        erp_events = reader.wait(lambda rs: len(_events(rs, "erp.public.customers", "cust_no", "T000001")) >= 2, 60,
                                 "ERP insert and update")
    finally:
        reader.close()
    del crm_events, erp_events
    crm_ev = _events(reader.records, "crm.public.accounts", "id", str(acc_id))
    ins, upd, dele, tomb = (r["value"] for r in crm_ev[:4])
    assert [ins["op"], upd["op"], dele["op"]] == ["c", "u", "d"]  # type: ignore[index]
    assert tomb is None, "a delete is followed by a tombstone for compaction"
    assert ins["before"] is None  # type: ignore[index]
    assert ins["after"]["credit_limit"] == Decimal("123456789012.34")  # type: ignore[index]
    assert ins["after"]["legal_name"] == "深圳市华信测试科技股份有限公司"  # type: ignore[index]
    # timestamptz arrives as ISO-8601 in UTC, to the microsecond.
    assert ins["after"]["last_payment_at"] == "2026-03-01T00:30:00.123456Z"  # type: ignore[index]
    assert upd["before"]["credit_limit"] == Decimal("123456789012.34")  # type: ignore[index]
    assert upd["after"]["credit_limit"] == Decimal("0.01")  # type: ignore[index]
    assert upd["after"]["name"] == "华信（深圳）测试 Ünïcødé"  # type: ignore[index]
    assert dele["before"]["name"] == "华信（深圳）测试 Ünïcødé" and dele["after"] is None  # type: ignore[index]
    assert ins["source"]["table"] == "accounts" and ins["source"]["lsn"] < dele["source"]["lsn"]  # type: ignore[index]

    erp_ins, erp_upd = (r["value"] for r in _events(reader.records, "erp.public.customers", "cust_no", "T000001")[:2])
    assert erp_ins["after"]["full_name"] == "上海测试贸易有限公司"  # type: ignore[index]
    # bigint beyond float precision stays exact.
    assert erp_ins["after"]["credit_limit_fen"] == 9007199254740993  # type: ignore[index]
    assert erp_upd["after"]["credit_limit_fen"] == 9007199254740994  # type: ignore[index]
    # timestamp WITHOUT time zone: microseconds of the wall-clock value, as Debezium's MicroTimestamp.
    wall = datetime(2026, 3, 1, 16, 30, 0, 654321, tzinfo=UTC)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert erp_ins["after"]["modified_on"] == (wall - epoch) // timedelta(microseconds=1)  # type: ignore[index]
    assert erp_upd["before"]["credit_limit_fen"] == 9007199254740993  # type: ignore[index]


def test_sigkill_during_burst_loses_nothing(capture: Capture) -> None:
    harness = capture.harness
    with harness.connect("crm") as crm:
        ids = [r[0] for r in crm.execute("SELECT id FROM accounts ORDER BY id LIMIT 50").fetchall()]
    total = 5000
    expected = {f"burst-{i:05d}" for i in range(total)}
    done = threading.Event()

    def burst() -> None:
        with harness.connect("crm") as conn:
            for i in range(total):
                conn.execute("UPDATE accounts SET owner = %s WHERE id = %s", (f"burst-{i:05d}", ids[i % len(ids)]))
        done.set()

    def seen(records: list[dict[str, object]]) -> set[str]:
        return {r["value"]["after"]["owner"] for r in records  # type: ignore[index]
                if r["topic"] == "crm.public.accounts" and r["value"] and r["value"]["after"]  # type: ignore[index]
                and str(r["value"]["after"]["owner"]).startswith("burst-")}  # type: ignore[index]

    reader = TopicReader(harness.bootstrap, harness.registry_url, ["crm.public.accounts"])
    writer = threading.Thread(target=burst)
    writer.start()
    try:
        reader.wait(lambda rs: len(seen(rs)) >= 300, 60, "the first burst events in the topic")
        assert not done.is_set(), "the burst finished before the kill: the test would prove nothing"
        capture.kill()
        capture.start()
        writer.join(120)
        assert done.is_set()
        reader.wait(lambda rs: seen(rs) >= expected, 180, "every burst update in the topic after the restart")
    finally:
        reader.close()
    captured = seen(reader.records)
    assert captured == expected


def test_resync_one_table_with_an_incremental_snapshot_signal(capture: Capture) -> None:
    """Debezium re-reads a captured table on a signal (as the capture role under least privilege:
    it writes the snapshot's watermarks into the signal table)."""
    harness = capture.harness
    with harness.connect("crm") as crm:
        ids = {str(r[0]) for r in crm.execute("SELECT id FROM accounts").fetchall()}
        reader = TopicReader(harness.bootstrap, harness.registry_url, ["crm.public.accounts"])
        reader.poll(2.0)
        before = len(reader.records)
        crm.execute(
            "INSERT INTO sync_meta.debezium_signal (id, type, data) VALUES (gen_random_uuid()::text,"
            " 'execute-snapshot', '{\"data-collections\": [\"public.accounts\"], \"type\": \"incremental\"}')"
        )

    def resnapshotted(records: list[dict[str, object]]) -> bool:
        again = {str(r["key"]["id"]) for r in records[before:]  # type: ignore[index]
                 if r["value"] and r["value"]["op"] == "r"}  # type: ignore[index]
        return again >= ids

    try:
        reader.wait(resnapshotted, 120, "every account row re-read by the incremental snapshot")
    finally:
        reader.close()


def test_idle_source_does_not_pin_wal(capture: Capture) -> None:
    """Heartbeats let an idle database's slot confirm WAL written elsewhere in the cluster."""
    harness = capture.harness
    with harness.connect("sync") as other:
        other.execute("CREATE TABLE IF NOT EXISTS wal_filler (n int, pad text)")
        other.execute("INSERT INTO wal_filler SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g")
        target = other.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]

    def confirmed_past_target() -> bool:
        with harness.connect("crm") as crm:
            row = crm.execute(
                "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots"
                " WHERE slot_name = 'crm_erp_sync_crm'",
                (target,),
            ).fetchone()
        return bool(row and row[0])

    wait_for(confirmed_past_target, 60, 1.0, f"the idle CRM slot to confirm past {target}")


def test_a_schema_the_registry_refuses_is_one_line_naming_the_subject() -> None:
    """A Kafka Connect task failing on the registry's 409: status names the subject and the fix."""
    import subprocess

    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    from streams.local.harness import REPO

    with scratch_harness("capture-409", capture_mode="connect") as h:
        # A schema already under the subject that Debezium's envelope cannot evolve from (BACKWARD).
        SchemaRegistryClient({"url": h.registry_url}).register_schema("crm.public.accounts-value", Schema(
            '{"type": "record", "name": "Other", "fields": [{"name": "x", "type": "int"}]}', "AVRO"))
        with running(h.spawn("capture")):
            h.start_connect()

            def failed_line() -> str | None:
                out = subprocess.run(h.cli("status"), capture_output=True, text=True, timeout=60, cwd=REPO).stdout
                return next((line for line in out.splitlines() if line.strip().startswith("capture crm")
                             and "FAILED" in line), None)

            line = wait_for(failed_line, 120, 1.0, "status to show the failed CRM task")
            assert "refused a new schema for subject crm.public.accounts-value" in line, line
            assert "/config/crm.public.accounts-value" in line, line
            # The ERP's connector is not affected.
            status = subprocess.run(h.cli("status"), capture_output=True, text=True, timeout=60, cwd=REPO).stdout
            assert "capture erp   connector RUNNING, tasks RUNNING" in status, status


def test_the_embedded_engine_stops_on_a_refused_schema_with_one_error_naming_the_subject_and_the_fix() -> None:
    """Not "the Debezium engine stopped on its own": the registry's refusal, the subject, how to proceed."""
    import subprocess

    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    from streams.local.harness import REPO

    with scratch_harness("capture-409e", capture_mode="embedded") as h:
        SchemaRegistryClient({"url": h.registry_url}).register_schema("crm.public.accounts-value", Schema(
            '{"type": "record", "name": "Other", "fields": [{"name": "x", "type": "int"}]}', "AVRO"))
        done = subprocess.run(h.cli("capture"), capture_output=True, text=True, timeout=300, cwd=REPO)
        errors = [line for line in done.stderr.splitlines() if line.startswith("crm-erp-sync capture: error:")]
        assert done.returncode == 1 and errors, done.stderr[-3000:]
        assert "refused a new schema for subject crm.public.accounts-value" in errors[0], errors
        assert "/config/crm.public.accounts-value" in errors[0] and "nothing is lost" in errors[0], errors
