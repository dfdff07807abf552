"""The Faust processors: normalize raw changes, reconcile them per entity, apply commands to each system.

normalize maps each raw change to canonical values, resolves its identity and re-keys it by global
id onto ``sync.changes.<entity>``; reconcile consumes that topic, so one entity's changes stay in
order on one partition and several workers share entities. Agents take events in batches, decode,
call the pure core and send or apply. State lives in the sync store; an entity's row there is
locked while a batch holding its changes is reconciled, so a partition moving between workers
stays safe (each worker keeps the states it wrote in memory, and reads again only those whose
row version changed). Commands are sent (and acknowledged by the broker) before the state that
issued them commits: a crash repeats them, and compare-and-set writes make the repeat harmless.
Records go out through librdkafka (``streams.produce``), a batch acknowledged as a whole.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import faust
import psycopg

from streams import codecs, envelope, faults, metrics, transport
from streams.agents.loop import Retry, batches, fatal
from streams.apply.executor import Applier, Delivery
from streams.documents.engine import Documents, Touch
from streams.documents.spec import DocumentProfile
from streams.errors import SyncError, TerminalError, TransientError
from streams.identity.bootstrap import created_by_sync
from streams.identity.resolver import resolve_new
from streams.mapping.profile import Profile
from streams.produce import Outputs
from streams.reconcile.core import Conflict, EntityState, apply_change, deactivate, other, reject, request_create
from streams.reconcile.records import (
    canonical_record,
    change_record,
    command_record,
    conflict_record,
    create_record,
    metadata,
)
from streams.settings import Settings
from streams.store import Link, StateCache, Store
from streams.topics import CONFLICTS, DLQ, admin_client, changes_topic, commands_topic, topic_ids

log = logging.getLogger(__name__)



def broker_credentials(settings: Settings) -> Any:
    """The Kafka security settings in Faust's form (None for PLAINTEXT)."""
    kafka = settings.kafka
    context = None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=str(kafka.ssl_ca_location) if kafka.ssl_ca_location else None)
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            mechanism=kafka.sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    return faust.SSLCredentials(context) if context is not None else None


# A normalize / reconcile step takes what arrives within WITHIN seconds, at most BATCH events (one
# sync-store transaction). Faust fills the buffer only between steps, so the window sets the batch
# size under load: 10 ms gave ~40 events per step, 50 ms gives 100-900 and twice the throughput.
BATCH = 1000
WITHIN = 0.05


@dataclass(frozen=True)
class Flow:
    """One mapping profile's entity: its raw topics, internal changes topic and canonical topic."""

    profile: Profile

    @property
    def entity(self) -> str:
        """The canonical entity name."""
        return self.profile.entity

    @property
    def raw_topics(self) -> list[str]:
        """The Debezium topics of the entity's table on each system."""
        return [f"{s}.{self.profile.table_of(s)}" for s in ("crm", "erp")]

    @property
    def changes(self) -> str:
        """Its ``sync.changes.<entity>`` topic."""
        return changes_topic(self.entity)

    @property
    def canonical(self) -> str | None:
        """Its canonical topic, if the profile names one."""
        return self.profile.canonical.topic if self.profile.canonical else None


