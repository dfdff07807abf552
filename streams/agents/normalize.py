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
from streams.identity.bootstrap import created_by_sync
from streams.identity.resolver import resolve_new
from streams.mapping.profile import Profile
from streams.reconcile.records import change_record
from streams.store import Link

if TYPE_CHECKING:
    from streams.app import Processors

log = logging.getLogger(__name__)


class Normalize:
    """The normalize stage of a worker."""

    def __init__(self, ctx: Processors) -> None:
        self.ctx = ctx

    def parse(self, message: Any) -> envelope.ChangeEvent:
        position = envelope.Position(message.topic, message.partition, message.offset)
        value = self.ctx.decode.loads(message.value) if message.value is not None else None
        key = self.ctx.decode.loads(message.key) if message.key is not None else None
        return envelope.parse(value, key, position)

    def links(self, items: list[tuple[Profile, str, str, dict[str, Any] | None]]) -> list[tuple[Link | None, bool]]:
        """Each ``(profile, system, key, row)``'s link, and whether it may be created on the other system.

        A new record's identity is resolved, unless ``row`` is None (a deletion).
        """
        known: dict[tuple[str, str], dict[str, Link]] = {}
        for profile, system, _, _ in items:
            known.setdefault((profile.entity, system), {})
        for (entity, system), found in known.items():
            of_entity = [(p, k, row) for p, s, k, row in items if (p.entity, s) == (entity, system)]
            found.update(self.ctx.store.links_of(entity, system, [k for _, k, _ in of_entity]))
            new = [k for _, k, row in of_entity if k not in found and row is not None]
            if new:  # rows the sync created there itself: one lookup for the batch, not one per row
                for key, gid in created_by_sync(of_entity[0][0], self.ctx.settings, system, new).items():
                    link = self.ctx.store.attach(entity, gid, system, key, "created")
                    if link is not None:
                        found[key] = link
                        metrics.IDENTITY.labels(entity, "created").inc()
        out: list[tuple[Link | None, bool]] = []
        linked_now: list[int] = []  # positions of records resolved in this batch
        check: dict[tuple[str, str], list[int]] = {}  # positions whose review status decides something
        for i, (profile, system, key, row) in enumerate(items):
            entity = profile.entity
            link, fresh = known[(entity, system)].get(key), False
            if link is None and row is not None:
                link = resolve_new(profile, self.ctx.settings, self.ctx.store, system, key, row)
                known[(entity, system)][key] = link  # a second change of it in this batch finds it
                linked_now.append(i)
                fresh = True
            peer_missing = link is not None and row is not None and (
                link.erp_id if system == "crm" else link.crm_id) is None
            if peer_missing or fresh:
                check.setdefault((entity, system), []).append(i)
            out.append((link, peer_missing))
        reviewed: set[int] = set()
        for (entity, system), positions in check.items():  # one lookup per entity and system
            found_ids = self.ctx.store.reviewing(entity, system, [items[i][2] for i in positions])
            reviewed.update(i for i in positions if items[i][2] in found_ids)
        for i in linked_now:
            link = out[i][0]
            assert link is not None
            metrics.IDENTITY.labels(items[i][0].entity, "review" if i in reviewed else link.linked_by).inc()
        return [(link, may_create and i not in reviewed) for i, (link, may_create) in enumerate(out)]

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
            if not change.is_delete:
                try:
                    values = flow.profile.to_canonical(change.system, change.row)
                except TerminalError as exc:
                    await self.ctx.dead_letter("map", exc.message, message)
                    continue
            mapped.append((flow, change, str(change.key[flow.profile.key_of(change.system)]), values))
        if touching:
            await self.ctx.document_stage.on_changes(touching)
        if not mapped:
            return
        links = await self.ctx.retrying("identity", self.links, [
            (flow.profile, change.system, key, None if values is None else dict(change.row))
            for flow, change, key, values in mapped])
        sends = []
        for (flow, change, key, values), (link, may_create) in zip(mapped, links, strict=True):
            if link is None:  # a deletion of a record never linked
                metrics.RECONCILE_EVENTS.labels(flow.entity, change.system, "ignored").inc()
                continue
            version = flow.profile.sources[change.system].version  # type: ignore[index]
            row_version = change.row.get(version.column) if version else None
            record = change_record(flow.entity, (link.global_id, link.crm_id, link.erp_id), change, key, values,
                                   row_version, may_create)
            sends.append((flow.changes, link.global_id, record))
            metrics.SOURCE_TO_PROCESSOR.labels(change.system).observe(max(0.0, time.time() - change.commit_ms / 1000))
        faults.point("normalize.send")
        await self.ctx.outputs.send(sends)  # acknowledged by the broker before the raw offsets may be committed
        metrics.STAGE_EVENTS.labels("normalize", "out").inc(len(sends))
