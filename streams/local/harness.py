"""Services for tests and benchmarks: real PostgreSQL, Tansu, registry and capture, on free ports.

By default everything starts locally under a temporary folder. Bring-your-own: set
``SYNC_TEST_PG`` (``host:port:user:password`` of a server with ``wal_level=logical`` where the
databases may be created), ``SYNC_TEST_BOOTSTRAP`` (a Kafka bootstrap) and ``SYNC_TEST_REGISTRY``
(a registry URL) to use existing services instead. Where a Docker engine runs,
``SYNC_TEST_DOCKER=1`` takes PostgreSQL and Kafka from testcontainers instead.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from streams.local import seed
from streams.local.ports import free_port, wait_listening
from streams.local.postgres import LocalPostgres, find_pg_bin
from streams.local.stack import broker_binary
from streams.registry.server import RegistryServer
from streams.registry.store import RegistryStore

REPO = Path(__file__).resolve().parents[2]
POSTGRES_IMAGE = "postgres:15"
KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"


class Broker:
    """A Tansu broker process on a free port (memory only: a restart empties it)."""

    def __init__(self, log_file: Path) -> None:
        self.port = free_port()
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> Broker:
        """Start and wait until it listens."""
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(
                [broker_binary(), "broker", "--listener-url", f"tcp://{self.bootstrap}",
                 "--advertised-listener-url", f"tcp://{self.bootstrap}"],
                stdout=out, stderr=subprocess.STDOUT,
            )
        if not wait_listening(self.port, 30):
            raise RuntimeError(f"Tansu did not listen on {self.bootstrap}; see {self.log_file}")
        return self

    def stop(self) -> None:
        """Stop (its contents are gone)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        """Stop and start on the same port: an empty broker, as after an embedded restart."""
        self.stop()
        self.start()


class Harness:
    """PostgreSQL (crm, erp, sync), broker and registry, plus a config file for the CLI."""

    def __init__(self, root: Path, seed_accounts: int = 60) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self.seed_accounts = seed_accounts
        self.pg: LocalPostgres | None = None
        self.broker: Broker | None = None
        self.registry: RegistryServer | None = None
        self.db: dict[str, Any] = {}
        self.bootstrap = os.environ.get("SYNC_TEST_BOOTSTRAP", "")
        self.registry_url = os.environ.get("SYNC_TEST_REGISTRY", "")
        self.manifest: seed.SeedManifest | None = None
        self._containers: list[Any] = []

    # -- services ---------------------------------------------------------------------------
    def start(self) -> Harness:
        """Start (or connect to) every service and load the demo schemas."""
        byo = os.environ.get("SYNC_TEST_PG")
        if os.environ.get("SYNC_TEST_DOCKER") == "1":
            byo = self._start_containers()
        if byo:
            host, port, user, password = byo.split(":", 3)
            pw_file = self.root / "db-password"
            pw_file.write_text(password, encoding="utf-8")
            self.db = {"host": host, "port": int(port), "user": user, "password_file": str(pw_file)}
            self._recreate_databases()
        else:
            self.pg = LocalPostgres(self.root / "pg" / "data", free_port(), find_pg_bin(None),
                                    self.root / "secrets" / "db-password")
            self.pg.start()
            self.db = {"host": "127.0.0.1", "port": self.pg.port, "user": "sync",
                       "password_file": str(self.pg.password_file)}
        data = seed.generate(self.seed_accounts)
        self.manifest = data.manifest
        for system in ("crm", "erp"):
            with self.connect(system) as conn:
                seed.install(conn, system, getattr(data, system))
        if not self.bootstrap:
            self.broker = Broker(self.root / "broker.log").start()
            self.bootstrap = self.broker.bootstrap
        if not self.registry_url:
            self.registry = RegistryServer(RegistryStore(self.conninfo("sync")), "127.0.0.1", 0).start()
            self.registry_url = self.registry.url
        self.write_config()
        return self

    def _start_containers(self) -> str:
        """PostgreSQL (wal_level=logical) and Kafka from testcontainers; the PostgreSQL login."""
        from testcontainers.community.kafka import KafkaContainer
        from testcontainers.community.postgres import PostgresContainer

        password = secrets.token_urlsafe(16)
        pg = PostgresContainer(POSTGRES_IMAGE, username="sync", password=password, dbname="postgres")
        pg.with_command("postgres -c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10")
        pg.start()
        self._containers.append(pg)
        if not self.bootstrap:
            kafka = KafkaContainer(KAFKA_IMAGE).start()
            self._containers.append(kafka)
            self.bootstrap = kafka.get_bootstrap_server()
        return f"{pg.get_container_host_ip()}:{pg.get_exposed_port(5432)}:sync:{password}"

    def _recreate_databases(self) -> None:
        with psycopg.connect(**self.conninfo("postgres"), autocommit=True) as conn:
            for name in ("crm", "erp", "sync"):
                for slot in conn.execute(
                    "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
                ).fetchall():
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot[0],))
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def stop(self) -> None:
        """Stop what this harness started."""
        if self.registry is not None:
            self.registry.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.pg is not None:
            self.pg.stop()
        for container in reversed(self._containers):
            container.stop()

    # -- access -----------------------------------------------------------------------------
    def conninfo(self, dbname: str) -> dict[str, Any]:
        """``psycopg.connect`` arguments for one database."""
        password = Path(self.db["password_file"]).read_text(encoding="utf-8").strip()
        return {"host": self.db["host"], "port": self.db["port"], "user": self.db["user"],
                "password": password, "dbname": dbname}

    def connect(self, dbname: str, autocommit: bool = True) -> psycopg.Connection[Any]:
        """A connection to ``crm``, ``erp`` or ``sync``."""
        return psycopg.connect(**self.conninfo(dbname), autocommit=autocommit)

    @property
    def config_path(self) -> Path:
        """The ``sync.yaml`` the CLI subprocesses use."""
        return self.root / "sync.yaml"

    def write_config(self, **extra: Any) -> Path:
        """Write ``sync.yaml`` pointing at these services."""
        dbs = {name: {**self.db, "dbname": name} for name in ("crm", "erp")}
        dbs["store"] = {**self.db, "dbname": "sync"}
        config: dict[str, Any] = {
            **dbs,
            "kafka": {"bootstrap_servers": self.bootstrap},
            "registry": {"url": self.registry_url},
            "capture": {"connectors_dir": str(REPO / "connectors")},
            "processors": {"profiles": [str(REPO / "schemas" / "mappings" / "demo.yaml")], "documents": [],
                           "session_timeout_s": 6, "rebalance_timeout_s": 10},
            "local": {"enabled": False, "state_dir": str(self.root / "state")},
        }
        for key, value in extra.items():
            config.setdefault(key, {}).update(value)
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return self.config_path

    def cli(self, *args: str) -> list[str]:
        """Argv running the CLI with this harness's config."""
        return [sys.executable, "-m", "streams", "--config", str(self.config_path), *args]

    def spawn(self, *args: str, log_name: str = "capture.log", env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        """Start a CLI subcommand in the background, output appended to a log file."""
        with (self.root / log_name).open("ab") as out:
            return subprocess.Popen(
                self.cli(*args), stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, **(env or {})},
            )


