"""Which captured changes the sync's own applier made: an echo is told by its transaction, not by clocks.

The applier records its transaction's id in the target (``sync_meta.applied_tx``) in the same
transaction as its writes; the change events of those writes carry that id (``source.txId``).
Normalize asks each source, once per batch, which of its changes' transaction ids are the sync's.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import psycopg

from streams.apply.sql import APPLIED_SELECT
from streams.envelope import ChangeEvent
from streams.errors import TransientError
from streams.settings import Settings


class AppliedTransactions:
    """Looks up the sync's own transactions in each source database (one connection each, re-made when lost).

    Normalize also finds the rows the sync created on these connections (``identity.batch``): one
    connection per source for the worker's life, not one per batch.
    """

    def __init__(self, settings: Settings) -> None:
        self.conninfo = {s: {**settings.database(s).conninfo(), "application_name": f"crm-erp-sync echoes {s}"}
                         for s in ("crm", "erp")}
        self.conns: dict[str, psycopg.Connection[Any]] = {}
        self.lock = threading.Lock()  # normalize's identity and echo look-ups run in two threads at once

    def of(self, changes: Sequence[ChangeEvent]) -> set[str]:
        """The event ids of the ``changes`` made by the sync's applier."""
        out: set[str] = set()
        for system in {c.system for c in changes}:
            txids = sorted({c.tx_id for c in changes if c.system == system and c.tx_id is not None})
            if not txids:
                continue
            mine = self._lookup(system, txids)
            out.update(c.position.event_id for c in changes if c.system == system and c.tx_id in mine)
        return out

    def connection(self, system: str) -> psycopg.Connection[Any]:
        """The autocommit connection to ``system`` (made again when lost; a database down is transient)."""
        with self.lock:
            conn = self.conns.get(system)
            if conn is None or conn.closed:
                try:
                    conn = self.conns[system] = psycopg.connect(**self.conninfo[system], autocommit=True)
                except psycopg.OperationalError as exc:
                    raise TransientError(f"{system} database unavailable: {exc}".strip()) from exc
            return conn

    def _lookup(self, system: str, txids: list[int]) -> set[int]:
        try:
            return {int(r[0]) for r in self.connection(system).execute(APPLIED_SELECT, (txids,)).fetchall()}
        except psycopg.errors.UndefinedTable:
            return set()  # no applier has written there yet
        except psycopg.OperationalError as exc:
            raise TransientError(f"{system} database unavailable: {exc}".strip()) from exc
