"""Capture through Kafka Connect: deploy the connector files, watch their state, heal failed tasks.

In ``capture.mode: connect`` Debezium runs inside a Kafka Connect cluster. The capture process
PUTs each ``connectors/<source>-postgres.json`` unchanged (its ``${env:}``/``${file:}`` placeholders
are resolved by the Connect workers' config providers), then every few seconds reads each
connector's state from the REST API into metrics, restarts a failed connector or task with
backoff (each restart counted; the failure's root cause logged as one line), and follows the
topics' end offsets so that ``status`` tells streaming, idle and stalled sources apart as with the
embedded engine.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

from streams import metrics
from streams.capture.connector import load_connector
from streams.capture.sources import (
    check_source,
    is_data,
    is_heartbeat,
    lag_decoder,
    observe_capture_lag,
    prepare_topics,
    watch_slots,
)
from streams.errors import PreflightError, SyncError, TransientError
from streams.settings import Settings
from streams.topics import admin_client

log = logging.getLogger(__name__)

CONNECTOR_CLASS = "io.debezium.connector.postgresql.PostgresConnector"
AVRO_CONVERTER = "io.confluent.connect.avro.AvroConverter"
TASK_STATES = ("RUNNING", "FAILED", "PAUSED", "UNASSIGNED", "RESTARTING")


def root_cause(trace: str | None) -> str:
    """One line from a Java stack trace: its first line and its deepest ``Caused by``."""
    if not trace:
        return "no trace"
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    causes = [line.removeprefix("Caused by: ") for line in lines if line.startswith("Caused by:")]
    first = lines[0]
    return first if not causes or causes[-1] in first else f"{first} <- {causes[-1]}"


REFUSED = re.compile(r"incompatible with an earlier schema for subject '([^']+)'")


def explain(failure: str, registry_url: str) -> str:
    """A capture failure as one line; a schema the registry refused names its subject and the fix."""
    refused = REFUSED.search(failure)
    if refused is None:
        return failure
    subject = refused.group(1)
    return (f"the schema registry refused a new schema for subject {subject}: it is incompatible with the"
            f" subject's earlier versions (a column's type changed, or a connector setting such as"
            f" decimal.handling.mode or time.precision.mode did); capture stopped before writing it, nothing is"
            f" lost. Fix: undo that change, or, if it is meant, let the subject take it once with"
            f" PUT {registry_url.rstrip('/')}/config/{subject} {{\"compatibility\": \"NONE\"}}, start capture, then"
            f" set it back (the registry said: {failure[refused.start():][:240]}…)")


class ConnectClient:
    """The Kafka Connect REST API (the subset capture uses), every call with a bounded timeout."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                text = resp.read().decode("utf-8")
                return resp.status, json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", errors="replace")
            try:
                return exc.code, json.loads(text)
            except json.JSONDecodeError:
                return exc.code, {"message": text}
        except OSError as exc:
            raise TransientError(f"Kafka Connect at {self.url} is not reachable: {exc}") from exc

    def reachable(self) -> bool:
        """True when the REST API answers."""
        try:
            return self._call("GET", "/")[0] == 200
        except TransientError:
            return False

    def plugins(self) -> set[str]:
        """Class names of the installed connector, converter and transform plugins."""
        status, body = self._call("GET", "/connector-plugins?connectorsOnly=false")
        if status != 200:
            raise TransientError(f"Kafka Connect plugins: HTTP {status}")
        return {p["class"] for p in body}

    def put_config(self, name: str, config: dict[str, str]) -> None:
        """Create or update a connector with exactly this configuration."""
        status, body = self._call("PUT", f"/connectors/{name}/config", config)
        if status in (200, 201):
            return
        message = (body or {}).get("message", "") if isinstance(body, dict) else str(body)
        if status == 409:  # a rebalance is in progress: try again
            raise TransientError(f"Kafka Connect is rebalancing; connector {name} not deployed yet")
        raise PreflightError(f"Kafka Connect refused connector {name}: HTTP {status} {message}".strip(),
                             hint=f"fix connectors/{name}.json")

    def status(self, name: str) -> dict[str, Any] | None:
        """The connector's and its tasks' state, or None when it does not exist."""
        status, body = self._call("GET", f"/connectors/{name}/status")
        if status == 404:  # deleted, or created a moment ago and not yet started
            return None if self._call("GET", f"/connectors/{name}/config")[0] == 404 else {}
        if status != 200:
            raise TransientError(f"Kafka Connect status of {name}: HTTP {status}")
        result: dict[str, Any] = body
        return result

    def pause(self, name: str, paused: bool = True) -> None:
        """Pause (or resume) a connector: its tasks stop taking records and keep their position."""
        status, body = self._call("PUT", f"/connectors/{name}/{'pause' if paused else 'resume'}")
        if status not in (200, 202, 204):
            raise TransientError(f"Kafka Connect {'pause' if paused else 'resume'} of {name}: HTTP {status} {body}")

    def restart(self, name: str) -> None:
        """Restart the connector and its failed tasks."""
        status, body = self._call("POST", f"/connectors/{name}/restart?includeTasks=true&onlyFailed=true")
        if status not in (200, 202, 204):
            raise TransientError(f"Kafka Connect restart of {name}: HTTP {status} {body}")


