"""The audit trail of the sync's writes: each one is noted in the target's transaction, then published.

An applier notes every write that changed something (a field, a rollup's column, a new row or
document) in ``sync_meta.audit_outbox`` of the database it writes, in the write's own transaction:
a write without its note (or a note without its write) cannot happen. After the batch commits, the
worker moves the notes to the sync store (``sync.audit``, once each: the entry's id is its key) and
to the Avro topic ``sync.audit`` (at least once: consumers dedupe by ``audit_id``), then deletes
them; notes left by a worker that died in between are moved by the next one. (The outbox table
is created with the applier's other bookkeeping: ``streams.apply.sql.PROGRESS_DDL``.)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from streams.ddl import ensure_bookkeeping

OUTBOX_INSERT = "INSERT INTO sync_meta.audit_outbox (entry) SELECT value FROM jsonb_array_elements(%s)"
OUTBOX_TAKE = "SELECT id, entry FROM sync_meta.audit_outbox ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
OUTBOX_DONE = "DELETE FROM sync_meta.audit_outbox WHERE id = ANY(%s)"
TAKE = 2000  # notes moved per round


def _ms(value: Any) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def entry(system: str, command: dict[str, Any], table: str, key: str, field: str, column: str,
          old: Any, new: Any, nth: int = 0) -> dict[str, Any]:
    """One note (JSON-able; times in epoch milliseconds): ``command`` wrote ``new`` over ``old`` there.

    ``old`` and ``new`` are canonical values (a field) or column values (a rollup); a new row has
    no ``old`` (None) and its values as ``new``. A command writing several columns notes each
    (``nth`` apart).
    """
    kind = "create" if command.get("op") in ("create", "document") else command.get("kind") or "update"
    return {
        "audit_id": f"{system}/{command['command_id']}/{nth}", "written_at": _ms(datetime.now(tz=UTC)),
        "system": system, "table": table, "key": str(key), "entity": command["entity"],
        "global_id": command["global_id"], "field": field, "column": column,
        "old_json": None if old is None else json.dumps(old, ensure_ascii=False, default=str),
        "new_json": json.dumps(new, ensure_ascii=False, default=str),
        "kind": kind, "decided_by": command.get("decided_by"),
        "command_id": command["command_id"], "cause_system": command.get("cause_system"),
        "cause_tx_id": command.get("cause_tx_id"), "cause_lsn": command.get("cause_lsn"),
        "cause_event": command.get("cause_event") or "", "cause_commit_time": _ms(command.get("cause_commit_time")),
    }


def note(conn: psycopg.Connection[Any], entries: list[dict[str, Any]]) -> None:
    """Note ``entries`` in the outbox, in the caller's transaction."""
    if entries:
        conn.execute(OUTBOX_INSERT, (Jsonb(entries),))


def avro(e: dict[str, Any]) -> dict[str, Any]:
    """An entry as a ``schemas/sync/audit.avsc`` record."""
    return {**e, "written_at": datetime.fromtimestamp(e["written_at"] / 1000, tz=UTC),
            "cause_commit_time": datetime.fromtimestamp((e["cause_commit_time"] or 0) / 1000, tz=UTC)}


class Outbox:
    """The notes waiting in one target database: taken row-locked (two workers share them), then deleted."""

    def __init__(self, system: str, conninfo: dict[str, Any]) -> None:
        self.system = system
        self.conninfo = {**conninfo, "application_name": f"crm-erp-sync audit {system}"}
        self.conn: psycopg.Connection[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:  # a database restarted: a new connection
            self.conn = psycopg.connect(**self.conninfo)
            with self.conn.transaction():  # a database the applier has not written to yet has no outbox
                ensure_bookkeeping(self.conn)
        return self.conn

    def take(self) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``TAKE`` notes, locked until :meth:`done` or :meth:`abort` (the transaction stays open)."""
        conn = self._connect()
        rows = conn.execute(OUTBOX_TAKE, (TAKE,)).fetchall()
        if not rows:
            conn.rollback()
        return [(int(r[0]), r[1]) for r in rows]

    def done(self, ids: list[int]) -> None:
        """Delete the notes moved, and end the transaction (again on a new connection if it broke: idempotent)."""
        conn = self._connect()
        try:
            conn.execute(OUTBOX_DONE, (ids,))
            conn.commit()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Release the notes taken (the next round takes them again)."""
        if self.conn is not None and not self.conn.closed:
            self.conn.rollback()
