"""Services for tests and benchmarks: real PostgreSQL, Apache Kafka, Kafka Connect and registry.

By default everything starts locally under a temporary folder, on free ports: a PostgreSQL
cluster, an Apache Kafka (KRaft) cluster of ``brokers`` nodes, the embedded registry, and (when
capture runs in ``connect`` mode) a Kafka Connect worker. Bring-your-own: set ``SYNC_TEST_PG``
(``host:port:user:password`` of a server with ``wal_level=logical`` where the databases may be
created), ``SYNC_TEST_BOOTSTRAP`` (a Kafka bootstrap), ``SYNC_TEST_REGISTRY`` (a registry URL)
and ``SYNC_TEST_CONNECT`` (a Kafka Connect REST URL whose workers reach these databases) to use
existing services instead. ``SYNC_TEST_CAPTURE_MODE`` (``connect`` or ``embedded``) overrides the
default capture mode. Where a Docker engine runs, ``SYNC_TEST_DOCKER=1`` takes PostgreSQL and
Kafka from testcontainers instead.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from streams.local import jars, seed
from streams.local.connect import ConnectWorker, worker_env
from streams.local.java import java_binary
from streams.local.kafka import KafkaCluster, Scram
from streams.local.ports import free_port, http_ok
from streams.local.postgres import LocalPostgres, find_pg_bin
from streams.local.scratch import nothing_failed, scratch_dir
from streams.local.supervisor import terminate
from streams.registry.server import RegistryServer
from streams.registry.store import RegistryStore
from streams.roles import APPLY as APPLIER_ROLE
from streams.roles import CAPTURE as CAPTURE_ROLE
from streams.roles import STORE as STORE_ROLE
from streams.roles import capture_connector
from streams.roles import render as render_roles
from streams.settings import ERPNEXT_PROFILES, CaptureSettings, LocalSettings, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
POSTGRES_IMAGE = "postgres:15"
KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"


class Harness:
    """PostgreSQL (crm, erp, sync), broker and registry, plus a config file for the CLI."""

    def __init__(self, root: Path, seed_accounts: int = 60, brokers: int = 1, capture_mode: str | None = None,
                 scram: Scram | None = None, erp: str = "demo", least_privilege: bool | None = None,
                 kafka_version: str = jars.KAFKA_VERSION, connect_plugins: tuple[jars.Bundle, ...] = ()) -> None:
        self.root = root
        self.kafka_version = kafka_version  # of the brokers and Kafka Connect (another: a deployment's)
        # Least privilege: deploy/sql's scripts, rendered for this config's profiles, are run by the
        # owner; the worker and the CLI log in to the CRM and the ERP as the applier role, capture as
        # the capture role on the DBA's publication (capture.yaml), both to the store (and the
        # registry to its tables) as the store role. The owner's config stays in owner.yaml.
        # Default: SYNC_TEST_LEAST_PRIVILEGE=1 (the integration tier sets it, tests/integration/conftest.py).
        self.least_privilege = (least_privilege if least_privilege is not None
                                else os.environ.get("SYNC_TEST_LEAST_PRIVILEGE") == "1")
        self.erp = erp  # which demo ERP: demo or erpnext (its profiles: see write_config)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self.seed_accounts = seed_accounts
        self.brokers = brokers
        self.scram = scram
        self.capture_mode = (capture_mode or os.environ.get("SYNC_TEST_CAPTURE_MODE")
                             or CaptureSettings().mode)
        self.pg: LocalPostgres | None = None
        self.kafka: KafkaCluster | None = None
        self.registry: RegistryServer | None = None
        self.connect_worker: ConnectWorker | None = None
        self.connect_plugins = connect_plugins  # beyond Debezium's PostgreSQL connector and Avro
        self.connect_proc: subprocess.Popen[bytes] | None = None
        self.db: dict[str, Any] = {}
        self.bootstrap = os.environ.get("SYNC_TEST_BOOTSTRAP", "")
        self.registry_url = os.environ.get("SYNC_TEST_REGISTRY", "")
        self.connect_url = os.environ.get("SYNC_TEST_CONNECT", "")
        self.jar_cache = LocalSettings().jar_cache
        self._extra: dict[str, Any] = {}  # the last write_config's additions
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
        data = seed.demo_data(self.seed_accounts, self.erp)
        self.manifest = data.manifest
        for system in ("crm", "erp"):
            with self.connect(system) as conn:
                seed.install(conn, system, getattr(data, system), self.erp if system == "erp" else None)
        if not self.bootstrap:
            self.kafka = KafkaCluster(self.root / "kafka", self.brokers, scram=self.scram,
                                      server=jars.kafka(self.kafka_version)).start()
            self.bootstrap = self.kafka.bootstrap
        if self.least_privilege:
            with self.connect("sync") as owner:
                owner.execute(render_roles(Settings(), "store").text)
                self._set_password(owner, STORE_ROLE)
        if not self.registry_url:
            self.registry = RegistryServer(RegistryStore(self.store_conninfo()), "127.0.0.1", 0).start()
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

    def start_connect(self, config: Path | None = None) -> str:
        """A Kafka Connect worker for capture in ``connect`` mode (started once); its REST URL.

        Its environment carries the database logins of ``config`` (default: this harness's config),
        which the connectors' ``${env:…}`` placeholders resolve to.
        """
        if self.connect_url and self.connect_worker is None:
            return self.connect_url  # brought by the user
        if self.connect_worker is None:
            self.connect_worker = ConnectWorker(self.root / "connect", self.bootstrap, free_port(),
                                                replication_factor=min(3, self.brokers),
                                                extra_plugins=self.connect_plugins,
                                                runtime=jars.connect(self.kafka_version))
            self.connect_worker.prepare(self.jar_cache)
            self.connect_url = self.connect_worker.url
        if self.connect_proc is None or self.connect_proc.poll() is not None:
            settings = load_settings(config or self.capture_config_path)
            with (self.root / "connect.log").open("ab") as out:
                self.connect_proc = subprocess.Popen(
                    self.connect_worker.argv(java_binary(None), self.jar_cache), stdout=out,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **worker_env(settings)})
            wait_for(lambda: self.connect_proc is not None and (self.connect_proc.poll() is not None
                                                                or http_ok(f"{self.connect_url}/connectors")),
                     120, 0.5, f"Kafka Connect (see {self.root / 'connect.log'})")
            if self.connect_proc.poll() is not None:
                raise RuntimeError(f"Kafka Connect exited; see {self.root / 'connect.log'}")
        return self.connect_url

    def kill_connect(self) -> None:
        """SIGKILL the Kafka Connect worker (it is started again by :meth:`start_connect`)."""
        if self.connect_proc is not None and self.connect_proc.poll() is None:
            self.connect_proc.kill()
            self.connect_proc.wait()

    def stop(self) -> None:
        """Stop what this harness started."""
        terminate(self.connect_proc)
        if self.registry is not None:
            self.registry.stop()
        if self.kafka is not None:
            self.kafka.stop()
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

    def client_config(self) -> dict[str, Any]:
        """Kafka client properties for the tests' own reads (the admin login when the broker is secured)."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap}
        if self.scram is not None:
            conf.update({"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                         "sasl.username": self.scram.admin_user, "sasl.password": self.scram.admin_password,
                         "ssl.ca.location": str(self.scram.truststore_pem)})
        return conf

    @property
    def config_path(self) -> Path:
        """The ``sync.yaml`` the CLI subprocesses use."""
        return self.root / "sync.yaml"

    def write_config(self, **extra: Any) -> Path:
        """Write ``sync.yaml`` pointing at these services."""
        self._extra = extra
        dbs = {name: {**self.db, "dbname": name} for name in ("crm", "erp")}
        dbs["store"] = {**self.db, "dbname": "sync"}
        config: dict[str, Any] = {
            **dbs,
            "kafka": {"bootstrap_servers": self.bootstrap, "replication_factor": min(3, self.brokers),
                      "min_insync_replicas": max(1, min(self.brokers - 1, 2)), **self._kafka_login()},
            "registry": {"url": self.registry_url},
            "capture": {"connectors_dir": str(REPO / "connectors"), "mode": self.capture_mode,
                        **({"connect_url": self.connect_url} if self.connect_url else {})},
            "processors": {"profiles": [str(REPO / p) for p in self.profiles],
                           "documents": [], "session_timeout_s": 6, "rebalance_timeout_s": 10},
            "local": {"enabled": False, "state_dir": str(self.root / "state")},
        }
        for key, value in extra.items():
            if isinstance(value, dict):
                config.setdefault(key, {}).update(value)
            else:
                config[key] = value
        if self.least_privilege:
            self.owner_config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
            owner = load_settings(self.owner_config_path)
            self._grant_source_roles(owner)
            config["capture"]["connectors_dir"] = str(self._capture_role_connectors(owner))
            config["store"].update(user=STORE_ROLE, password_file=str(self.role_password_file))
            for role, path in ((CAPTURE_ROLE, self.capture_config_path), (APPLIER_ROLE, self.config_path)):
                for system in ("crm", "erp"):
                    config[system].update(user=role, password_file=str(self.role_password_file))
                path.write_text(yaml.safe_dump(config), encoding="utf-8")
        else:
            self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return self.config_path

    @property
    def capture_config_path(self) -> Path:
        """The config ``capture`` runs with (``sync.yaml`` unless least privilege)."""
        return self.root / "capture.yaml" if self.least_privilege else self.config_path

    @property
    def owner_config_path(self) -> Path:
        """The config with the owner's logins (``sync.yaml`` unless least privilege)."""
        return self.root / "owner.yaml" if self.least_privilege else self.config_path

    @property
    def role_password_file(self) -> Path:
        """The password of deploy/sql's roles (one for all: a test's)."""
        secret = self.root / "secrets" / "role-password"
        if not secret.is_file():
            secret.parent.mkdir(parents=True, exist_ok=True)
            secret.write_text(secrets.token_urlsafe(16) + "\n", encoding="utf-8")
        return secret

    def store_conninfo(self) -> dict[str, Any]:
        """``psycopg.connect`` arguments of the store as the sync logs in to it (the store role or the owner)."""
        if not self.least_privilege:
            return self.conninfo("sync")
        return {**self.conninfo("sync"), "user": STORE_ROLE,
                "password": self.role_password_file.read_text(encoding="utf-8").strip()}

    def _set_password(self, owner: psycopg.Connection[Any], role: str) -> None:
        owner.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(self.role_password_file.read_text(encoding="utf-8").strip())))

    def _grant_source_roles(self, settings: Settings) -> None:
        """deploy/sql's CRM and ERP scripts rendered for ``settings``' profiles, run by the owner."""
        for system in ("crm", "erp"):
            with self.connect(system) as owner:
                owner.execute(render_roles(settings, system).text)
        with self.connect("crm") as owner:  # roles belong to the cluster: their passwords are set once
            for role in (CAPTURE_ROLE, APPLIER_ROLE):
                self._set_password(owner, role)

    def _capture_role_connectors(self, settings: Settings) -> Path:
        """``settings``' connectors as the capture role runs them (:func:`streams.roles.capture_connector`)."""
        target = self.root / "connectors-capture-role"
        target.mkdir(exist_ok=True)
        for source in ("crm", "erp"):
            (target / f"{source}-postgres.json").write_text(json.dumps(capture_connector(settings, source)),
                                                            encoding="utf-8")
        return target

    @property
    def profiles(self) -> list[Path]:
        """The demo ERP's customer profile (the default of the tests' configs)."""
        return [ERPNEXT_PROFILES["profiles"][0]] if self.erp == "erpnext" else [Path("schemas/mappings/demo.yaml")]

    def _kafka_login(self) -> dict[str, Any]:
        """The sync's own login (its first SCRAM user) when the broker is secured."""
        if self.scram is None:
            return {}
        user, password = next(iter(self.scram.users.items()))
        return {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": user,
                "sasl_password": password, "ssl_ca_location": str(self.scram.truststore_pem)}

    def cli(self, *args: str) -> list[str]:
        """Argv running the CLI with this harness's config (``capture`` with the capture config)."""
        config = self.capture_config_path if args[:1] == ("capture",) else self.config_path
        return [sys.executable, "-m", "streams", "--config", str(config), *args]

    def spawn(self, *args: str, log_name: str = "capture.log", env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        """Start a CLI subcommand in the background, output appended to a log file.

        ``capture`` in ``connect`` mode first starts the Kafka Connect worker it deploys to.
        """
        if args[:1] == ("capture",) and self.capture_mode == "connect" and not self.connect_worker:
            self.start_connect()
            self.write_config(**self._extra)
        return self.spawn_command(self.cli(*args), log_name, env)

    def spawn_command(self, argv: list[str], log_name: str, env: dict[str, str] | None = None,
                      cwd: Path = REPO) -> subprocess.Popen[bytes]:
        """Start any command in the background (another config, an installed copy), output appended to a log."""
        with (self.root / log_name).open("ab") as out:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                    env={**os.environ, **(env or {})})

    def linked_pair(self, kind: str = "exact") -> tuple[str, str]:
        """``(CRM id, ERP key)`` of the first pair the identity linked by ``kind``."""
        with self.connect("sync") as conn:
            row = conn.execute("SELECT crm_id, erp_id FROM sync.xref WHERE linked_by = %s ORDER BY crm_id LIMIT 1",
                               (kind,)).fetchone()
        assert row is not None, f"no pair linked by {kind}"
        return str(row[0]), str(row[1])


