"""Creations due: records still without a counterpart, once the other system's changes up to then were read.

A record first seen without a match is not created on the other system at once: a twin written
there at the same time would arrive a moment later and be created back (a duplicate on both
sides). So a creation waits for two things. First a hold (``processors.create_hold_s``, from when
the record was read), for the twin's capture to reach Kafka. Then, when the hold has passed, the
other system's raw topic's end offsets are noted, and the creation waits until the workers'
consumer group has committed that far: every record the other system wrote before, twin included,
has been read and indexed by then, however far behind a worker or a partition was (a rebalance,
a backlog on one side only).

Every second, the creations due are taken (``FOR UPDATE SKIP LOCKED``: two workers share them);
one still without a counterpart and not under review becomes a ``create`` request on its entity's
``sync.changes`` topic, and the pending row goes when the broker has it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from streams import metrics
from streams.reconcile.core import other
from streams.reconcile.records import create_request
from streams.store import Link

if TYPE_CHECKING:
    from streams.app import Processors

log = logging.getLogger(__name__)
DUE = ("SELECT entity, global_id::text, system, source_id, peer_ends FROM sync.pending_creates WHERE due_at <= now()"
       " ORDER BY due_at LIMIT 5000 FOR UPDATE SKIP LOCKED")
DONE = ("DELETE FROM sync.pending_creates p USING unnest(%s::text[], %s::uuid[]) AS d(e, g)"
        " WHERE p.entity = d.e AND p.global_id = d.g")
NOTE = ("UPDATE sync.pending_creates p SET peer_ends = d.ends::jsonb FROM unnest(%s::text[], %s::uuid[], %s::text[])"
        " AS d(e, g, ends) WHERE p.entity = d.e AND p.global_id = d.g")


@dataclass(frozen=True)
class Due:
    """One creation whose hold has passed."""

    entity: str
    global_id: str
    system: str
    source_id: str
    peer_ends: dict[str, int] | None  # partition -> end offset of the other system's raw topic, once noted
    link: Link | None
    reviewed: bool

    def still_alone(self) -> bool:
        """Not linked to a twin meanwhile, not waiting for a person, not merged into another record, not gone."""
        if self.link is None or self.link.global_id != self.global_id or self.reviewed:
            return False
        peer_id = self.link.erp_id if self.system == "crm" else self.link.crm_id
        return peer_id is None and self.link.linked_by != "merged"


def read_up_to(committed: Mapping[str, int], ends: Mapping[str, int]) -> bool:
    """Whether the committed offsets (partition -> offset; absent: nothing committed) reach every noted end."""
    return all(committed.get(p, 0) >= end for p, end in ends.items())


class Creates:
    """The creations due of a worker."""

    def __init__(self, ctx: Processors) -> None:
        self.ctx = ctx
        self.conn: psycopg.Connection[Any] | None = None
        self.offsets: Any = None  # a consumer of the workers' group that never joins it: offsets only

    def _take(self) -> list[tuple[str, str, str, str, dict[str, int] | None]]:
        """The creations due, row-locked (the transaction stays open)."""
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(**self.ctx.settings.store.conninfo())
        return self.conn.execute(DUE).fetchall()

    def _look_up(self, rows: list[tuple[str, str, str, str, dict[str, int] | None]]) -> list[Due]:
        """Each creation with its link and review status: two look-ups per entity and system."""
        store = self.ctx.store
        keys: dict[tuple[str, str], list[str]] = {}
        for entity, _, system, key, _ in rows:
            keys.setdefault((entity, system), []).append(key)
        links = {(e, s): store.links_of(e, s, k) for (e, s), k in keys.items()}
        waiting = {(e, s): store.reviewing(e, s, k) for (e, s), k in keys.items()}
        return [Due(entity, gid, system, key, ends, links[(entity, system)].get(key), key in waiting[(entity, system)])
                for entity, gid, system, key, ends in rows]

    def _positions(self, topics: set[str]) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
        """Per topic: end offsets and the workers' committed offsets, by partition (as text, for JSON)."""
        from confluent_kafka import Consumer, TopicPartition

        if self.offsets is None:
            self.offsets = Consumer({**self.ctx.settings.kafka.client_config(),
                                     "group.id": self.ctx.group, "enable.auto.commit": False})
        meta = self.offsets.list_topics(timeout=10).topics
        parts = [TopicPartition(t, p) for t in sorted(topics) if t in meta for p in meta[t].partitions]
        ends: dict[str, dict[str, int]] = {t: {} for t in topics}
        committed: dict[str, dict[str, int]] = {t: {} for t in topics}
        for tp in parts:
            ends[tp.topic][str(tp.partition)] = self.offsets.get_watermark_offsets(tp, timeout=10)[1]
        for tp in self.offsets.committed(parts, timeout=10) if parts else []:
            if tp.offset >= 0:
                committed[tp.topic][str(tp.partition)] = tp.offset
        return ends, committed

    def _finish(self, done: list[tuple[str, str]], noted: list[tuple[str, str, str]]) -> None:
        """Forget the creations sent or dropped, note the others' ends; all or nothing.

        A failure (a deadlock with a worker pending new creations, say) rolls back, so the retry
        starts a transaction of its own: both statements are idempotent.
        """
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(**self.ctx.settings.store.conninfo())
        try:
            if done:
                done = sorted(done)  # rows locked in one order: fewer deadlocks
                self.conn.execute(DONE, ([e for e, _ in done], [g for _, g in done]))
            if noted:
                noted = sorted(noted)
                self.conn.execute(NOTE, ([e for e, _, _ in noted], [g for _, g, _ in noted],
                                         [j for _, _, j in noted]))
            self.conn.commit()
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.rollback()

    async def tick(self) -> None:
        """Send the creations due to reconcile; forget the pending rows once the broker has them."""
        rows = await self.ctx.retrying("creates", self._take)
        if not rows:
            await self.ctx.retrying("creates", self._rollback)
            return
        peer_topics = {(entity, system): self._peer_topic(entity, system) for entity, _, system, _, _ in rows}
        try:
            ends, committed = await self.ctx.retrying("creates", self._positions, set(peer_topics.values()))
            # Those noted earlier whose other system the workers have not read that far yet wait, and
            # are not looked up again on every tick while they do (an entity no profile has goes now).
            rows = [r for r in rows if r[4] is None or r[0] not in self.ctx.by_entity
                    or read_up_to(committed[peer_topics[(r[0], r[2])]], r[4])]
            due = await self.ctx.retrying("creates", self._look_up, rows) if rows else []
        except BaseException:
            await self.ctx.retrying("creates", self._rollback)
            raise
        sends, done, noted = [], [], []
        for d in due:
            flow = self.ctx.by_entity.get(d.entity)
            if flow is None or not d.still_alone():
                done.append((d.entity, d.global_id))
                continue
            if d.peer_ends is None:  # the hold passed: the other system's changes up to now are to be read first
                noted.append((d.entity, d.global_id, json.dumps(ends[peer_topics[(d.entity, d.system)]])))
            else:  # read that far: every twin written before the hold passed has been seen
                done.append((d.entity, d.global_id))
                link = d.link
                assert link is not None
                sends.append((flow.changes, d.global_id, create_request(
                    d.entity, (d.global_id, link.crm_id, link.erp_id), d.system, d.source_id,
                    flow.profile.table_of(d.system))))
        try:
            await self.ctx.outputs.send(sends)
        except BaseException:
            await self.ctx.retrying("creates", self._rollback)
            raise
        metrics.IDENTITY_CREATES_DUE.inc(len(sends))
        await self.ctx.retrying("creates", self._finish, done, noted)

    def _peer_topic(self, entity: str, system: str) -> str:
        """The other system's raw topic of a record's entity ("" for an entity no profile has any more)."""
        flow = self.ctx.by_entity.get(entity)
        return f"{other(system)}.{flow.profile.table_of(other(system))}" if flow else ""
