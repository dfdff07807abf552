"""The normalize stage: raw changes in, canonical changes keyed by global id out.

A raw change is decoded, mapped to canonical values with its profile and its identity resolved;
it goes on to ``sync.changes.<entity>`` keyed by global id, so one entity's changes stay in order
on one partition. A change that cannot be decoded or mapped is a dead letter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from streams import envelope, faults, metrics
from streams.agents.flow import Flow
from streams.errors import SyncError, TerminalError
from streams.identity.batch import BatchIdentity
from streams.mapping.profile import QUERIED
from streams.queried import Watch, with_queried
from streams.reconcile.records import change_record
from streams.topics import changes_topic

if TYPE_CHECKING:
    from streams.app import Processors

log = logging.getLogger(__name__)


class Normalize:
    """The normalize stage of a worker."""

    def __init__(self, ctx: Processors) -> None:
        self.ctx = ctx
        self.identity = BatchIdentity(ctx.store, ctx.settings, ctx.applied.connection)

    def parse(self, message: Any) -> envelope.ChangeEvent:
        position = envelope.Position(message.topic, message.partition, message.offset)
        value = self.ctx.decode.loads(message.value) if message.value is not None else None
        key = self.ctx.decode.loads(message.key) if message.key is not None else None
        return envelope.parse(value, key, position)

    async def normalize(self, messages: list[Any]) -> None:
        """Decode and map raw change events, resolve their identity, pass them on keyed by global id."""
        taken: list[tuple[Any, Flow, envelope.ChangeEvent, str]] = []
        touching: list[tuple[Any, envelope.ChangeEvent]] = []
        recompute: list[tuple[Watch, envelope.ChangeEvent, str, Any]] = []
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
            if change.op in ("t", "tombstone"):
                flow = self.ctx.by_raw.get(message.topic)
                if flow is not None:
                    metrics.RECONCILE_EVENTS.labels(flow.entity, change.system, "ignored").inc()
                continue  # truncates are not captured; a tombstone only follows a delete, for compaction
            if message.topic in self.ctx.documents.by_topic:
                touching.append((message, change))
            for watch in self.ctx.watches.get(message.topic, ()):
                try:
                    named = watch.key_of(change.row)
                except TerminalError as exc:
                    await self.ctx.dead_letter("map", exc.message, message)
                    continue
                if named is not None:
                    recompute.append((watch, change, named, message))
            flow = self.ctx.by_raw.get(message.topic)
            if flow is not None:
                taken.append((message, flow, change, str(change.key[flow.profile.key_of(change.system)])))
        if touching:
            await self.ctx.document_stage.on_changes(touching)
        mapped = await self._mapped(taken)
        sends = await self._recomputed(recompute)
        if not mapped:
            await self._send(sends)
            return
        links, by_sync = await asyncio.gather(  # two databases: the store, and the sources' own transactions
            self.ctx.retrying("identity", self.identity.links, [
                (flow.profile, change.system, key, None if values is None else dict(change.row))
                for flow, change, key, values in mapped]),
            self.ctx.retrying("echoes", self.ctx.applied.of, [change for _, change, _, _ in mapped]))
        for (flow, change, key, values), link in zip(mapped, links, strict=True):
            if link is None:  # a deletion of a record never linked
                metrics.RECONCILE_EVENTS.labels(flow.entity, change.system, "ignored").inc()
                continue
            version = flow.profile.sources[change.system].version  # type: ignore[index]
            row_version = change.row.get(version.columns()[0]) if version else None
            record = change_record(flow.entity, (link.global_id, link.crm_id, link.erp_id), change, key, values,
                                   row_version, False, change.position.event_id in by_sync)
            sends.append((flow.changes, link.global_id, record))
            metrics.SOURCE_TO_PROCESSOR.labels(change.system).observe(max(0.0, time.time() - change.commit_ms / 1000))
        await self._send(sends)

    async def _send(self, sends: list[tuple[str, str, Any]]) -> None:
        faults.point("normalize.send")
        await self.ctx.outputs.send(sends)  # acknowledged by the broker before the raw offsets may be committed
        metrics.STAGE_EVENTS.labels("normalize", "out").inc(len(sends))

    async def _mapped(self, taken: list[tuple[Any, Flow, envelope.ChangeEvent, str]]
                      ) -> list[tuple[Flow, envelope.ChangeEvent, str, dict[str, Any] | None]]:
        """Each change's canonical values (None: a deletion), queried sides read; bad fields are dead letters."""
        rows: list[Any] = [{} if change.is_delete else change.row for _, _, change, _ in taken]
        read = [n for n, (_, flow, change, _) in enumerate(taken)  # a deletion has no values to read
                if not change.is_delete and flow.profile.queried(change.system)]
        if read:  # database reads: in a thread
            found = await self.ctx.retrying("queried sides", with_queried, self.ctx.documents.readers, [
                (taken[n][1].profile, taken[n][2].system, taken[n][3], rows[n]) for n in read])
            for n, row in zip(read, found, strict=True):
                rows[n] = row
        mapped: list[tuple[Flow, envelope.ChangeEvent, str, dict[str, Any] | None]] = []
        for (message, flow, change, key), row in zip(taken, rows, strict=True):
            values: dict[str, Any] | None = None
            if not change.is_delete:
                values, invalid = flow.profile.read_fields(change.system, row)
                for name, reason in invalid.items():  # one bad field is one bad field: the others go on
                    side = flow.profile.fields[name].side(change.system)
                    raw = {c: row.get(c) for c in side.columns(name)} if side else {}
                    await self.ctx.dead_letter("map", reason, message,
                                               fingerprint=f"{message.topic}|{key}|{name}|{raw!r}")
            mapped.append((flow, change, key, values))
        return mapped

    async def _recomputed(self, recompute: list[tuple[Watch, envelope.ChangeEvent, str, Any]]
                          ) -> list[tuple[str, str, Any]]:
        """A change of a watched table: the queried fields of the linked entity it names, as a partial change.

        An entity not linked yet is skipped: its own row's change reads them when it comes.
        """
        if not recompute:
            return []

        def read() -> list[tuple[Any, dict[str, Any]]]:
            links = [self.ctx.store.link_of(w.profile.entity, w.system, key) for w, _, key, _ in recompute]
            rows = with_queried(self.ctx.documents.readers, [
                (w.profile, w.system, key, {}) for (w, _, key, _), link in zip(recompute, links, strict=True)
                if link is not None])
            found = iter(rows)
            return [(link, next(found) if link is not None else {}) for link in links]

        sends = []
        for (watch, change, key, message), (link, row) in zip(
                recompute, await self.ctx.retrying("queried sides", read), strict=True):
            if link is None:
                continue
            values, invalid = watch.profile.read_fields(watch.system, row)
            values = {name: v for name, v in values.items() if name in watch.fields}
            for name, reason in invalid.items():
                if name in watch.fields:
                    await self.ctx.dead_letter("map", reason, message,
                                               fingerprint=f"{message.topic}|{key}|{name}|{row.get(QUERIED.format(name))!r}")
            if not values:
                continue
            record = change_record(watch.profile.entity, (link.global_id, link.crm_id, link.erp_id), change, key,
                                   values, None, False, False)
            record["op"] = "partial"
            sends.append((changes_topic(watch.profile.entity), link.global_id, record))
        return sends