@contextmanager
def running(proc: subprocess.Popen[bytes], timeout: float = 60) -> Iterator[subprocess.Popen[bytes]]:
    """Terminate ``proc`` on exit (SIGTERM, then SIGKILL)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(predicate: Any, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def scalar(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    """The first column of the first row of ``query`` (None if no row)."""
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def wait_for_identity(harness: Harness, timeout: float = 120) -> None:
    """Wait until a worker's identity bootstrap has linked the existing records."""

    def linked() -> bool:
        with harness.connect("sync") as conn:
            try:
                row = conn.execute("SELECT count(*) FROM sync.xref").fetchone()
            except psycopg.Error:
                return False  # the worker has not created the store's tables yet
        return bool(row and row[0])

    wait_for(linked, timeout, 0.5, f"the identity bootstrap (see {harness.root / 'worker.log'})")


def topic_names(bootstrap: str) -> Sequence[str]:
    """Topics in the broker."""
    from confluent_kafka.admin import AdminClient

    return list(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics)


class TopicReader:
    """Reads topics from the start (no consumer group) and decodes with the official deserializer."""

    def __init__(self, bootstrap: str, registry_url: str, topics: Sequence[str], decode: bool = True) -> None:
        from confluent_kafka import Consumer, TopicPartition
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroDeserializer

        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader",
                                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        meta = self.consumer.list_topics(timeout=10)
        parts = [TopicPartition(t, p, 0) for t in topics if t in meta.topics for p in meta.topics[t].partitions]
        self.consumer.assign(parts)
        self.registry = SchemaRegistryClient({"url": registry_url})
        self.deserializer = AvroDeserializer(self.registry)
        self.decode = decode
        self.records: list[dict[str, Any]] = []

    def _decode(self, msg: Any, value: bool) -> Any:
        from confluent_kafka.serialization import MessageField, SerializationContext

        raw = msg.value() if value else msg.key()
        if raw is None or not self.decode or raw[:1] != b"\x00":
            return raw  # not Confluent wire format (e.g. a plain-text key)
        field = MessageField.VALUE if value else MessageField.KEY
        return self.deserializer(raw, SerializationContext(msg.topic(), field))

    def poll(self, seconds: float = 0.5) -> int:
        """Read what arrives within ``seconds``; how many records were added."""
        added = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            batch = self.consumer.consume(10000, timeout=0.1)
            for msg in batch:
                if msg.error():
                    continue
                self.records.append({"topic": msg.topic(), "partition": msg.partition(),
                                     "offset": msg.offset(), "key": self._decode(msg, False),
                                     "value": self._decode(msg, True), "timestamp": msg.timestamp()[1]})
                added += 1
            if not batch and added:
                break
        return added

    def wait(self, predicate: Any, timeout: float, what: str) -> Any:
        """Read until ``predicate(records)`` is truthy."""
        return wait_for(lambda: (self.poll(), predicate(self.records))[1], timeout, 0.0, what)

    def close(self) -> None:
        """Close the consumer."""
        self.consumer.close()


def records_in(harness: Harness, topics: Sequence[str]) -> int:
    """Records in the topics, counted by reading them (Tansu reports high watermarks as 0)."""
    reader = TopicReader(harness.bootstrap, harness.registry_url, topics, decode=False)
    try:
        while reader.poll(1.0):
            pass
        return len(reader.records)
    finally:
        reader.close()