class TopicWatch:
    """Follows the end offsets of a source's topics: new data events and heartbeats, per source.

    The commit -> broker lag is sampled from the newest event of one partition that advanced, per
    source and poll: its source commit time against the time Kafka Connect wrote it (its timestamp).
    """

    def __init__(self, settings: Settings, sources: Sequence[str]) -> None:
        self.admin = admin_client(settings.kafka)
        self.sources = list(sources)
        self.ends: dict[tuple[str, int], int] = {}
        self.reader = Consumer({**settings.kafka.client_config(), "group.id": "crm-erp-sync-capture-watch",
                                "enable.auto.commit": False})
        self.decode = lag_decoder(settings)

    def poll(self) -> None:
        """Compare end offsets with the last poll; count events, stamp last event / heartbeat times."""
        try:
            topics = self.admin.list_topics(timeout=10).topics
            parts = [TopicPartition(name, p) for name, t in topics.items() for p in t.partitions
                     if self._source_of(name) is not None]
            if not parts:
                return
            latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
            futures = self.admin.list_offsets(dict.fromkeys(parts, latest), request_timeout=10)
            ends = {(tp.topic, tp.partition): fut.result(timeout=10).offset for tp, fut in futures.items()}
        except KafkaException as exc:
            log.warning("cannot read the capture topics' end offsets: %s", exc)
            return
        now = time.time()
        sample: dict[str, tuple[str, int, int]] = {}  # source -> a data partition that advanced
        for (topic, partition), end in ends.items():
            source = self._source_of(topic)
            before = self.ends.get((topic, partition))
            self.ends[(topic, partition)] = end
            if source is None or before is None or end <= before:
                continue
            metrics.CAPTURE_EVENTS.labels(source, topic).inc(end - before)
            if is_heartbeat(topic):
                metrics.CAPTURE_LAST_HEARTBEAT.labels(source).set(now)
            elif is_data(topic, source):
                metrics.CAPTURE_LAST_EVENT.labels(source).set(now)
                sample[source] = (topic, partition, end - 1)
        for source, (topic, partition, offset) in sample.items():
            self._sample_lag(source, topic, partition, offset)

    def _sample_lag(self, source: str, topic: str, partition: int, offset: int) -> None:
        self.reader.assign([TopicPartition(topic, partition, offset)])
        msg = self.reader.poll(2.0)
        value = None if msg is None or msg.error() else msg.value()
        if msg is not None and value is not None:
            observe_capture_lag(source, self.decode, value, msg.timestamp()[1] / 1000)

    def _source_of(self, topic: str) -> str | None:
        for source in self.sources:
            if topic.startswith((f"{source}.", f"__debezium-heartbeat.{source}")):
                return source
        return None


