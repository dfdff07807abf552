"""Debezium envelope parsing (pure)."""

from __future__ import annotations

import pytest

from streams.envelope import UNAVAILABLE, Position, parse
from streams.errors import TerminalError

POS = Position("crm.public.accounts", 0, 42)
SOURCE = {"name": "crm", "schema": "public", "table": "accounts", "ts_ms": 1000, "lsn": 77, "txId": 5,
          "snapshot": "false"}


def test_update_with_toast_placeholder_is_explicit() -> None:
    value = {"op": "u", "source": SOURCE, "ts_ms": 1010,
             "before": {"id": "a", "note": UNAVAILABLE, "name": "旧"},
             "after": {"id": "a", "note": UNAVAILABLE, "name": "新"}}
    ev = parse(value, {"id": "a"}, POS)
    assert (ev.op, ev.system, ev.table, ev.commit_ms, ev.lsn, ev.capture_ms) == (
        "u", "crm", "public.accounts", 1000, 77, 1010)
    assert ev.unavailable == frozenset({"note"}) and ev.row == {"id": "a", "name": "新"}
    assert ev.position.event_id == "crm.public.accounts/0/42" and not ev.snapshot


def test_delete_row_is_the_before_image_and_tombstone_is_explicit() -> None:
    ev = parse({"op": "d", "source": SOURCE, "before": {"id": "a", "name": "x"}, "after": None}, {"id": "a"}, POS)
    assert ev.is_delete and ev.row == {"id": "a", "name": "x"}
    tomb = parse(None, {"id": "a"}, POS)
    assert tomb.op == "tombstone" and tomb.is_delete and tomb.row == {}


@pytest.mark.parametrize("value, reason", [
    ({"source": SOURCE, "after": {}}, "lacks value.op"),
    ({"op": "x", "source": SOURCE, "after": {}}, "unknown op"),
    ({"op": "u", "source": SOURCE, "after": None}, "without an after image"),
    ({"op": "d", "source": SOURCE, "before": None}, "REPLICA IDENTITY"),
    ({"op": "c", "source": {**SOURCE, "ts_ms": None}, "after": {}}, "source.ts_ms"),
])
def test_malformed_events_are_terminal_with_position(value: dict[str, object], reason: str) -> None:
    with pytest.raises(TerminalError, match=reason) as err:
        parse(value, {"id": "a"}, POS)
    assert "crm.public.accounts/0/42" in str(err.value)


def test_missing_key_is_terminal() -> None:
    with pytest.raises(TerminalError, match="without a key"):
        parse({"op": "c", "source": SOURCE, "after": {}}, None, POS)


def test_a_change_streamed_after_the_snapshot_is_ordered_after_it_whatever_the_clocks() -> None:
    """Seen on Kafka Connect: a snapshot record's ts_ms is when it was read, after changes streamed later."""
    read = parse({"op": "r", "source": {**SOURCE, "ts_ms": 2000, "lsn": 500, "snapshot": "last", "sequence": None},
                  "before": None, "after": {"id": "a", "name": "snapshot"}}, {"id": "a"}, POS)
    first = parse({"op": "u", "source": {**SOURCE, "ts_ms": 1900, "lsn": 510, "sequence": '[null,"510"]'},
                   "before": None, "after": {"id": "a", "name": "first"}}, {"id": "a"}, POS)
    second = parse({"op": "u", "source": {**SOURCE, "ts_ms": 1950, "lsn": 530, "sequence": '["520","530"]'},
                    "before": None, "after": {"id": "a", "name": "second"}}, {"id": "a"}, POS)
    assert read.commit_ms > first.commit_ms  # the clocks say the opposite of what happened
    assert read.order < first.order < second.order
    incremental = parse({"op": "r", "source": {**SOURCE, "lsn": 600, "snapshot": "incremental",
                                               "sequence": '["590","600"]'},
                         "before": None, "after": {"id": "a", "name": "re-read"}}, {"id": "a"}, POS)
    assert second.order < incremental.order  # an incremental snapshot read comes in stream order
