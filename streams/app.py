"""The Faust worker: its app, its agents wired to their stages, and what the stages share.

Stages (``streams/agents/``): normalize maps each raw change to canonical values, resolves its
identity and re-keys it by global id onto ``sync.changes.<entity>``; reconcile consumes that
topic, so one entity's changes stay in order on one partition and several workers share entities;
the appliers write commands to each system; document rules and health checks run beside them.
Every agent runs the same batch loop (``agents.loop``): a batch is acknowledged only after its
effects. Shared here: the codecs and outputs (librdkafka, a batch acknowledged as a whole), the
sync store, the entity-state cache, dead letters, and the locked-state transaction — an entity's
row is locked while a batch holding its changes is reconciled, so a partition moving between
workers stays safe. Commands are sent (and acknowledged by the broker) before the state that
issued them commits: a crash repeats them, and compare-and-set writes make the repeat harmless.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import faust
import psycopg

from streams import batching, codecs, faults, memory, metrics, transport
from streams.agents.apply import Apply
from streams.agents.audit import AuditTrail
from streams.agents.creates import Creates
from streams.agents.documents import DocumentStage
from streams.agents.drift import DriftWatch
from streams.agents.flow import Flow
from streams.agents.health import Health
from streams.agents.loop import Retry, batches
from streams.agents.normalize import Normalize
from streams.agents.reconcile import Reconcile
from streams.apply.echoes import AppliedTransactions
from streams.apply.executor import Applier
from streams.documents.engine import Documents
from streams.documents.spec import DocumentProfile
from streams.mapping.profile import Profile
from streams.plan import PlanOutputs, group_id
from streams.produce import Outputs
from streams.queried import watches
from streams.settings import Settings
from streams.store import StateCache, Store
from streams.topics import AUDIT, CONFLICTS, DLQ, admin_client, commands_topic, topic_ids

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


# A normalize step takes the raw changes that arrive within WITHIN seconds, at most BATCH (one
# sync-store transaction). Faust fills the buffer only between steps, so the window sets the batch
# size under load: 10 ms gave ~40 events per step, 50 ms gives 100-900 and twice the throughput
# (2026-12-01, a backlog of 100,000 edits: 5 ms 2,410 changes/s, 20 ms 2,825, 50 ms 3,185-3,413).
BATCH = 1000
WITHIN = 0.05
# Reconcile and the appliers read the internal topics, whose records each carry a batch already
# (``streams.batching``): waiting for more of them added latency, not batch size (50 -> 5 ms: a
# light load's p50 130 -> 81 ms; 200 edits/s p99 ~600 -> 283 ms; the backlog drain no slower).
WITHIN_BATCHED = 0.005


class Processors:
    """The Faust app of the mapping profiles (one flow each), with its store and appliers."""

    def __init__(self, settings: Settings, profiles: Sequence[Profile],
                 documents: DocumentProfile | None = None) -> None:
        self.settings = settings
        self.flows = [Flow(p) for p in profiles]
        self.document_profile = documents or DocumentProfile()
        self.by_raw = {topic: flow for flow in self.flows for topic in flow.raw_topics}
        self.watches = watches(profiles)  # tables read by queried sides (streams.queried)
        self.by_changes = {flow.changes: flow for flow in self.flows}
        self.by_entity = {flow.entity: flow for flow in self.flows}
        self.retry = Retry(settings.processors.stall_exit_s)
        outputs = {
            commands_topic("crm"): "sync/command.avsc",
            commands_topic("erp"): "sync/command.avsc",
            CONFLICTS: "sync/conflict.avsc",
            DLQ: "sync/dead_letter.avsc",
            AUDIT: "sync/audit.avsc",
        }
        for flow in self.flows:
            outputs[flow.changes] = "sync/change.avsc"
            if flow.canonical:
                outputs[flow.canonical] = str(flow.profile.canonical_schema.relative_to(codecs.SCHEMAS))
        for rule in self.document_profile.canonical:
            outputs[rule.topic] = str(rule.schema_path.relative_to(codecs.SCHEMAS))
        self.decode, encoders = codecs.codecs_for(settings, outputs, {batching.SUBJECT: batching.SCHEMA})
        dry_run = settings.sync.dry_run
        # The internal topics a record crosses per change carry batch records (streams.batching).
        batched = frozenset([*self.by_changes, commands_topic("crm"), commands_topic("erp")])
        self.outputs: Outputs | PlanOutputs = Outputs(settings, {t: codec.dumps for t, codec in encoders.items()},
                                                      batched)
        if dry_run:  # commands and conflicts are recorded as the plan; nothing reaches either system
            log.warning("dry run (sync.dry_run): nothing is written to either system; `crm-erp-sync plan` shows"
                        " what would be")
            canonical = {f.canonical for f in self.flows if f.canonical}
            canonical |= {r.topic for r in self.document_profile.canonical}
            self.outputs = PlanOutputs(self.outputs, settings.store.conninfo(),
                                       {commands_topic("crm"), commands_topic("erp")}, canonical)
        self.store = Store(settings.store.conninfo(), dry_run)
        self.store.migrate()
        # One locking transaction per caller (reconcile, apply's refused writes): they run
        # at once on their threads, each with the rows it locked, and commit on their own.
        self.txs: dict[str, psycopg.Connection[Any]] = {}
        self.states = StateCache(settings.processors.state_cache)
        self.applied = AppliedTransactions(settings)
        self.documents = Documents(self.document_profile, settings, Store(settings.store.conninfo(), dry_run),
                                   profiles)
        datadir = settings.local.state_dir / "faust"
        datadir.mkdir(parents=True, exist_ok=True)
        self.group = group_id(settings.processors.app_id, dry_run)
        self.app = faust.App(
            self.group,
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
        raw_topics = list(dict.fromkeys([*self.by_raw, *self.watches, *self.documents.topics]))
        self.read_topics = [*raw_topics, *self.by_changes, commands_topic("crm"), commands_topic("erp")]
        self.stages = ["normalize", "reconcile", "apply-crm", "apply-erp"]
        self.admin = admin_client(settings.kafka)
        self.incarnations: dict[str, str] = topic_ids(self.admin, self.read_topics)  # topic -> its id at start
        raw = transport.raw_topic(self.app, *raw_topics)
        self.normalize = Normalize(self)
        self.document_stage = DocumentStage(self)
        self.reconcile = Reconcile(self)
        self.apply = Apply(self)
        self.health = Health(self)
        self.creates = Creates(self)
        self.audit = AuditTrail(self)
        self.app.agent(raw, name="normalize")(self._agent("normalize", self.normalize.normalize, BATCH))
        changes = transport.raw_topic(self.app, *self.by_changes)
        self.app.agent(changes, name="reconcile")(self._agent("reconcile", self.reconcile.reconcile, BATCH,
                                                               WITHIN_BATCHED))
        self.app.timer(5.0, name="health")(self.health.tick)
        self.app.timer(1.0, name="creates-due")(self.creates.tick)
        self.app.timer(30.0, name="memory")(self._give_back)
        if self.document_profile.creates:
            self.app.timer(5.0, name="pending-documents")(self.document_stage.retry_pending)
        for flow in self.flows:
            metrics.init_processor_series(flow.entity)
        if not dry_run:
            self._writers(profiles)

    async def _give_back(self) -> None:
        """Return the memory freed meanwhile to the system (``streams.memory``)."""
        memory.give_back()

    def _writers(self, profiles: Sequence[Profile]) -> None:
        """What writes to the systems, and watches them: appliers, their audit trail, the continuous compare."""
        settings = self.settings
        self.app.timer(5.0, name="audit")(self.audit.tick)
        self.app.task(self.audit.run)
        if settings.compare.interval_s:
            self.drift = DriftWatch(self)
            self.app.timer(min(settings.compare.interval_s, 30.0), name="compare")(self.drift.tick)
        for system in ("crm", "erp"):
            applier = Applier(profiles, system, settings.database(system).conninfo(), self.document_profile)
            source = transport.raw_topic(self.app, commands_topic(system))
            self.app.agent(source, name=f"apply-{system}")(
                self._agent(f"apply-{system}", functools.partial(self.apply.apply, applier), 500, WITHIN_BATCHED))

    def _agent(self, stage: str, handler: Any, size: int, within: float = WITHIN) -> Any:
        """A Faust agent running ``handler`` on each batch of its topic (``agents.loop.batches``)."""
        async def agent(stream: faust.StreamT[Any]) -> AsyncIterator[None]:
            async for _ in batches(stream, stage, handler, self.retry, size, within, self._expand):
                yield None

        agent.__name__ = stage.replace("-", "_")
        return agent

    def _expand(self, messages: list[Any]) -> list[Any]:
        return batching.expand(messages, self.decode.loads)

    # -- helpers ----------------------------------------------------------------------------
    async def _send(self, topic: str, key: str, value: dict[str, Any]) -> None:
        await self.outputs.send([(topic, key, value)])  # acknowledged by the broker

    async def dead_letter(self, stage: str, reason: str, message: Any, fingerprint: str | None = None) -> None:
        """Send the original bytes with the reason to the dead-letter topic, and index it.

        With a ``fingerprint`` (a row's field and its bad value), the same one is a dead letter once,
        however many later changes of the row still carry it.
        """
        if fingerprint is not None and await asyncio.to_thread(self.store.has_dead_letter, fingerprint):
            return
        flow = self.by_raw.get(message.topic)
        if flow is not None and stage != "document":  # a raw event: counted as finished by normalize
            metrics.RECONCILE_EVENTS.labels(flow.entity, message.topic.split(".")[0], "dead_letter").inc()
        item = getattr(message, "item", 0)  # an item of a batch record (streams.batching)
        where = f"{message.topic}/{message.partition}/{message.offset}" + (f"#{item}" if item else "")
        log.warning("dead letter (%s) %s: %s", stage, where, reason)
        metrics.DEAD_LETTERS.labels(stage, metrics.DEAD_LETTER_REASONS.get(stage, "other")).inc()
        await self._send(DLQ, where, {
            "stage": stage, "reason": reason, "topic": message.topic, "partition": message.partition,
            "offset": message.offset, "key": message.key, "value": message.value,
            "failed_at": datetime.now(tz=UTC), "item": item,
        })
        await asyncio.to_thread(self.store.add_dead_letter, stage, reason, message.topic, message.partition,
                                message.offset, self.incarnations.get(message.topic, ""), fingerprint, item)

    async def retrying(self, what: str, func: Any, *args: Any) -> Any:
        """Run a blocking call in a thread until it succeeds (transient errors retried; see ``agents.loop``)."""
        return await self.retry.blocking(what, func, *args)


    def locked(self, caller: str, steps: list[tuple[str, str, Any]]
               ) -> tuple[list[tuple[Any, list[int]]], Any, Any]:
        """Run each ``(entity, gid, step)`` on its entity's row-locked state, in order, in one transaction.

        ``step(state, now_ms) -> (state, conflicts, result)`` may change the state it is given (its
        own: :meth:`Store.lock_states`); returns each ``(result, conflict ids)``,
        the transaction and the states saved in it with their versions (to cache once it commits).
        The transaction (the ``caller``'s own connection) stays open: the caller commits after the
        broker took what it sends.
        """
        tx = self.txs.get(caller)
        if tx is None or tx.closed:
            tx = self.txs[caller] = psycopg.connect(**self.settings.store.conninfo())
        out: list[tuple[Any, list[int]]] = []
        try:
            keys = list(dict.fromkeys((entity, gid) for entity, gid, _ in steps))
            states = self.store.lock_states(tx, keys, self.states)
            now_ms = faults.now_ms()
            for entity, gid, step in steps:  # a second change of an entity sees the first one's state
                states[(entity, gid)], conflicts, result = step(states[(entity, gid)], now_ms)
                ids = self.store.add_conflicts(tx, entity, gid, conflicts) if conflicts else []
                out.append((result, ids))
            versions = self.store.save_states(tx, states)
        except BaseException:
            if not tx.closed:
                tx.rollback()
            raise
        return out, tx, {key: (version, states[key]) for key, version in versions.items()}

    async def send_then_commit(self, tx: psycopg.Connection[Any], records: list[tuple[str, str, Any]]) -> None:
        """Send (topic, key, record)s, wait until the broker acknowledged all, then commit the state."""
        try:
            await self.outputs.send(records)
            faults.point("reconcile.commit")
        except BaseException:
            tx.rollback()
            raise
        tx.commit()