class ConnectCapture:
    """Deploys the sources' connectors to Kafka Connect and keeps them running."""

    def __init__(self, settings: Settings, sources: Sequence[str] | None = None, interval: float = 2.0) -> None:
        self.settings = settings
        self.sources = list(sources or settings.capture.sources)
        self.client = ConnectClient(settings.capture.connect_url)
        self.interval = interval
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self._failing: dict[str, tuple[str, float, float]] = {}  # source -> (cause, next restart, backoff)
        self._missing: dict[str, int] = {}  # source -> checks in a row that found no connector

    def connectors(self) -> dict[str, dict[str, Any]]:
        """Each source's connector file (``name`` and ``config``)."""
        return {s: load_connector(self.settings.capture.connectors_dir / f"{s}-postgres.json") for s in self.sources}

    def preflight(self, wait: float = 120.0) -> None:
        """The databases, the topics, and a Kafka Connect with the plugins the connector files name."""
        for source in self.sources:
            check_source(self.settings, source)
        prepare_topics(self.settings)
        deadline = time.monotonic() + wait
        while not self.client.reachable():
            if time.monotonic() > deadline or self.stop_event.wait(1.0):
                raise PreflightError(f"Kafka Connect at {self.client.url} is not reachable",
                                     hint="start it (crm-erp-sync up starts the embedded one) or fix"
                                          " capture.connect_url; capture.mode: embedded runs Debezium in-process")
        plugins = self.client.plugins()
        for source, definition in self.connectors().items():
            config = definition["config"]
            for key in ("connector.class", "key.converter", "value.converter"):
                wanted = config.get(key)
                if wanted and wanted not in plugins and not wanted.startswith("org.apache.kafka."):
                    raise PreflightError(f"Kafka Connect at {self.client.url} has no plugin {wanted} ({source}: {key})",
                                         hint="install the Debezium PostgreSQL connector and the Avro converter"
                                              " in the workers' plugin.path")

    def deploy(self) -> None:
        """PUT every connector file's configuration, unchanged (retried while Connect rebalances)."""
        for definition in self.connectors().values():
            deadline = time.monotonic() + 60
            while True:
                try:
                    self.client.put_config(definition["name"], definition["config"])
                    break
                except TransientError:
                    if time.monotonic() > deadline or self.stop_event.wait(1.0):
                        raise
            log.info("connector %s deployed to %s", definition["name"], self.client.url)

    def check(self) -> None:
        """Read each connector's state into metrics; restart what failed (with backoff).

        Kafka Connect being away or restarting is no reason to stop watching: a failed call is
        logged and tried again at the next check.
        """
        for source, definition in self.connectors().items():
            try:
                self._check(source, definition)
            except SyncError as exc:
                log.warning("%s: %s", source, exc.message)
                metrics.CONNECT_CONNECTOR_RUNNING.labels(source).set(0)

    def _check(self, source: str, definition: dict[str, Any]) -> None:
        name = definition["name"]
        state = self.client.status(name)
        if state is None:
            # Unknown to Connect: deleted behind our back, or Connect restarted and has not read its
            # configuration topic yet. Deploying again is harmless either way (the same config).
            self._missing[source] = self._missing.get(source, 0) + 1
            if self._missing[source] >= 3:
                log.warning("connector %s is gone from Kafka Connect; deploying it again", name)
                self.client.put_config(name, definition["config"])
            return
        self._missing.pop(source, None)
        connector = state.get("connector", {})
        tasks = state.get("tasks", [])
        counts = dict.fromkeys(TASK_STATES, 0)
        for task in tasks:
            counts[task.get("state", "UNASSIGNED")] = counts.get(task.get("state", "UNASSIGNED"), 0) + 1
        for task_state, n in counts.items():
            metrics.CONNECT_TASKS.labels(source, task_state).set(n)
        running = connector.get("state") == "RUNNING" and tasks and all(t.get("state") == "RUNNING" for t in tasks)
        metrics.CONNECT_CONNECTOR_RUNNING.labels(source).set(1 if running else 0)
        failed = [t for t in tasks if t.get("state") == "FAILED"]
        if connector.get("state") == "FAILED" or failed:
            trace = connector.get("trace") if connector.get("state") == "FAILED" else failed[0].get("trace")
            self._heal(source, name, root_cause(trace))
        else:
            self._failing.pop(source, None)

    def _heal(self, source: str, name: str, cause: str) -> None:
        now = time.monotonic()
        previous = self._failing.get(source)
        if previous is None or previous[0] != cause:
            log.error("%s capture failed in Kafka Connect (connector %s): %s", source, name, cause)
        if previous is not None and now < previous[1]:
            return
        backoff = min(60.0, previous[2] * 2) if previous else 5.0
        try:
            self.client.restart(name)
        except TransientError as exc:
            log.warning("%s", exc.message)
        metrics.CONNECT_RESTARTS.labels(source).inc()
        self._failing[source] = (cause, now + backoff, backoff)

    def run(self) -> int:
        """Deploy, then watch until ``stop_event`` is set; exit status."""
        self.preflight()
        self.deploy()
        for source in self.sources:  # the series exist from the start (0 restarts, not "no data")
            metrics.CONNECT_RESTARTS.labels(source)
        watch = TopicWatch(self.settings, self.sources)
        threading.Thread(target=watch_slots, args=(self.settings, self.sources, self.stop_event),
                         name="slot-watch", daemon=True).start()
        log.info("capturing %s through Kafka Connect at %s", ", ".join(self.sources), self.client.url)
        while not self.stop_event.is_set():
            self.check()
            watch.poll()
            self.stop_event.wait(self.interval)
        return 0
