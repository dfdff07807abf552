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
    assert (ev.op, ev.system, ev.table, ev.version, ev.capture_ms) == ("u", "crm", "public.accounts", (1000, 77), 1010)
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
