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
from streams.identity.keys import IdentityKeys
from streams.identity.resolver import record_of, resolve_new
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

    def links(self, items: list[tuple[Profile, str, str, dict[str, Any] | None]]) -> list[Link | None]:
        """Each ``(profile, system, key, row)``'s link; a new record's identity is resolved (``row`` None: deleted).

        Every record's match keys are indexed as they change; a new record is decided under locks on
        its keys (``identity.resolver``); a record still without a counterpart, and not waiting for a
        person, is (again) due to be created on the other system after the hold.
        """
        store, hold = self.ctx.store, self.ctx.settings.processors.create_hold_s
        known: dict[tuple[str, str], dict[str, Link]] = {}
        created: dict[str, list[tuple[str, Any]]] = {}  # per entity: records just given their created counterpart
        profiles: dict[str, Profile] = {}
        for profile, system, _, _ in items:
            known.setdefault((profile.entity, system), {})
            profiles[profile.entity] = profile
        for (entity, system), found in known.items():
            of_entity = [(k, row) for p, s, k, row in items if (p.entity, s) == (entity, system)]
            found.update(store.links_of(entity, system, [k for k, _ in of_entity]))
            new = [k for k, row in of_entity if k not in found and row is not None]
            if new:  # rows the sync created there itself: one lookup for the batch, not one per row
                for key, gid in created_by_sync(profiles[entity], self.ctx.settings, system, new).items():
                    link = store.attach(entity, gid, system, key, "created")
                    if link is not None:
                        found[key] = link
                        created.setdefault(entity, []).append(("crm", link.crm_id) if system == "erp"
                                                              else ("erp", link.erp_id))
                        metrics.IDENTITY.labels(entity, "created").inc()
        for entity, profile in profiles.items():  # the index follows every change (a few statements)
            latest = {(s, k): row for p, s, k, row in items if p.entity == entity}  # a record's last state
            paired = {(s, k) for (e, s), found in known.items() if e == entity
                      for k, link in found.items() if link.crm_id is not None and link.erp_id is not None}
            keys = IdentityKeys(entity)
            with store.conn.transaction():
                keys.put(store.conn, [record_of(profile, s, k, row) for (s, k), row in latest.items()
                                      if row is not None], paired)
                keys.drop_grams(store.conn, created.get(entity, []))  # what they were created for
                for s, k in (sk for sk, row in latest.items() if row is None):
                    keys.remove(store.conn, s, k)
        out: list[Link | None] = []
        alone: dict[tuple[str, str], list[int]] = {}  # positions of records without a counterpart yet
        for i, (profile, system, key, row) in enumerate(items):
            link = known[(profile.entity, system)].get(key)
            if link is None and row is not None:
                decision = resolve_new(profile, store, system, key, row, hold)
                link = known[(profile.entity, system)][key] = decision.link  # a later change of it finds it
                metrics.IDENTITY.labels(profile.entity, "review" if decision.reviewed else decision.kind).inc()
            elif (link is not None and row is not None and link.linked_by != "merged"
                  and (link.erp_id if system == "crm" else link.crm_id) is None):
                alone.setdefault((profile.entity, system), []).append(i)
            out.append(link)
        for (entity, system), positions in alone.items():  # one look-up and one write per entity and system
            waiting = store.reviewing(entity, system, [items[i][2] for i in positions])
            due = [(str(out[i].global_id), system, items[i][2]) for i in positions  # type: ignore[union-attr]
                   if items[i][2] not in waiting]
            with store.conn.transaction():
                IdentityKeys(entity).pend_creates(store.conn, due, hold)
        return out

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
        links = await self.ctx.retrying("identity", self.links, [
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
