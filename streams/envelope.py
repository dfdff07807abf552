"""Debezium change events, parsed once into a frozen :class:`ChangeEvent`. Pure.

Input is what the official Avro deserializer returns for a raw topic record (a dict, or None for
a tombstone). TOAST placeholders (``__debezium_unavailable_value``) never leave this module as
values: such columns are listed in ``unavailable`` and left out of ``row``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from streams.errors import TerminalError

UNAVAILABLE = "__debezium_unavailable_value"
OPS = {"c": "insert", "u": "update", "d": "delete", "r": "read", "t": "truncate"}
# source.snapshot of a record of the initial (or a re-taken) snapshot; "incremental" and "false" are
# read in stream order.
INITIAL_SNAPSHOT = {"true", "first", "first_in_data_collection", "last_in_data_collection", "last"}

Op = Literal["c", "u", "d", "r", "t", "tombstone"]


@dataclass(frozen=True)
class Position:
    """Where a record sits in the broker."""

    topic: str
    partition: int
    offset: int

    @property
    def event_id(self) -> str:
        """``topic/partition/offset``: unique per record."""
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True)
class ChangeEvent:
    """One row change, as captured."""

    position: Position
    system: str
    table: str  # schema.table
    op: Op
    key: Mapping[str, Any]
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    commit_ms: int
    capture_ms: int
    lsn: int | None
    tx_id: int | None
    snapshot: bool
    unavailable: frozenset[str] = field(default_factory=frozenset)
    order: tuple[int, int] = (0, 0)  # see source_order()

    @property
    def is_delete(self) -> bool:
        """A delete (or its tombstone)."""
        return self.op in ("d", "tombstone")

    @property
    def row(self) -> Mapping[str, Any]:
        """The row's state after the change (before it, for a delete), placeholders removed."""
        image = self.before if self.is_delete else self.after
        return {k: v for k, v in (image or {}).items() if k not in self.unavailable}



def source_order(source: Mapping[str, Any]) -> tuple[int, int]:
    """The position of a change among the changes of its source database, for one row.

    Debezium emits a row's changes in commit order; this key follows that order without any clock.
    A record of the initial snapshot is the row as of the replication slot's consistent point P
    (its ``lsn``): ``(P, 0)``. A streamed change carries ``sequence = [last commit LSN, LSN]``: the
    commit LSN of the transaction streamed before it (at least P, as every streamed transaction
    committed after P), then its own LSN: ``(last commit LSN, LSN)``. The first transaction streamed
    after a snapshot has no last commit LSN; its own LSN (past P) stands in. A snapshot record's
    ``ts_ms`` is the time it was read, later than changes streamed after it: comparing times would
    drop those changes as stale.
    """
    lsn = int(source.get("lsn") or 0)
    if str(source.get("snapshot") or "false").lower() in INITIAL_SNAPSHOT:
        return (lsn, 0)
    sequence = source.get("sequence")
    last_commit = None
    if sequence:
        try:
            last_commit = json.loads(sequence)[0]
        except (ValueError, TypeError, IndexError):
            last_commit = None
    return (int(last_commit) if last_commit else lsn, lsn)


def _is_placeholder(value: Any) -> bool:
    if isinstance(value, str):
        return value == UNAVAILABLE
    if isinstance(value, (bytes, bytearray)):
        return bytes(value) == UNAVAILABLE.encode()
    if isinstance(value, list):
        return any(_is_placeholder(v) for v in value)
    return False


def _require(container: Mapping[str, Any], name: str, where: str) -> Any:
    if name not in container or container[name] is None:
        raise TerminalError(f"Debezium event lacks {where}.{name}")
    return container[name]


def parse(value: Mapping[str, Any] | None, key: Mapping[str, Any] | None, position: Position) -> ChangeEvent:
    """Parse a decoded Debezium envelope; raises :class:`TerminalError` for a malformed one."""
    if key is None:
        raise TerminalError(f"{position.event_id}: change event without a key (table without primary key?)")
    system, _, rest = position.topic.partition(".")
    table = rest or position.topic
    if value is None:
        return ChangeEvent(position, system, table, "tombstone", dict(key), None, None, 0, 0, None, None, False)
    try:
        op = _require(value, "op", "value")
        source = _require(value, "source", "value")
        if op not in OPS:
            raise TerminalError(f"unknown op {op!r}")
        before, after = value.get("before"), value.get("after")
        if op in ("c", "r", "u") and after is None:
            raise TerminalError(f"op {op!r} without an after image")
        if op == "d" and before is None:
            raise TerminalError("delete without a before image (set REPLICA IDENTITY FULL or DEFAULT)")
        unavailable = frozenset(
            col for image in (before, after) if image for col, v in image.items() if _is_placeholder(v)
        )
        return ChangeEvent(
            position=position,
            system=str(source.get("name") or system),
            table=f"{source.get('schema') or 'public'}.{source.get('table') or table}",
            op=op,
            key=dict(key),
            before=dict(before) if before is not None else None,
            after=dict(after) if after is not None else None,
            commit_ms=int(_require(source, "ts_ms", "source")),
            capture_ms=int(value.get("ts_ms") or 0),
            lsn=source.get("lsn"),
            tx_id=source.get("txId"),
            snapshot=str(source.get("snapshot") or "false") not in ("false", "False"),
            unavailable=unavailable,
            order=source_order(source),
        )
    except TerminalError as exc:
        raise TerminalError(f"{position.event_id}: {exc.message}") from exc
