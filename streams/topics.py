"""The sync's topics, created explicitly with production settings by one idempotent step.

:func:`plan` lists every topic the sync reads or writes with its partitions and configuration
(replication factor and ``min.insync.replicas`` from settings, compaction for canonical topics,
unlimited retention for the dead letters and conflicts); :func:`provision` creates the missing
ones through the Admin API and reports those whose settings differ. Debezium's topics for tables
no profile maps are left to capture (as Kafka Connect's topic creation would make them).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from streams.errors import PreflightError, TransientError
from streams.settings import KafkaSettings, Settings

log = logging.getLogger(__name__)

DLQ = "sync.dlq"
CONFLICTS = "sync.conflicts"
AUDIT = "sync.audit"
COMPACTED = {"cleanup.policy": "compact"}
FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}
AUTH_HINT = ("check kafka.sasl_username / sasl_password and the CA in kafka.ssl_ca_location; the sync's principal"
             " needs its topics (crm., erp., sync., canonical., _crm-erp-sync) and its consumer group"
             " (processors.app_id)")


def raw_topic(system: str, table: str) -> str:
    """Debezium's topic of ``schema.table`` on ``system``.

    A character Kafka does not allow (the space of ``"tabSales Order"``) becomes ``_``, as Debezium makes it.
    """
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{system}.{table}")


def changes_topic(entity: str) -> str:
    """The internal topic of one entity's mapped changes, keyed (and so partitioned) by global id."""
    return f"sync.changes.{entity}"


def commands_topic(system: str) -> str:
    """Where commands for ``system`` go."""
    return f"sync.commands.{system}"


def marker_topic(source: str) -> str:
    """The topic whose presence tells capture the broker still holds this source's events."""
    return f"_crm-erp-sync.capture.{source}"


@dataclass(frozen=True)
class TopicSpec:
    """One topic as the sync wants it."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def plan(kafka: KafkaSettings, raw: Iterable[str], entities: Iterable[str], canonical: Iterable[str],
         sources: Iterable[str] = ("crm", "erp"), audit_days: int = 400) -> list[TopicSpec]:
    """Every topic of the sync, with the partitions and configuration settings ask for."""
    parts = kafka.partitions
    base = {"min.insync.replicas": str(kafka.min_insync_replicas)}
    specs = [TopicSpec(t, parts.raw, base) for t in dict.fromkeys(raw)]
    specs += [TopicSpec(changes_topic(e), parts.changes, base) for e in dict.fromkeys(entities)]
    specs += [TopicSpec(commands_topic(s), parts.commands, base) for s in ("crm", "erp")]
    specs += [TopicSpec(t, parts.dlq, {**base, **FOREVER}) for t in (DLQ, CONFLICTS)]
    specs.append(TopicSpec(AUDIT, parts.dlq, {**base, "retention.ms": str(audit_days * 86_400_000),
                                              "retention.bytes": "-1"}))
    specs += [TopicSpec(t, parts.canonical, {**base, **COMPACTED}) for t in dict.fromkeys(canonical)]
    specs += [TopicSpec(marker_topic(s), 1, base) for s in sources]
    return specs


@dataclass(frozen=True)
class TopicState:
    """A topic as the broker has it: partitions, and per partition its replicas and in-sync replicas."""

    name: str
    partitions: int
    replication_factor: int
    min_isr: int  # the smallest in-sync replica count over its partitions
    leaderless: int  # partitions without a leader


class Admin(AdminClient):
    """An Admin API client that keeps the client-level errors (a refused login shows only there)."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.errors: list[KafkaError] = []
        super().__init__({**conf, "error_cb": self.errors.append})  # type: ignore[dict-item]


def admin_client(kafka: KafkaSettings) -> Admin:
    """An Admin API client with the sync's credentials."""
    return Admin({**kafka.client_config(), "socket.timeout.ms": 10_000})


def describe(admin: AdminClient, names: Sequence[str] | None = None, timeout: float = 10.0) -> dict[str, TopicState]:
    """Partitions, replication factor and in-sync replicas of the topics (all when ``names`` is None)."""
    try:
        meta = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        admin.poll(0.5)  # serve the client-level error callbacks
        for err in getattr(admin, "errors", []):  # the root cause, when the client saw one
            if err.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL):
                raise broker_error(KafkaException(err)) from exc
        raise broker_error(exc) from exc
    out: dict[str, TopicState] = {}
    for name, topic in meta.topics.items():
        if names is not None and name not in names:
            continue
        if topic.error is not None:
            if topic.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                raise PreflightError(f"the broker refuses topic {name} to this principal (not authorised)",
                                     hint=AUTH_HINT)
            continue
        parts = list(topic.partitions.values())
        out[name] = TopicState(
            name, len(parts), max((len(p.replicas) for p in parts), default=0),
            min((len(p.isrs) for p in parts), default=0), sum(1 for p in parts if p.leader < 0))
    return out


def broker_error(exc: KafkaException) -> Exception:
    """A Kafka error as this project's error: authentication and authorisation are terminal, one line."""
    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    text = err.str() if err is not None else str(exc)
    code = err.code() if err is not None else None
    if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED) or "uthentication" in text:
        return PreflightError(f"the broker refused the login: {text}", hint=AUTH_HINT)
    if code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                KafkaError.GROUP_AUTHORIZATION_FAILED) or "not authorized" in text.lower():
        return PreflightError(f"the broker refused an operation: {text}", hint=AUTH_HINT)
    if code == KafkaError._SSL or "SSL" in text:
        return PreflightError(f"TLS to the broker failed: {text}", hint="check kafka.ssl_ca_location and the "
                              "broker's certificate (its name must match the bootstrap host)")
    return TransientError(f"broker not reachable: {text}")


