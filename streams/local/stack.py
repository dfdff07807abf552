"""``crm-erp-sync up``: the embedded stack, started in order, supervised, stopped cleanly."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from streams.errors import PreflightError, SyncError
from streams.local import jars, prometheus, seed
from streams.local.connect import ConnectWorker, worker_env
from streams.local.java import java_binary
from streams.local.kafka import KafkaNode, cluster_id_of
from streams.local.ports import ensure_port_free, http_ok, wait_listening
from streams.local.postgres import LocalPostgres, find_pg_bin
from streams.local.supervisor import Child
from streams.settings import LOCAL_PASSWORD_FILE, Settings

log = logging.getLogger(__name__)


def local_postgres(settings: Settings) -> LocalPostgres:
    """The embedded cluster described by ``settings.local``."""
    state = settings.local.state_dir
    return LocalPostgres(
        data_dir=state / "pg" / "data",
        port=settings.local.postgres_port,
        bin_dir=find_pg_bin(settings.local.pg_bin_dir),
        password_file=state / LOCAL_PASSWORD_FILE,
        databases=local_databases(settings),
    )


def local_databases(settings: Settings) -> tuple[str, ...]:
    """The configured databases that live on the embedded cluster (each created there when missing)."""
    names = [settings.database(s).dbname for s in ("crm", "erp", "store")
             if settings.database(s).port == settings.local.postgres_port
             and settings.database(s).host in ("127.0.0.1", "localhost")]
    return tuple(dict.fromkeys(names))


def local_kafka(settings: Settings) -> KafkaNode:
    """The embedded single-node Kafka (KRaft) described by ``settings.local``; its data stays under the state dir."""
    local = settings.local
    return KafkaNode(1, local.state_dir / "kafka", local.broker_port, local.controller_port,
                     f"1@127.0.0.1:{local.controller_port}", heap=local.broker_heap, jar_cache=local.jar_cache)


def local_connect(settings: Settings) -> ConnectWorker:
    """The embedded Kafka Connect worker (``capture.mode: connect``)."""
    local = settings.local
    return ConnectWorker(local.state_dir / "connect", settings.kafka.bootstrap_servers, local.connect_port,
                         heap=local.connect_heap)


def registry_ready(url: str) -> bool:
    """True when the registry answers ``GET /subjects``."""
    return http_ok(f"{url}/subjects")


def seed_demo(settings: Settings) -> dict[str, str]:
    """Create the demo schemas and rows once; what happened to each database (for the console)."""
    erp = settings.local.erp_demo
    data = seed.demo_data(settings.local.seed_accounts, erp) if settings.local.seed else None
    done: dict[str, str] = {}
    for system in ("crm", "erp"):
        with psycopg.connect(**settings.database(system).conninfo()) as conn:
            done[system] = seed.install(conn, system, getattr(data, system) if data else None,
                                        erp if system == "erp" else None)
    return done


def pid_file(settings: Settings) -> Path:
    """Where a running ``up`` records its pid."""
    return settings.local.state_dir / "up.pid"


def running_pid(settings: Settings) -> int | None:
    """The pid of a running ``up`` for this state dir, if any."""
    path = pid_file(settings)
    try:
        pid = int(path.read_text(encoding="utf-8").strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


class Stack:
    """Everything ``up`` runs, in start order."""

    def __init__(self, settings: Settings, config: Path | None) -> None:
        self.settings = settings
        self.config = config
        self.logs = settings.local.state_dir / "logs"
        self.stopping = False
        self.pg: LocalPostgres | None = None
        self.children: list[Child] = []

    def _cli(self, *args: str) -> list[str]:
        argv = [sys.executable, "-m", "streams"]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        return [*argv, *args]

    def _build_children(self) -> None:
        s = self.settings
        def serving(port: int) -> Any:
            """Ready once it serves its metrics (the worker: after its profile and store checks)."""
            return (lambda: wait_listening(port, 0.2)) if port else (lambda: True)

        capture = Child("capture", self._cli("capture"), self.logs / "capture.log",
                        ready=serving(s.capture.metrics_port), ready_timeout=60)
        worker = Child("worker", self._cli("worker"), self.logs / "worker.log",
                       ready=serving(s.processors.metrics_port), ready_timeout=60)
        if s.local.enabled:
            java = java_binary(s.capture.java_home)  # checked before anything started
            node = local_kafka(s)
            node.prepare(java, cluster_id_of(node.folder))
            broker = Child("kafka", node.argv(java), self.logs / "kafka.log",
                           ready=lambda: wait_listening(s.local.broker_port, 0.2), ready_timeout=90)
            registry = Child(
                "registry", self._cli("registry"), self.logs / "registry.log",
                ready=lambda: registry_ready(s.registry.url),
            )
            self.children += [broker, registry]
            if s.capture.mode == "connect":
                connect = local_connect(s)
                connect.prepare(s.local.jar_cache)
                self.children.append(Child(
                    "connect", connect.argv(java, s.local.jar_cache), self.logs / "connect.log",
                    ready=lambda: http_ok(f"{s.capture.connect_url}/connectors"), ready_timeout=120,
                    env=worker_env(s)))
        self.children += [capture, worker]
        if s.local.enabled and s.local.prometheus:
            self.children.append(Child(
                "prometheus", prometheus.argv(s, prometheus.prepare(s)), self.logs / "prometheus.log",
                ready=lambda: prometheus.ready(s),
            ))

    def start(self) -> None:
        """Start every part in order; raise a one-line error if one does not come up."""
        s = self.settings
        s.local.state_dir.mkdir(parents=True, exist_ok=True)
        if s.local.enabled:
            ports = {"local.broker_port": s.local.broker_port, "local.controller_port": s.local.controller_port,
                     "local.registry_port": s.local.registry_port,
                     "capture.metrics_port": s.capture.metrics_port,
                     "processors.metrics_port": s.processors.metrics_port}
            if s.capture.mode == "connect":
                ports["local.connect_port"] = s.local.connect_port
            if s.local.prometheus:
                ports["local.prometheus_port"] = s.local.prometheus_port
                prometheus.binary()  # fail before starting anything when it is missing
            for key, port in ports.items():
                if port:
                    ensure_port_free(port, key)
            java_binary(s.capture.java_home)  # Kafka (and Kafka Connect) run in a JVM: fail before starting anything
            jars.ensure(jars.KAFKA, s.local.jar_cache)  # fetched once; a missing Maven fails here, first
            if s.capture.mode == "connect":
                jars.ensure(jars.CONNECT, s.local.jar_cache)
                jars.ensure(jars.DEBEZIUM_POSTGRES, s.local.jar_cache)
            self.pg = local_postgres(s)
            print(f"starting PostgreSQL on 127.0.0.1:{s.local.postgres_port} ...", flush=True)
            self.pg.start()
            seeded = seed_demo(s)
            for system, what in seeded.items():
                print(f"  {system} ({s.database(system).dbname}): {what}", flush=True)
        self._build_children()
        for child in self.children:
            print(f"starting {child.name} ...", flush=True)
            child.start()
            if not child.wait_ready():
                detail = child.last_log_line()
                self.stop()
                raise PreflightError(f"{child.name} did not start: {detail or 'no output'}",
                                     hint=f"see {child.log_file}")

    def describe(self) -> str:
        """What runs where, for the terminal."""
        s = self.settings
        rows = [
            ("CRM database", f"postgresql://{s.crm.where()}"),
            ("ERP database", f"postgresql://{s.erp.where()}"),
            ("sync store", f"postgresql://{s.store.where()}"),
            ("broker", s.kafka.bootstrap_servers + (f"  (Apache Kafka {jars.KAFKA_VERSION}, KRaft, data in"
                                                    f" {s.local.state_dir / 'kafka'})" if s.local.enabled else "")),
            ("schema registry", s.registry.url),
            ("capture", ", ".join(f"{x} -> {x}.public.* (Avro)" for x in s.capture.sources)
             + (f"; Debezium {jars.DEBEZIUM_VERSION} in Kafka Connect {s.capture.connect_url}"
                if s.capture.mode == "connect" else "; Debezium embedded engine")),
            ("processors",
             f"Faust worker, profiles {', '.join(p.name for p in s.processors.profiles)};"
             + (f" documents {', '.join(p.name for p in s.processors.documents)};" if s.processors.documents else "")
             + " conflicts: crm-erp-sync conflicts list"),
        ]
        if s.local.enabled and s.local.prometheus:
            rows.append(("metrics", f"Prometheus {prometheus.url(s)} (alerts: monitoring/prometheus/alerts.yml);"
                                    " dashboards: monitoring/grafana"))
        lines = [f"crm-erp-sync is up. State: {s.local.state_dir}  Logs: {self.logs}"]
        lines += [f"  {name:<16} {where}" for name, where in rows]
        if s.local.enabled:
            lines.append(f"  database password: {s.local.state_dir / LOCAL_PASSWORD_FILE}")
        lines.append("Ctrl-C (or `crm-erp-sync down`) stops everything.")
        return "\n".join(lines)

    def supervise(self) -> None:
        """Restart what dies until a signal asks to stop."""
        while not self.stopping:
            for child in self.children:
                if child.maybe_restart():
                    print(f"restarted {child.name} (restart #{child.restarts})", flush=True)
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop children in reverse order, then PostgreSQL."""
        self.stopping = True
        for child in reversed(self.children):
            child.stop()
        if self.pg is not None:
            self.pg.stop()


