"""What both capture modes share: source checks, event kinds, the replication-slot watch."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from streams import metrics
from streams.capture.connector import load_connector
from streams.ddl import ensure
from streams.errors import PreflightError, TransientError
from streams.settings import Settings
from streams.topics import Topics, admin_client, ensure_planned

log = logging.getLogger(__name__)

HEARTBEAT_PREFIX = "__debezium-heartbeat"
SLOT_WAL = ("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(confirmed_flush_lsn, restart_lsn))"
            " FROM pg_replication_slots WHERE slot_name = %s")
CAPTURE_DDL = """
CREATE SCHEMA IF NOT EXISTS sync_meta;
CREATE TABLE IF NOT EXISTS sync_meta.heartbeat (id int PRIMARY KEY, beat_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS sync_meta.debezium_signal (
  id varchar(64) PRIMARY KEY, type varchar(32) NOT NULL, data varchar(2048));
"""


def is_heartbeat(topic: str) -> bool:
    """Debezium's heartbeat topic, or the heartbeat action query's table (it changes every beat)."""
    return topic.startswith(HEARTBEAT_PREFIX) or topic.endswith(".sync_meta.heartbeat")


def is_data(topic: str, source: str) -> bool:
    """A change of a business table (not a heartbeat, signal or transaction marker)."""
    return topic.startswith(f"{source}.") and ".sync_meta." not in topic and not topic.endswith(".transaction")


def check_source(settings: Settings, source: str) -> None:
    """The database is reachable, has ``wal_level=logical``, and has the capture tables."""
    db = settings.database(source)
    try:
        with psycopg.connect(**db.conninfo(), autocommit=True) as conn:
            row = conn.execute("SHOW wal_level").fetchone()
            wal_level = row[0] if row else "unknown"
            if wal_level != "logical":
                raise PreflightError(
                    f"{source} database {db.where()} has wal_level={wal_level}; change-data-capture needs logical",
                    hint="run ALTER SYSTEM SET wal_level = logical; then restart that PostgreSQL server",
                )
            ensure(conn, CAPTURE_DDL, ("sync_meta.heartbeat", "sync_meta.debezium_signal"))
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PreflightError(
            f"cannot connect to the {source} database {db.where()}: {first}",
            hint=f"check {source}.host/port/user/password in sync.yaml, and that the server runs",
        ) from exc


def slot_names(settings: Settings, sources: Sequence[str]) -> dict[str, str]:
    """Each source's replication slot, from its connector file."""
    out = {}
    for source in sources:
        definition = load_connector(settings.capture.connectors_dir / f"{source}-postgres.json")
        out[source] = str(definition["config"].get("slot.name", "debezium"))
    return out


def watch_slots(settings: Settings, sources: Sequence[str], stop: threading.Event, interval: float = 10.0) -> None:
    """Export the WAL each source's replication slot retains, every ``interval`` seconds, until ``stop``."""
    slots = slot_names(settings, sources)
    while True:
        for source, slot in slots.items():
            try:
                with psycopg.connect(**settings.database(source).conninfo()) as conn:
                    row = conn.execute(SLOT_WAL, (slot,)).fetchone()
            except psycopg.Error as exc:
                log.warning("%s: cannot read replication slot %s: %s", source, slot, str(exc).strip())
                continue
            if row is not None and row[0] is not None:
                metrics.CAPTURE_SLOT_WAL.labels(source).set(float(row[0]))
        if stop.wait(interval):
            return


def prepare_topics(settings: Settings) -> set[str]:
    """The topics present before this start; then the sync's planned topics (marker topics included) are made."""
    try:
        present = Topics(admin_client(settings.kafka), settings.kafka.replication_factor).refresh()
        ensure_planned(settings)
    except TransientError as exc:
        raise PreflightError(
            f"broker at {settings.kafka.bootstrap_servers} is not reachable ({exc.message})",
            hint="start it (crm-erp-sync up starts the embedded one) or fix kafka.bootstrap_servers",
        ) from exc
    return present


def lag_decoder(settings: Settings) -> Callable[[bytes], Any]:
    """Confluent Avro -> dict through the registry, to read a sampled event's source commit time."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    deserializer = AvroDeserializer(SchemaRegistryClient(settings.registry.client_config()))
    return lambda value: deserializer(value, None)


def observe_capture_lag(source: str, decode: Callable[[bytes], Any], value: bytes, written_at: float) -> None:
    """Source commit -> the event in the broker, for one sampled event."""
    try:
        commit_ms = decode(value)["source"]["ts_ms"]
    except Exception as exc:  # a metric must never stop capture
        log.debug("%s: cannot sample the capture lag: %s", source, exc)
        return
    metrics.CAPTURE_LAG.labels(source).observe(max(0.0, written_at - commit_ms / 1000))