def provision(admin: AdminClient, specs: Sequence[TopicSpec], replication_factor: int,
              timeout: float = 30.0) -> list[str]:
    """Create the missing topics; warnings for existing ones whose partitions or replicas differ."""
    present = describe(admin)
    missing = [s for s in specs if s.name not in present]
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, replication_factor, config=dict(s.config)) for s in missing],
            operation_timeout=timeout)
        for name, fut in futures.items():
            try:
                fut.result(timeout=timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise _create_error(name, exc) from exc
    warnings = []
    for spec in specs:
        state = present.get(spec.name)
        if state is None:
            continue
        if state.partitions < spec.partitions:
            warnings.append(f"topic {spec.name} has {state.partitions} partition(s), settings ask for "
                            f"{spec.partitions}: fewer workers can share it (partitions are set at creation)")
        if state.replication_factor < replication_factor:
            warnings.append(f"topic {spec.name} has replication factor {state.replication_factor}, settings ask "
                            f"for {replication_factor}")
    return warnings


def _create_error(name: str, exc: KafkaException) -> Exception:
    err: KafkaError = exc.args[0]
    if err.code() == KafkaError.POLICY_VIOLATION or err.code() == KafkaError.INVALID_REPLICATION_FACTOR:
        return PreflightError(f"cannot create topic {name}: {err.str()}",
                              hint="set kafka.replication_factor to at most the number of brokers")
    if err.code() == KafkaError.INVALID_CONFIG:
        return PreflightError(f"cannot create topic {name}: {err.str()}",
                              hint="kafka.min_insync_replicas must not exceed kafka.replication_factor")
    error = broker_error(exc)
    if isinstance(error, PreflightError):
        return PreflightError(f"cannot create topic {name}: {error.message}", hint=error.hint)
    return TransientError(f"cannot create topic {name}: {err.str()}")


class Topics:
    """Creates topics nobody planned on first use (as Kafka Connect's topic creation would)."""

    def __init__(self, admin: AdminClient, replication_factor: int, config: dict[str, str] | None = None) -> None:
        self.admin = admin
        self.replication_factor = replication_factor
        self.config = config or {}
        self.known: set[str] = set()
        self._lock = threading.Lock()

    def refresh(self) -> set[str]:
        """Topics the broker has now."""
        names = set(describe(self.admin))
        with self._lock:
            self.known |= names
        return names

    def ensure(self, topic: str, partitions: int) -> None:
        """Create ``topic`` unless it exists."""
        if topic in self.known:
            return
        with self._lock:
            if topic in self.known:
                return
            provision(self.admin, [TopicSpec(topic, partitions, self.config)], self.replication_factor)
            self.known.add(topic)


def topic_table(states: dict[str, TopicState], specs: Sequence[TopicSpec]) -> list[dict[str, Any]]:
    """Rows for ``status``: every planned topic with what the broker has (or ``missing``)."""
    rows = []
    for spec in specs:
        state = states.get(spec.name)
        rows.append({"topic": spec.name, "partitions": state.partitions if state else None,
                     "replication_factor": state.replication_factor if state else None,
                     "min_isr": state.min_isr if state else None,
                     "leaderless": state.leaderless if state else None})
    return rows


def planned(settings: Settings) -> list[TopicSpec]:
    """The topics of the configured profiles and document profiles (see :func:`plan`)."""
    from streams.documents.spec import load_documents
    from streams.mapping.profile import load_profiles

    profiles = load_profiles(settings.processors.profiles)
    documents = load_documents(settings.processors.documents)
    raw = [raw_topic(s, p.table_of(s)) for p in profiles for s in ("crm", "erp")]
    raw += [raw_topic(rule.source, table) for rule in documents.rules for table in rule.watch]
    raw += [raw_topic(s, table) for p in profiles for s in ("crm", "erp") for table in p.watched(s)]
    canonical = [p.canonical.topic for p in profiles if p.canonical] + [r.topic for r in documents.canonical]
    return plan(settings.kafka, raw, [p.entity for p in profiles], canonical, settings.capture.sources,
                settings.audit.retention_days)


def ensure_planned(settings: Settings) -> list[TopicSpec]:
    """Create the sync's missing topics (idempotent); log a warning for each that differs from settings."""
    from streams.settings import production_warnings

    specs = planned(settings)
    for warning in [*provision(admin_client(settings.kafka), specs, settings.kafka.replication_factor),
                    *production_warnings(settings)]:
        log.warning("%s", warning)
    return specs


def topic_ids(admin: AdminClient, names: Sequence[str], timeout: float = 10.0) -> dict[str, str]:
    """Each existing topic's id: its incarnation (a topic deleted and created again gets a new one)."""
    from confluent_kafka import TopicCollection

    if not names:
        return {}
    out: dict[str, str] = {}
    for name, fut in admin.describe_topics(TopicCollection(list(names)), request_timeout=timeout).items():
        try:
            out[name] = str(fut.result(timeout=timeout).topic_id)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise broker_error(exc) from exc
    return out
