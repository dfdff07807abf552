"""Audit entries as the appliers note them, and as `crm-erp-sync audit` reads and shows them (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streams.apply.audit import avro, entry
from streams.audit import line, parse_since

COMMAND = {"command_id": "c1", "entity": "customer", "global_id": "g1", "op": "set", "kind": None,
           "decided_by": "policy:latest", "cause_system": "erp", "cause_tx_id": 812, "cause_lsn": 4242,
           "cause_event": "erp.public.customers/0/7", "cause_commit_time": datetime(2026, 11, 30, 8, tzinfo=UTC)}


def test_an_entry_names_the_write_its_values_and_its_cause() -> None:
    e = entry("crm", COMMAND, "public.accounts", 42, "address", "address", "旧", "新")
    assert e["audit_id"] == "crm/c1/0" and e["key"] == "42" and (e["old_json"], e["new_json"]) == ('"旧"', '"新"')
    assert (e["kind"], e["decided_by"], e["cause_tx_id"], e["cause_lsn"]) == ("update", "policy:latest", 812, 4242)
    assert e["cause_commit_time"] == int(COMMAND["cause_commit_time"].timestamp() * 1000)  # type: ignore[attr-defined]
    assert entry("crm", COMMAND, "t", 1, "f", "a", 1, 2, nth=1)["audit_id"] == "crm/c1/1"  # a rollup's next column
    created = entry("erp", {**COMMAND, "op": "create"}, "public.customers", "C9", "", "", None, {"legal_name": "x"})
    assert (created["kind"], created["old_json"]) == ("create", None)
    assert avro(e)["written_at"].tzinfo is UTC  # timestamp-millis fields as datetimes for the Avro encoder


def test_a_line_says_who_decided_what_changed_and_why() -> None:
    shown = line({"written_at": datetime(2026, 11, 30, 8, 0, 1, tzinfo=UTC), "kind": "resolution",
                  "decided_by": "person:ops", "system": "erp", "table_name": "public.customers", "key": "C1",
                  "column_name": "tax_no", "old_value": "A", "new_value": "B", "entity": "customer", "global_id": "g1",
                  "cause_system": None, "cause_event": "conflict/7", "command_id": "c1"})
    assert shown == ('2026-11-30 08:00:01 resolution by person:ops  erp public.customers C1 tax_no: "A" -> "B"'
                     "  [customer g1; cause conflict/7; command c1]")


def test_since_takes_a_time_or_an_age() -> None:
    assert parse_since("2026-11-30T08:00") == datetime(2026, 11, 30, 8, tzinfo=UTC)
    assert abs(parse_since("36h") - (datetime.now(tz=UTC) - timedelta(hours=36))) < timedelta(seconds=5)
    with pytest.raises(ValueError):
        parse_since("yesterday")
