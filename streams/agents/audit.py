"""Moving the appliers' audit notes to the audit trail: the sync store and the topic ``sync.audit``.

Runs in the background after every batch that wrote something (the notes are in the target's
database, written with the changes: the applier goes on with its next batch meanwhile, and several
batches' notes move in one round), and every few seconds for notes a worker left when it died
between its write and the move. Each round takes a target's notes row-locked (two workers
never move the same ones), records them in the store (once each), sends them to the topic, and
only then deletes them; a failure in between leaves them for the next round.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING, Any

import psycopg

from streams import audit, faults, metrics
from streams.apply.audit import TAKE, Outbox, avro
from streams.topics import AUDIT

if TYPE_CHECKING:
    from streams.app import Processors

PRUNE_EVERY_S = 3600.0


class AuditTrail:
    """The audit notes of a worker's targets, moved in rounds."""

    def __init__(self, ctx: Processors) -> None:
        self.ctx = ctx
        self.outboxes = {s: Outbox(s, ctx.settings.database(s).conninfo()) for s in ("crm", "erp")}
        self.locks = {s: asyncio.Lock() for s in self.outboxes}  # one round at a time per target (one connection)
        self.wanted = {s: asyncio.Event() for s in self.outboxes}  # a batch wrote notes since the last round
        self._conn: psycopg.Connection[Any] | None = None
        self.pruned = 0.0

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The trail's own connection to the sync store, made again when lost.

        Not the store's shared one: the movers run beside the stages, and a statement of theirs on a
        connection shared across threads could land in a stage's transaction and be rolled back with it.
        """
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(**self.ctx.store.conninfo, autocommit=True)
        return self._conn

    def soon(self, system: str) -> None:
        """Have ``system``'s notes moved by :meth:`run`, once the current round (if any) ended."""
        self.wanted[system].set()

    async def run(self) -> None:
        """Move each target's notes whenever a batch wrote some (a Faust task, for the worker's life)."""
        await asyncio.gather(*(self._mover(system) for system in self.outboxes))

    async def _mover(self, system: str) -> None:
        wanted = self.wanted[system]
        while True:
            await wanted.wait()
            wanted.clear()
            await self.move(system)

    async def move(self, system: str) -> None:
        """Move ``system``'s waiting notes, round after round until none wait."""
        outbox, retrying = self.outboxes[system], self.ctx.retrying
        async with self.locks[system]:
            while True:
                taken = await retrying(f"audit {system}", outbox.take)
                if not taken:
                    return
                entries = [e for _, e in taken]
                try:
                    await retrying("audit", self._record, entries)
                    records = [(AUDIT, e["global_id"], avro(e)) for e in entries]
                    await self.ctx.retry("audit", functools.partial(self.ctx.outputs.send, records))  # broker away
                except BaseException:
                    await retrying(f"audit {system}", outbox.abort)
                    raise
                await retrying(f"audit {system}", outbox.done, [i for i, _ in taken])
                for e in entries:
                    metrics.AUDIT_ENTRIES.labels(system, e["kind"]).inc()
                if len(taken) < TAKE:
                    return

    def _record(self, entries: list[dict[str, Any]]) -> None:
        audit.record(self.conn, entries)
        faults.point("audit.move")  # in the store, still in the outbox: moved again, recorded once

    async def tick(self) -> None:
        """Notes left behind; entries past the retention (hourly)."""
        for system in self.outboxes:
            await self.move(system)
        if time.monotonic() - self.pruned > PRUNE_EVERY_S:
            days = self.ctx.settings.audit.retention_days
            await self.ctx.retrying("audit", lambda: audit.prune(self.conn, days))
            self.pruned = time.monotonic()