@contextmanager
def running(proc: subprocess.Popen[bytes], timeout: float = 60) -> Iterator[subprocess.Popen[bytes]]:
    """Terminate ``proc`` on exit (SIGTERM, then SIGKILL)."""
    try:
        yield proc
    finally:
        terminate(proc, timeout)


def wait_for(predicate: Any, timeout: float, interval: float = 0.2, what: str = "condition",
             describe: Callable[[], str] | None = None) -> Any:
    """Poll ``predicate`` until it returns something truthy; raise ``TimeoutError`` naming ``what``.

    The error ends with ``describe()`` when given (what was still missing at the last look), else
    with the predicate's last answer.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}"
                       f" ({describe() if describe is not None else f'last: {last!r}'})")


def reached(predicate: Any, timeout: float, interval: float = 0.5) -> bool:
    """Whether ``predicate`` became truthy within ``timeout``: for a benchmark that reports a miss."""
    try:
        wait_for(predicate, timeout, interval)
    except TimeoutError:
        return False
    return True


def scalar(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    """The first column of the first row of ``query`` (None if no row)."""
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def win_deal(harness: Harness, account: str, lines: Sequence[tuple[str, str, str]], currency: str = "CNY",
             one_transaction: bool = False, title: str = "集成测试订单") -> str:
    """A CRM deal of ``account`` with (sku, quantity, unit price in yuan) lines, won; its id.

    Won in a second transaction (as a salesperson closes it), or with ``one_transaction`` at once.
    """
    import uuid
    from decimal import Decimal

    deal = str(uuid.uuid4())
    with harness.connect("crm", autocommit=False) as crm:
        crm.execute("INSERT INTO opportunities (id, account_id, title, stage, currency) VALUES (%s, %s, %s, %s, %s)",
                    (deal, account, title, "closed_won" if one_transaction else "negotiation", currency))
        for sku, qty, price in lines:
            crm.execute("INSERT INTO opportunity_lines (opportunity_id, product_code, quantity, unit_price)"
                        " VALUES (%s, %s, %s, %s)", (deal, sku, Decimal(qty), Decimal(price)))
        crm.commit()
        if not one_transaction:
            crm.execute("UPDATE opportunities SET stage = 'closed_won' WHERE id = %s", (deal,))
            crm.commit()
    return deal


def edits_sync_both_ways(harness: Harness, phone: str, credit_limit_fen: int, timeout: float = 120) -> None:
    """With capture and a worker running on the demo ERP: edits of the first exact pair cross both ways.

    A CRM edit of its phone reaches the ERP and an ERP edit of its credit limit the CRM (each owned
    by the side edited).
    """
    crm_id, erp_id = harness.linked_pair()
    with harness.connect("crm") as crm:
        crm.execute("UPDATE accounts SET phone = %s WHERE id = %s", (phone, crm_id))
    with harness.connect("erp") as erp:
        erp.execute("UPDATE customers SET credit_limit_fen = %s WHERE cust_no = %s", (credit_limit_fen, erp_id))
        wait_for(lambda: scalar(erp, "SELECT contact_phone FROM customers WHERE cust_no = %s", erp_id) == phone,
                 timeout, 0.5, "the CRM-owned phone in the ERP")
    with harness.connect("crm") as crm:
        wait_for(lambda: scalar(crm, "SELECT credit_limit FROM accounts WHERE id = %s", crm_id)
                 == Decimal(credit_limit_fen) / 100, timeout, 0.5, "the ERP-owned credit limit in the CRM")


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


def end_offsets(client: dict[str, Any], topics: Sequence[str]) -> dict[str, int]:
    """Records ever written to each topic (the sum of its partitions' end offsets; 0 when it is missing)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({**client, "group.id": "crm-erp-sync-test-offsets"})
    try:
        meta = consumer.list_topics(timeout=10).topics
        return {t: sum(consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
                       for p in meta[t].partitions) if t in meta else 0 for t in topics}
    except KafkaException:  # a partition just created, a leader just moved: ask again
        return dict.fromkeys(topics, 0)
    finally:
        consumer.close()


def group_lag(client: dict[str, Any], topics: Sequence[str], group: str = "crm-erp-sync") -> int | None:
    """Records of ``topics`` the consumer group has not committed yet (None while the broker cannot say)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({**client, "group.id": group, "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(timeout=10).topics
        parts = [TopicPartition(t, p) for t in topics if t in meta for p in meta[t].partitions]
        lag = 0
        for tp in consumer.committed(parts, timeout=10):
            high = consumer.get_watermark_offsets(tp, timeout=10)[1]
            lag += high - max(tp.offset, 0)
        return lag
    except KafkaException:  # a rebalance or a leader moving: ask again
        return None
    finally:
        consumer.close()


def wait_for_capture(harness: Harness, topics: Sequence[str] = ("crm.public.accounts", "erp.public.customers"),
                     timeout: float = 120) -> None:
    """Wait until capture has written to each topic (its snapshot began)."""
    wait_for(lambda: all(end_offsets(harness.client_config(), topics).values()), timeout, 0.5,
             f"capture into {', '.join(topics)} (see {harness.root / 'capture.log'})")


class TopicReader:
    """Reads topics from the start (no consumer group) and decodes with the official deserializer.

    A batch record (``streams.batching``) is read as its items, each with its index as ``item``.
    """

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

    def _decode(self, topic: str | None, raw: bytes | None, value: bool) -> Any:
        from confluent_kafka.serialization import MessageField, SerializationContext

        if raw is None or not self.decode or raw[:1] != b"\x00":
            return raw  # not Confluent wire format (e.g. a plain-text key)
        field = MessageField.VALUE if value else MessageField.KEY
        return self.deserializer(raw, SerializationContext(topic or "", field))

    def _items(self, msg: Any) -> list[tuple[bytes | None, bytes | None, int]]:
        """``(key, value, item)`` of each record ``msg`` carries."""
        from streams.batching import is_batch

        if not is_batch(msg.headers()):
            return [(msg.key(), msg.value(), 0)]
        batch = self.deserializer(msg.value(), None)  # the envelope, even when the items stay bytes
        return [(k, v, n) for n, (k, v) in enumerate(zip(batch["keys"], batch["values"], strict=True))]

    def poll(self, seconds: float = 0.5) -> int:
        """Read what arrives within ``seconds``; how many records were added."""
        added = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            batch = self.consumer.consume(10000, timeout=0.1)
            for msg in batch:
                if msg.error():
                    continue
                for key, value, item in self._items(msg):
                    self.records.append({"topic": msg.topic(), "partition": msg.partition(),
                                         "offset": msg.offset(), "item": item,
                                         "key": self._decode(msg.topic(), key, False),
                                         "value": self._decode(msg.topic(), value, True),
                                         "timestamp": msg.timestamp()[1]})
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
    """Records in the topics, counted by reading them."""
    reader = TopicReader(harness.bootstrap, harness.registry_url, topics, decode=False)
    try:
        while reader.poll(1.0):
            pass
        return len(reader.records)
    finally:
        reader.close()


@contextmanager
def scratch_harness(name: str, failed: Callable[[], bool] = nothing_failed, **options: Any) -> Iterator[Harness]:
    """A started :class:`Harness` (``options``) in its own scratch folder under /tmp.

    Stopped on exit, also when starting it failed half-way; the folder is removed then unless the
    block raised or ``failed()`` (see :mod:`streams.local.scratch`).
    """
    with scratch_dir(name, failed) as root:
        h = Harness(root, **options)
        try:
            yield h.start()
        finally:
            h.stop()


@contextmanager
def live_stack(name: str, worker: bool = True, least_privilege: bool | None = None,
               failed: Callable[[], bool] = nothing_failed, **config: Any) -> Iterator[Harness]:
    """A test module's own stack (:func:`scratch_harness`).

    Services, capture running and (unless ``worker`` is False) a worker with the identity bootstrap
    done; ``config`` goes to :meth:`Harness.write_config`.
    """
    with scratch_harness(name, failed, least_privilege=least_privilege) as h:
        if config:
            h.write_config(**config)
        with running(h.spawn("capture")):
            wait_for_capture(h)
            if not worker:
                yield h
                return
            with running(h.spawn("worker", log_name="worker.log")):
                wait_for_identity(h)
                yield h
