"""The normalize stage: raw changes in, canonical changes keyed by global id out.

A raw change is decoded, mapped to canonical values with its profile and its identity resolved;
it goes on to ``sync.changes.<entity>`` keyed by global id, so one entity's changes stay in order
on one partition. A change that cannot be decoded or mapped is a dead letter.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from streams import envelope, faults, metrics
from streams.agents.flow import Flow
from streams.errors import SyncError, TerminalError
from streams.identity.batch import BatchIdentity
from streams.reconcile.records import change_record

if TYPE_CHECKING:
    from streams.app import Processors

log = logging.getLogger(__name__)


class Normalize:
    """The normalize stage of a worker."""

    def __init__(self, ctx: Processors) -> None:
        self.ctx = ctx
        self.identity = BatchIdentity(ctx.store, ctx.settings)

    def parse(self, message: Any) -> envelope.ChangeEvent:
        position = envelope.Position(message.topic, message.partition, message.offset)
        value = self.ctx.decode.loads(message.value) if message.value is not None else None
        key = self.ctx.decode.loads(message.key) if message.key is not None else None
        return envelope.parse(value, key, position)

    async def normalize(self, messages: list[Any]) -> None:
        """Decode and map raw change events, resolve their identity, pass them on keyed by global id."""
        mapped: list[tuple[Flow, envelope.ChangeEvent, str, dict[str, Any] | None]] = []
        touching: list[tuple[Any, envelope.ChangeEvent]] = []
        for message in messages:
            try:
                change = self.parse(message)
            except Exception as exc:  # the registry or the bytes: a dead letter, never a stop
                if isinstance(exc, SyncError) and not isinstance(exc, TerminalError):
                    raise  # transient: retried by the agent's supervisor, never dropped
                plain = isinstance(exc, (SyncError, ValueError, TypeError, KeyError))
                reason = getattr(exc, "message", None) or (str(exc) if plain else f"{type(exc).__name__}: {exc}")
                await self.ctx.dead_letter("decode", reason, message)
                continue
            if message.topic in self.ctx.documents.by_topic and change.op not in ("t", "tombstone"):
                touching.append((message, change))
            flow = self.ctx.by_raw.get(message.topic)
            if flow is None:
                continue
            if change.op in ("t", "tombstone"):
                metrics.RECONCILE_EVENTS.labels(flow.entity, change.system, "ignored").inc()
                continue  # truncates are not captured; a tombstone only follows a delete, for compaction
            values: dict[str, Any] | None = None
            key = str(change.key[flow.profile.key_of(change.system)])
            if not change.is_delete:
                values, invalid = flow.profile.read_fields(change.system, change.row)
                for name, reason in invalid.items():  # one bad field is one bad field: the others go on
                    side = flow.profile.fields[name].side(change.system)
                    raw = {c: change.row.get(c) for c in side.columns()} if side else {}
                    await self.ctx.dead_letter("map", reason, message,
                                               fingerprint=f"{message.topic}|{key}|{name}|{raw!r}")
            mapped.append((flow, change, key, values))
        if touching:
            await self.ctx.document_stage.on_changes(touching)
        if not mapped:
            return
        links = await self.ctx.retrying("identity", self.identity.links, [
            (flow.profile, change.system, key, None if values is None else dict(change.row))
            for flow, change, key, values in mapped])
        by_sync = await self.ctx.retrying("echoes", self.ctx.applied.of, [change for _, change, _, _ in mapped])
        sends = []
        for (flow, change, key, values), link in zip(mapped, links, strict=True):
            if link is None:  # a deletion of a record never linked
                metrics.RECONCILE_EVENTS.labels(flow.entity, change.system, "ignored").inc()
                continue
            version = flow.profile.sources[change.system].version  # type: ignore[index]
            row_version = change.row.get(version.column) if version else None
            record = change_record(flow.entity, (link.global_id, link.crm_id, link.erp_id), change, key, values,
                                   row_version, False, change.position.event_id in by_sync)
            sends.append((flow.changes, link.global_id, record))
            metrics.SOURCE_TO_PROCESSOR.labels(change.system).observe(max(0.0, time.time() - change.commit_ms / 1000))
        faults.point("normalize.send")
        await self.ctx.outputs.send(sends)  # acknowledged by the broker before the raw offsets may be committed
        metrics.STAGE_EVENTS.labels("normalize", "out").inc(len(sends))