def up(settings: Settings, config: Path | None) -> int:
    """Run the stack in the foreground until Ctrl-C / SIGTERM."""
    pid = running_pid(settings)
    if pid is not None:
        raise SyncError(f"crm-erp-sync is already running (pid {pid}) with state in {settings.local.state_dir}",
                        hint="run `crm-erp-sync down` first, or use another local.state_dir")
    stack = Stack(settings, config)

    def on_signal(signum: int, _frame: Any) -> None:
        stack.stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    settings.local.state_dir.mkdir(parents=True, exist_ok=True)
    pid_file(settings).write_text(str(os.getpid()), encoding="utf-8")
    try:
        stack.start()
        print(stack.describe(), flush=True)
        stack.supervise()
        print("stopping ...", flush=True)
    finally:
        stack.stop()
        pid_file(settings).unlink(missing_ok=True)
    print("stopped.", flush=True)
    return 0


def down(settings: Settings, timeout: float = 120.0) -> int:
    """Stop a running ``up`` (or a PostgreSQL left behind by a crashed one)."""
    pid = running_pid(settings)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        # `up` removes its pid file as its last act (a dead process may linger as a zombie).
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_file(settings).exists() or running_pid(settings) is None:
                print("stopped.")
                return 0
            time.sleep(0.2)
        raise SyncError(f"crm-erp-sync (pid {pid}) did not stop within {timeout:.0f}s",
                        hint=f"see the logs in {settings.local.state_dir / 'logs'}")
    if settings.local.enabled:
        pg = local_postgres(settings)
        if pg.running():
            pg.stop()
            print("stopped a PostgreSQL left running.")
            return 0
    print("nothing is running.")
    return 0