class Processors:
    """The Faust app of the mapping profiles (one flow each), with its store and appliers."""

    def __init__(self, settings: Settings, profiles: Sequence[Profile],
                 documents: DocumentProfile | None = None) -> None:
        self.settings = settings
        self.flows = [Flow(p) for p in profiles]
        self.document_profile = documents or DocumentProfile()
        self.by_raw = {topic: flow for flow in self.flows for topic in flow.raw_topics}
        self.by_changes = {flow.changes: flow for flow in self.flows}
        self.by_entity = {flow.entity: flow for flow in self.flows}
        self.retry = Retry(settings.processors.stall_exit_s)
        outputs = {
            commands_topic("crm"): "sync/command.avsc",
            commands_topic("erp"): "sync/command.avsc",
            CONFLICTS: "sync/conflict.avsc",
            DLQ: "sync/dead_letter.avsc",
        }
        for flow in self.flows:
            outputs[flow.changes] = "sync/change.avsc"
            if flow.canonical:
                outputs[flow.canonical] = str(flow.profile.canonical_schema.relative_to(codecs.SCHEMAS))
        for rule in self.document_profile.canonical:
            outputs[rule.topic] = str(rule.schema_path.relative_to(codecs.SCHEMAS))
        self.decode, encoders = codecs.codecs_for(settings, outputs)
        self.outputs = Outputs(settings, {topic: codec.dumps for topic, codec in encoders.items()})
        self.store = Store(settings.store.conninfo())
        self.store.migrate()
        self.tx = psycopg.connect(**settings.store.conninfo())
        self.states = StateCache(settings.processors.state_cache)
        self.documents = Documents(self.document_profile, settings, Store(settings.store.conninfo()))
        datadir = settings.local.state_dir / "faust"
        datadir.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            settings.processors.app_id,
            broker=[f"kafka://{b}" for b in settings.kafka.bootstrap_servers.split(",")],
            processing_guarantee="at_least_once",
            broker_credentials=broker_credentials(settings),
            store="memory://",
            web_enabled=False,
            datadir=str(datadir),
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=settings.processors.session_timeout_s,
            broker_heartbeat_interval=max(1.0, settings.processors.session_timeout_s / 5),
            broker_rebalance_timeout=settings.processors.rebalance_timeout_s,
            broker_commit_interval=1.0,
            topic_replication_factor=settings.kafka.replication_factor,
            topic_disable_leader=True,
        )
        transport.install(self.app, settings.processors.fetch_max_wait_ms)
        raw_topics = list(dict.fromkeys([*self.by_raw, *self.documents.topics]))
        self.read_topics = [*raw_topics, *self.by_changes, commands_topic("crm"), commands_topic("erp")]
        self.stages = ["normalize", "reconcile", "apply-crm", "apply-erp"]
        self.admin = admin_client(settings.kafka)
        self.incarnations: dict[str, str] = topic_ids(self.admin, self.read_topics)  # topic -> its id at start
        raw = self.app.topic(*raw_topics, key_serializer="raw", value_serializer="raw")
        self.app.agent(raw, name="normalize")(self._normalize)
        changes = self.app.topic(*self.by_changes, key_serializer="raw", value_serializer="raw")
        self.app.agent(changes, name="reconcile")(self._reconcile)
        self.app.timer(5.0, name="health")(self._health)
        if self.document_profile.creates:
            self.app.timer(5.0, name="pending-documents")(self._pending_documents)
        for flow in self.flows:
            metrics.init_processor_series(flow.entity)
        for system in ("crm", "erp"):
            applier = Applier(profiles, system, settings.database(system).conninfo(), self.document_profile)
            source = self.app.topic(commands_topic(system), key_serializer="raw", value_serializer="raw")
            self.app.agent(source, name=f"apply-{system}")(self._applier(applier))

    # -- helpers ----------------------------------------------------------------------------
    async def _send(self, topic: str, key: str, value: dict[str, Any]) -> None:
        await self.outputs.send([(topic, key, value)])  # acknowledged by the broker

    async def dead_letter(self, stage: str, reason: str, message: Any) -> None:
        """Send the original bytes with the reason to the dead-letter topic, and index it."""
        flow = self.by_raw.get(message.topic)
        if flow is not None and stage != "document":  # a raw event: counted as finished by normalize
            metrics.RECONCILE_EVENTS.labels(flow.entity, message.topic.split(".")[0], "dead_letter").inc()
        log.warning("dead letter (%s) %s/%s/%s: %s", stage, message.topic, message.partition, message.offset, reason)
        metrics.DEAD_LETTERS.labels(stage, metrics.DEAD_LETTER_REASONS.get(stage, "other")).inc()
        await self._send(DLQ, f"{message.topic}/{message.partition}/{message.offset}", {
            "stage": stage, "reason": reason, "topic": message.topic, "partition": message.partition,
            "offset": message.offset, "key": message.key, "value": message.value,
            "failed_at": datetime.now(tz=UTC),
        })
        await asyncio.to_thread(self.store.add_dead_letter, stage, reason, message.topic, message.partition,
                                message.offset, self.incarnations.get(message.topic, ""))

    async def retrying(self, what: str, func: Any, *args: Any) -> Any:
        """Run a blocking call in a thread until it succeeds (transient errors retried; see ``agents.loop``)."""
        return await self.retry.blocking(what, func, *args)

    # -- identity and locked state ----------------------------------------------------------
    def _links(self, items: list[tuple[Profile, str, str, dict[str, Any] | None]]) -> list[tuple[Link | None, bool]]:
        """Each ``(profile, system, key, row)``'s link, and whether it may be created on the other system.

        A new record's identity is resolved, unless ``row`` is None (a deletion).
        """
        known: dict[tuple[str, str], dict[str, Link]] = {}
        for profile, system, _, _ in items:
            known.setdefault((profile.entity, system), {})
        for (entity, system), found in known.items():
            of_entity = [(p, k, row) for p, s, k, row in items if (p.entity, s) == (entity, system)]
            found.update(self.store.links_of(entity, system, [k for _, k, _ in of_entity]))
            new = [k for _, k, row in of_entity if k not in found and row is not None]
            if new:  # rows the sync created there itself: one lookup for the batch, not one per row
                for key, gid in created_by_sync(of_entity[0][0], self.settings, system, new).items():
                    link = self.store.attach(entity, gid, system, key, "created")
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
                link = resolve_new(profile, self.settings, self.store, system, key, row)
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
            found_ids = self.store.reviewing(entity, system, [items[i][2] for i in positions])
            reviewed.update(i for i in positions if items[i][2] in found_ids)
        for i in linked_now:
            link = out[i][0]
            assert link is not None
            metrics.IDENTITY.labels(items[i][0].entity, "review" if i in reviewed else link.linked_by).inc()
        return [(link, may_create and i not in reviewed) for i, (link, may_create) in enumerate(out)]

    def _locked(self, steps: list[tuple[str, str, Any]]) -> tuple[list[tuple[Any, list[int]]], Any, Any]:
        """Run each ``(entity, gid, step)`` on its entity's row-locked state, in order, in one transaction.

        ``step(state, now_ms) -> (state, conflicts, result)``; returns each ``(result, conflict ids)``,
        the transaction and the states saved in it with their versions (to cache once it commits).
        The transaction stays open: the caller commits after the broker took what it sends.
        """
        if self.tx.closed:
            self.tx = psycopg.connect(**self.settings.store.conninfo())
        out: list[tuple[Any, list[int]]] = []
        try:
            keys = list(dict.fromkeys((entity, gid) for entity, gid, _ in steps))
            states = self.store.lock_states(self.tx, keys, self.states)
            now_ms = int(time.time() * 1000)
            for entity, gid, step in steps:  # a second change of an entity sees the first one's state
                states[(entity, gid)], conflicts, result = step(states[(entity, gid)], now_ms)
                ids = self.store.add_conflicts(self.tx, entity, gid, conflicts) if conflicts else []
                out.append((result, ids))
            versions = self.store.save_states(self.tx, states)
        except BaseException:
            if not self.tx.closed:
                self.tx.rollback()
            raise
        return out, self.tx, {key: (version, states[key]) for key, version in versions.items()}

    async def _send_then_commit(self, tx: psycopg.Connection[Any], records: list[tuple[str, str, Any]]) -> None:
        """Send (topic, key, record)s, wait until the broker acknowledged all, then commit the state."""
        try:
            await self.outputs.send(records)
            faults.point("reconcile.commit")
        except BaseException:
            tx.rollback()
            raise
        tx.commit()

    # -- normalize: raw change -> canonical values, keyed by global id -----------------------
    def _parse(self, message: Any) -> envelope.ChangeEvent:
        position = envelope.Position(message.topic, message.partition, message.offset)
        value = self.decode.loads(message.value) if message.value is not None else None
        key = self.decode.loads(message.key) if message.key is not None else None
        return envelope.parse(value, key, position)

    async def normalize(self, messages: list[Any]) -> None:
        """Decode and map raw change events, resolve their identity, pass them on keyed by global id."""
        mapped: list[tuple[Flow, envelope.ChangeEvent, str, dict[str, Any] | None]] = []
        touching: list[tuple[Any, envelope.ChangeEvent]] = []
        for message in messages:
            try:
                change = self._parse(message)
            except Exception as exc:  # the registry or the bytes: a dead letter, never a stop
                if isinstance(exc, SyncError) and not isinstance(exc, TerminalError):
                    raise  # transient: retried by the agent's supervisor, never dropped
                plain = isinstance(exc, (SyncError, ValueError, TypeError, KeyError))
                reason = getattr(exc, "message", None) or (str(exc) if plain else f"{type(exc).__name__}: {exc}")
                await self.dead_letter("decode", reason, message)
                continue
            if message.topic in self.documents.by_topic and change.op not in ("t", "tombstone"):
                touching.append((message, change))
            flow = self.by_raw.get(message.topic)
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
                    await self.dead_letter("map", exc.message, message)
                    continue
            mapped.append((flow, change, str(change.key[flow.profile.key_of(change.system)]), values))
        if touching:
            await self._documents(touching)
        if not mapped:
            return
        links = await self.retrying("identity", self._links, [
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
        await self.outputs.send(sends)  # acknowledged by the broker before the raw offsets may be committed
        metrics.STAGE_EVENTS.labels("normalize", "out").inc(len(sends))

    # -- documents: a change names a document; its rule reads it whole -------------------------
    def _touches(self, changes: list[tuple[Any, envelope.ChangeEvent]]) -> list[tuple[Touch | str, Any]]:
        """Each document the changes touch once (its first change is the cause), or a reason it is invalid."""
        out: dict[Any, tuple[Touch | str, Any]] = {}
        for message, change in changes:
            try:
                before = change.before if change.op == "u" else None
                touched = self.documents.touched(message.topic, change.table, change.row, before)
            except TerminalError as exc:
                out[id(message)] = (exc.message, message)
                continue
            for rule, key in touched:
                out.setdefault((rule.name, key), (Touch(rule, key, metadata(change)), message))
        return list(out.values())

    def _run_documents(self, touches: list[tuple[Touch | str, Any]]) -> list[tuple[list[Any], str | None, Any]]:
        """Run each touched document's rule: its sends, or the reason it is invalid (a dead letter)."""
        out: list[tuple[list[Any], str | None, Any]] = []
        for touch, message in touches:
            if isinstance(touch, str):
                out.append(([], touch, message))
                continue
            try:
                faults.point("documents.step")
                sends = self.documents.run(touch)
            except TerminalError as exc:
                metrics.DOCUMENTS.labels(touch.rule.name, "invalid").inc()
                out.append(([], f"{touch.rule.name} {touch.key}: {exc.message}", message))
                continue
            metrics.DOCUMENTS.labels(touch.rule.name, "sent" if sends else "unchanged").inc()
            out.append((sends, None, message))
        return out

    async def _documents(self, changes: list[tuple[Any, envelope.ChangeEvent]]) -> None:
        touches = await self.retrying("documents", self._touches, changes)
        results = await self.retrying("documents", self._run_documents, touches)
        for _, reason, message in results:
            if reason is not None:
                await self.dead_letter("document", reason, message)
        sent = await self.outputs.send([send for sends, _, _ in results for send in sends])
        metrics.STAGE_EVENTS.labels("normalize", "out").inc(sent)

    async def _pending_documents(self) -> None:
        """Try the documents waiting for a reference again (an account linked since, say)."""
        touches = await self.retrying("documents", self.documents.pending)
        results = await self.retrying("documents", self._run_documents, [(t, None) for t in touches])
        for _, reason, _ in results:
            if reason is not None:  # its next change is a dead letter; until then it stays pending
                log.warning("pending document now invalid: %s", reason)
        await self.outputs.send([send for sends, _, _ in results for send in sends])
        counts = await self.retrying("documents", self.documents.store.documents_summary)
        for rule in self.document_profile.creates:
            for state in ("pending", "diverged"):
                metrics.DOCUMENTS_WAITING.labels(rule.name, state).set(counts.get((rule.name, state), 0))

    async def _normalize(self, stream: faust.StreamT[Any]) -> AsyncIterator[None]:
        async for _ in batches(stream, "normalize", self.normalize, self.retry, BATCH, WITHIN):
            yield None

    # -- reconcile: one entity at a time, in the order of its changes ----------------------
    def _plan(self, flow: Flow, rec: dict[str, Any]) -> tuple[Any, Any]:
        """For one decoded change: the locked-state step, and ``finish(result, conflict ids) -> sends``."""
        profile, entity = flow.profile, flow.entity
        meta = rec["metadata"]
        commit_ms = int(meta["source_commit_time"].timestamp() * 1000)
        change_version = tuple(rec["source_order"]) if rec["source_order"] else (commit_ms, meta["lsn"] or 0)
        system, gid, event_id = rec["system"], rec["global_id"], meta["event_id"]
        ids = {"crm": rec["crm_id"], "erp": rec["erp_id"]}
        if rec["values_json"] is None:  # a deletion: deactivate the counterpart, never delete it
            def deleted(state: EntityState, now_ms: int) -> tuple[EntityState, list[Conflict], Any]:
                rule = profile.deactivation(other(system))
                state = state.copy()  # never the cached one: a rolled-back batch must leave it as it was
                return state, [], deactivate(rule, state, system, change_version, now_ms)

            def finish_deleted(cmd: Any, _: list[int]) -> list[tuple[str, str, Any]]:
                metrics.RECONCILE_EVENTS.labels(entity, system, "deleted").inc()
                if cmd is None or ids[cmd.system] is None:
                    return []
                log.info("%s %s deleted: deactivating %s %s", system, rec["key"], cmd.system, ids[cmd.system])
                return [(commands_topic(cmd.system), gid,
                         command_record(entity, gid, ids[cmd.system], cmd, commit_ms, event_id))]

            return deleted, finish_deleted
        values = json.loads(rec["values_json"])
        row_version = json.loads(rec["row_version_json"])

        def step(state: EntityState, now_ms: int) -> tuple[EntityState, list[Conflict], Any]:
            outcome = apply_change(profile.fields, state, system, values, change_version, row_version, now_ms,
                                   commit_ms)
            create = (request_create(profile.create_rule(system), outcome.state, system, now_ms)
                      if rec["may_create"] else None)
            return outcome.state, outcome.conflicts, (outcome, create)

        def finish(result: Any, conflict_ids: list[int]) -> list[tuple[str, str, Any]]:
            outcome, create = result
            sends: list[tuple[str, str, Any]] = []
            if create is not None:
                peer = other(system)
                sends.append((commands_topic(peer), gid,
                              create_record(entity, gid, peer, create, commit_ms, event_id)))
            for cmd in outcome.commands:
                if ids[cmd.system] is not None:  # else: not linked on that system yet
                    sends.append((commands_topic(cmd.system), gid, command_record(
                        entity, gid, ids[cmd.system], cmd, commit_ms, event_id)))
            sends += [(CONFLICTS, gid, conflict_record(entity, gid, conflict_id, c))
                      for conflict_id, c in zip(conflict_ids, outcome.conflicts, strict=True)]
            if flow.canonical and outcome.replays == 0:  # built later, for the entity's last change in the batch
                sends.append((flow.canonical, gid, lambda: canonical_record(
                    profile, outcome.state, gid, ids["crm"], ids["erp"], meta)))
            m = metrics
            m.RECONCILE_EVENTS.labels(entity, system, "commands" if outcome.commands else "no_command").inc()
            m.ECHOES.labels(entity, system).inc(outcome.echoes)
            for cmd in outcome.commands:
                m.COMMANDS.labels(entity, cmd.system).inc()
            for c in outcome.conflicts:
                m.CONFLICTS.labels(entity, c.field, c.kind, c.policy, c.resolution or "manual_open").inc()
            return sends

        return step, finish

    async def reconcile(self, messages: list[Any]) -> None:
        """Reconcile a batch of changes in one sync-store transaction; each entity's in order."""
        planned: list[tuple[str, str, Any, Any]] = []
        for message in messages:
            flow = self.by_changes[message.topic]
            try:
                rec = self.decode.loads(message.value)
                step, finish = self._plan(flow, rec)
            except Exception as exc:  # written by normalize; a bad one is still never a stop
                if isinstance(exc, SyncError) and not isinstance(exc, TerminalError):
                    raise
                await self.dead_letter("reconcile", f"{type(exc).__name__}: {exc}", message)
                continue
            planned.append((flow.entity, rec["global_id"], step, finish))
        if not planned:
            return
        results, tx, saved = await self.retrying("reconcile", self._locked, [(e, g, s) for e, g, s, _ in planned])
        sends = [send for (_, _, _, finish), (result, ids) in zip(planned, results, strict=True)
                 for send in finish(result, ids)]
        # A compacted canonical topic keeps an entity's latest record: one per entity and batch, its
        # state after the batch's last change of it (the others are built only to be superseded).
        last = {(topic, key): i for i, (topic, key, record) in enumerate(sends) if callable(record)}
        sends = [(topic, key, record() if callable(record) else record) for i, (topic, key, record) in enumerate(sends)
                 if not callable(record) or last[(topic, key)] == i]
        await self._send_then_commit(tx, sends)
        self.states.put(saved)  # committed
        metrics.STAGE_EVENTS.labels("reconcile", "out").inc(len(sends))

    async def _reconcile(self, stream: faust.StreamT[Any]) -> AsyncIterator[None]:
        async for _ in batches(stream, "reconcile", self.reconcile, self.retry, BATCH, WITHIN):
            yield None

    # -- health: consumer lag and the manual-conflict queue, every few seconds ----------------
    async def _health(self) -> None:
        consumer: Any = self.app.consumer
        behind = 0
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)  # from fetch responses
            if highwater is None:
                continue  # not fetched yet
            committed = consumer._committed_offset.get(tp)  # Faust keeps the group's committed offsets
            if committed is not None and committed > highwater:
                fatal(f"{tp.topic}[{tp.partition}]: committed offset {committed} is past the end ({highwater}):"
                      " the topic was deleted and created again")
            lag = max(0, highwater - (committed or 0))
            behind += lag
            metrics.CONSUMER_LAG.labels(self.app.conf.id, tp.topic, str(tp.partition)).set(lag)
        if not behind:  # idle, not stalled: nothing waits for any stage of this worker
            for stage in self.stages:
                metrics.STAGE_PROGRESS.labels(stage).set(time.time())
        await self.retrying("health", self._check_incarnations)
        for flow in self.flows:
            count, oldest = await self.retrying("health", self.store.open_conflicts_summary, flow.entity)
            metrics.CONFLICTS_OPEN.labels(flow.entity).set(count)
            metrics.CONFLICT_OLDEST_OPEN.labels(flow.entity).set(oldest)

    def _check_incarnations(self) -> None:
        """A topic this worker reads that was deleted and created again ends the worker (read afresh on restart).

        Its offsets, positions and progress belong to the old topic; carrying them over would skip
        the new topic's records as replays.
        """
        now = topic_ids(self.admin, self.read_topics)
        for topic, topic_id in now.items():
            known = self.incarnations.setdefault(topic, topic_id)
            if known != topic_id:
                fatal(f"topic {topic} was deleted and created again (id {known} is now {topic_id})")

    # -- apply ------------------------------------------------------------------------------
    def _applier(self, applier: Applier) -> Any:
        stage = f"apply-{applier.system}"

        async def handle(messages: list[Any]) -> None:
            await self.apply(applier, messages)

        async def run(stream: faust.StreamT[Any]) -> AsyncIterator[None]:
            async for _ in batches(stream, stage, handle, self.retry, 500, WITHIN):
                yield None

        run.__name__ = f"apply_{applier.system}"
        return run

    async def apply(self, applier: Applier, messages: list[Any]) -> None:
        """Apply a batch of commands to one system; refused ones are dead letters and free their field."""
        stage = f"apply-{applier.system}"
        batch, bad = [], []
        for m in messages:
            try:
                batch.append(Delivery(m.topic, m.partition, m.offset, self.decode.loads(m.value),
                                      self.incarnations.get(m.topic, "")))
            except TransientError:
                raise  # the registry: retried, never a dead letter
            except Exception as exc:  # undecodable command: dead letter, the batch goes on
                bad.append((m, f"{type(exc).__name__}: {exc}"))
        result = await self.retrying(f"apply {applier.system}", applier.apply, batch)
        metrics.STAGE_EVENTS.labels(stage, "out").inc(result.written + result.created)
        for outcome, n in (("written", result.written), ("created", result.created), ("skipped", result.skipped),
                           ("replayed", result.replayed), ("failed", len(result.failed))):
            metrics.APPLY.labels(applier.system, outcome).inc(n)
        now = time.time()
        direction = f"{'erp' if applier.system == 'crm' else 'crm'}_to_{applier.system}"
        for entity, when in result.written_cause_times:
            metrics.END_TO_END.labels(entity, direction).observe(max(0.0, now - when))
        for m, reason in bad:
            await self.dead_letter(stage, reason, m)
        by_offset = {(m.topic, m.partition, m.offset): m for m in messages}
        for d, reason in result.failed:
            kind = reason.split(":", 1)[0]
            metrics.APPLY_ERRORS.labels(applier.system, kind if kind in metrics.APPLY_ERROR_KINDS else "invalid").inc()
            await self.dead_letter(stage, reason, by_offset[(d.topic, d.partition, d.offset)])
        refused = [d.command for d, _ in result.failed if d.command.get("op", "set") == "set"
                   and d.command["entity"] in self.by_entity]
        if refused:
            await self._refused(refused)

    async def _refused(self, commands: list[dict[str, Any]]) -> None:
        """Field writes a target refused: each frees its field's in-flight mark (a value set aside goes now)."""
        steps, sends = [], []
        for cmd in commands:
            system, name, value = cmd["system"], cmd["field"], json.loads(cmd["value_json"])

            def step(state: EntityState, now_ms: int, system: str = system, name: str = name, value: Any = value
                     ) -> tuple[EntityState, list[Conflict], Any]:
                outcome = reject(state, system, name, value, now_ms)
                return outcome.state, [], outcome

            steps.append((cmd["entity"], cmd["global_id"], step))
        results, tx, saved = await self.retrying("apply", self._locked, steps)
        for cmd, (outcome, _) in zip(commands, results, strict=True):
            cause_ms = int(cmd["cause_commit_time"].timestamp() * 1000)
            sends += [(commands_topic(c.system), cmd["global_id"], command_record(
                cmd["entity"], cmd["global_id"], cmd["key"], c, cause_ms, cmd["cause_event"]))
                for c in outcome.commands]
            log.warning("%s refused %s of %s %s: the field is free again%s", cmd["system"], cmd["field"],
                        cmd["entity"], cmd["key"], " (the value set aside goes now)" if outcome.commands else "")
        await self._send_then_commit(tx, sends)
        self.states.put(saved)
