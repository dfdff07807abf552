"""A local PostgreSQL cluster under the state directory, made with ``initdb``.

PostgreSQL refuses to run as root, so when we are root the cluster belongs to (and runs as) the
``postgres`` system user. The cluster has ``wal_level=logical`` and a ``sync`` role that owns the
``crm``, ``erp`` and ``sync`` databases.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from streams.errors import PreflightError
from streams.local.ports import ensure_port_free

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SERVICE_USER = "postgres"
INSTALL_HINT = "install PostgreSQL 15+ server binaries (apt-get install postgresql) or set local.pg_bin_dir"

SERVER_SETTINGS = {
    "wal_level": "logical",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "wal_writer_delay": "10ms",
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "max_slot_wal_keep_size": "4GB",
    "timezone": "'UTC'",
    "unix_socket_directories": "''",
    "fsync": "on",
}


def find_pg_bin(configured: Path | None) -> Path:
    """The folder holding ``initdb``/``pg_ctl``: configured, on PATH, or the newest Debian one."""
    candidates: list[Path] = []
    if configured is not None:
        candidates.append(configured)
    else:
        on_path = shutil.which("pg_ctl")
        if on_path:
            candidates.append(Path(on_path).parent)
        candidates.extend(
            Path(p) for p in sorted(glob.glob(PG_BIN_GLOB), key=_major_version, reverse=True)
        )
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    where = str(configured) if configured else f"PATH or {PG_BIN_GLOB}"
    raise PreflightError(f"PostgreSQL server binaries (initdb, pg_ctl) not found in {where}", hint=INSTALL_HINT)


def _major_version(path: str) -> int:
    try:
        return int(Path(path).parent.name)
    except ValueError:
        return 0


@dataclass(frozen=True)
class LocalPostgres:
    """One local cluster: data dir, port, binaries and the login of the ``sync`` role."""

    data_dir: Path
    port: int
    bin_dir: Path
    password_file: Path
    role: str = "sync"
    databases: Sequence[str] = ("crm", "erp", "sync")

    @property
    def _as_root(self) -> bool:
        return os.geteuid() == 0

    def _run(self, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        if self._as_root:
            args = ["runuser", "-u", SERVICE_USER, "--", *args]
        return subprocess.run(args, check=check, capture_output=True, text=True)

    def _chown(self, path: Path) -> None:
        if self._as_root:
            entry = pwd.getpwnam(SERVICE_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _check_reachable(self) -> None:
        """As root, the ``postgres`` user must be able to reach the data dir's parents."""
        if not self._as_root:
            return
        probe = self._run(["test", "-x", str(self.data_dir.parent)], check=False)
        if probe.returncode != 0:
            raise PreflightError(
                f"the {SERVICE_USER} user cannot reach {self.data_dir.parent}",
                hint="set local.state_dir to a folder every user can traverse, e.g. under /tmp or /srv",
            )

    @property
    def initialised(self) -> bool:
        """True once ``initdb`` has run."""
        return (self.data_dir / "PG_VERSION").is_file()

    def initdb(self) -> None:
        """Create the cluster with a generated password for the ``sync`` role (first start only)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.data_dir)
        self.data_dir.chmod(0o700)
        self._check_reachable()
        if not self.password_file.exists():
            self.password_file.parent.mkdir(parents=True, exist_ok=True)
            self.password_file.write_text(secrets.token_urlsafe(24), encoding="utf-8")
            self.password_file.chmod(0o600)
        pwfile = self.data_dir.parent / ".initdb-pw"
        pwfile.write_text(self.password_file.read_text(encoding="utf-8"), encoding="utf-8")
        self._chown(pwfile)
        pwfile.chmod(0o600)
        try:
            result = self._run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D", str(self.data_dir),
                    "-U", self.role,
                    "--pwfile", str(pwfile),
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ],
                check=False,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise PreflightError(f"initdb failed in {self.data_dir}: {result.stderr.strip().splitlines()[-1:]}")
        conf = self.data_dir / "postgresql.auto.conf"
        lines = [f"{key} = {value}\n" for key, value in SERVER_SETTINGS.items()]
        with conf.open("a", encoding="utf-8") as handle:
            handle.writelines(lines)

    def running(self) -> bool:
        """True when ``pg_ctl status`` finds the server up."""
        if not self.initialised:
            return False
        status = self._run([str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.data_dir)], check=False)
        return status.returncode == 0

    def start(self) -> None:
        """Initialise if needed, start, and create the databases."""
        if not self.initialised:
            self.initdb()
        if not self.running():
            ensure_port_free(self.port, "local.postgres_port")
            log = self.data_dir.parent / "postgres.log"
            log.touch()
            self._chown(log)
            result = self._run(
                [
                    str(self.bin_dir / "pg_ctl"), "start", "-w", "-t", "60",
                    "-D", str(self.data_dir),
                    "-l", str(log),
                    "-o", f"-p {self.port}",
                ],
                check=False,
            )
            if result.returncode != 0:
                tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
                raise PreflightError(f"PostgreSQL did not start on port {self.port}: {' '.join(tail)}")
        self.create_databases()

    def stop(self) -> None:
        """Fast shutdown (rolls back open transactions, keeps data)."""
        if self.running():
            self._run([str(self.bin_dir / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.data_dir)])

    def conninfo(self, dbname: str) -> dict[str, object]:
        """Keyword arguments for ``psycopg.connect`` to one database of this cluster."""
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "dbname": dbname,
            "user": self.role,
            "password": self.password_file.read_text(encoding="utf-8").strip(),
        }

    def create_databases(self) -> None:
        """Create the missing databases (idempotent)."""
        with psycopg.connect(**self.conninfo("postgres"), autocommit=True) as conn:  # type: ignore[arg-type]
            existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
            for name in self.databases:
                if name not in existing:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
