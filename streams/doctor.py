"""``crm-erp-sync doctor``: a deployment checked before its first start, one line per check with the fix.

Read-only: it connects to each database, the broker, the registry and Kafka Connect with the
configured logins and asks what they have; it changes nothing. What it checks comes from the
configuration itself: the captured tables are those the profiles and document profiles map or
watch, the columns the sync writes are the mapped ones of each side, the tables it inserts into are
those its create rules write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from streams.access import Access, needs, quoted
from streams.apply.sql import PROGRESS_TABLES
from streams.errors import SyncError
from streams.settings import Settings, production_warnings

Status = Literal["ok", "warn", "FAIL"]


@dataclass(frozen=True)
class Check:
    """One finding: its status, what was checked, what was found and, unless ok, the fix."""

    status: Status
    what: str
    found: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4} {self.what}: {self.found}"
        return f"{text} (fix: {self.fix})" if self.fix and self.status != "ok" else text


def source_checks(settings: Settings, system: str, access: Access, connector: dict[str, Any]) -> Iterator[Check]:
    """A source database: logical decoding, slots, WAL bound, the login's rights, each captured table."""
    db = settings.database(system)
    try:
        conn = psycopg.connect(**{**db.conninfo(), "connect_timeout": 5}, autocommit=True)
    except psycopg.Error as exc:
        yield Check("FAIL", f"{system} database", f"cannot connect to {db.where()}: {_first(exc)}",
                    f"check {system}.host / port / user / password and that the server accepts this login")
        return
    with conn:
        yield Check("ok", f"{system} database", f"reachable ({db.where()})")
        yield from _wal(conn, system, connector)
        if settings.capture.mode == "embedded":  # else Kafka Connect streams with the connector's own login
            replication = _may(conn, "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user")
            yield (Check("ok", f"{system} login {db.user}", "may stream changes (REPLICATION)") if replication else
                   Check("FAIL", f"{system} login {db.user}", "lacks REPLICATION",
                         f"ALTER ROLE {db.user} REPLICATION (or give capture a login that has it)"))
        yield from _publication(conn, system, access, connector)
        for table in sorted(access.captured):
            yield from _table(conn, system, table, access)
        meta = conn.execute("SELECT to_regnamespace('sync_meta') IS NOT NULL,"
                            " has_database_privilege(current_database(), 'CREATE')").fetchone()
        if meta and not (meta[0] or meta[1]):
            yield Check("FAIL", f"{system} schema sync_meta", "missing, and the login may not create it",
                        f"run `crm-erp-sync roles {system}` as the database owner, or GRANT CREATE ON DATABASE")
        elif meta and meta[0]:
            missing = [str(r[0]) for r in conn.execute(
                "SELECT t FROM unnest(%s::text[]) AS t WHERE NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n"
                " ON n.oid = c.relnamespace WHERE n.nspname || '.' || c.relname = t)", (list(PROGRESS_TABLES),))]
            if missing and not _may(conn, "SELECT has_schema_privilege('sync_meta', 'CREATE')"):
                yield Check("FAIL", f"{system} schema sync_meta", f"{', '.join(missing)} missing (new in this"
                            " version), and the login may not create them",
                            f"run `crm-erp-sync roles {system}` again as the database owner")


def _wal(conn: psycopg.Connection[Any], system: str, connector: dict[str, Any]) -> Iterator[Check]:
    settings = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN"
                                 " ('wal_level', 'max_replication_slots', 'max_slot_wal_keep_size')").fetchall())
    wal = settings.get("wal_level")
    yield (Check("ok", f"{system} wal_level", "logical") if wal == "logical" else
           Check("FAIL", f"{system} wal_level", f"{wal}: change-data-capture needs logical",
                 "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL"))
    slot = connector.get("slot.name", "")
    used, ours = conn.execute("SELECT count(*), count(*) FILTER (WHERE slot_name = %s) FROM pg_replication_slots",
                              (slot,)).fetchone() or (0, 0)
    free = int(settings.get("max_replication_slots", 0)) - int(used)
    if ours:
        yield Check("ok", f"{system} replication slot", f"{slot} exists")
    elif free > 0:
        yield Check("ok", f"{system} replication slot", f"{free} free for {slot}")
    else:
        yield Check("FAIL", f"{system} replication slot", f"no free slot for {slot} ({used} used)",
                    "raise max_replication_slots (restart) or drop an unused slot")
    keep = settings.get("max_slot_wal_keep_size")
    yield (Check("warn", f"{system} max_slot_wal_keep_size", "unlimited: a capture outage can fill the disk",
                 "ALTER SYSTEM SET max_slot_wal_keep_size = '4GB'; SELECT pg_reload_conf()") if keep == "-1" else
           Check("ok", f"{system} max_slot_wal_keep_size", f"{keep} MB"))


def _publication(conn: psycopg.Connection[Any], system: str, access: Access,
                 connector: dict[str, Any]) -> Iterator[Check]:
    name = connector.get("publication.name", "")
    rows = conn.execute("SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s",
                        (name,)).fetchall()
    exists = conn.execute("SELECT count(*) FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
    if exists and exists[0]:
        missing = sorted(access.captured - {r[0] for r in rows})
        yield (Check("ok", f"{system} publication {name}", f"{len(rows)} tables, every captured one")
               if not missing else
               Check("FAIL", f"{system} publication {name}", f"lacks {', '.join(missing)}",
                     f"ALTER PUBLICATION {name} ADD TABLE {', '.join(quoted(t) for t in missing)}"))
        return
    if connector.get("publication.autocreate.mode", "all_tables") == "disabled":
        yield Check("FAIL", f"{system} publication {name}", "missing, and the connector does not create it",
                    f"run `crm-erp-sync roles {system}` as the owner (it creates the publication)")
        return
    owned = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname || '.' || tablename = ANY(%s)"
                         " AND pg_has_role(current_user, tableowner, 'USAGE')", (sorted(access.captured),)).fetchone()
    if owned and owned[0] == len(access.captured):
        yield Check("ok", f"{system} publication {name}", "created by the connector at its first start")
    else:
        yield Check("FAIL", f"{system} publication {name}", "missing, and the login does not own every captured"
                    " table (only an owner may add it to a publication)",
                    f"run `crm-erp-sync roles {system}` as the owner")


def _may(conn: psycopg.Connection[Any], query: str, *params: Any) -> bool:
    row = conn.execute(query, params).fetchone()
    return bool(row and row[0])


def _table(conn: psycopg.Connection[Any], system: str, table: str, access: Access) -> Iterator[Check]:
    what = f"{system} table {table}"
    row = conn.execute("SELECT c.relreplident, has_table_privilege(c.oid, 'SELECT') FROM pg_class c"
                       " WHERE c.oid = to_regclass(%s)", (quoted(table),)).fetchone()
    if row is None:
        yield Check("FAIL", what, "does not exist", "check the profile's table names, or the login's search rights")
        return
    identity, readable = row
    problems, fixes = [], []
    if identity != "f":
        problems.append("replica identity not FULL (updates lose unchanged values, deletes their before image)")
        fixes.append(f"ALTER TABLE {quoted(table)} REPLICA IDENTITY FULL")
    if not readable:
        problems.append("not readable by the login")
        fixes.append(f"GRANT SELECT ON {quoted(table)} TO <login>")
    columns = sorted(access.updates.get(table, set()))
    if columns:
        denied = [c for c in columns if not _may(
            conn, "SELECT has_column_privilege(to_regclass(%s), %s, 'UPDATE')", quoted(table), c)]
        if denied:
            problems.append(f"may not update {', '.join(denied)}")
            fixes.append(f"GRANT UPDATE ({', '.join(denied)}) ON {quoted(table)} TO <applier login>")
    if table in access.inserts and not _may(conn, "SELECT has_table_privilege(to_regclass(%s), 'INSERT')",
                                            quoted(table)):
        problems.append("may not insert (a create rule writes here)")
        fixes.append(f"GRANT INSERT ON {quoted(table)} TO <applier login>")
    if problems:
        yield Check("FAIL", what, "; ".join(problems), "; ".join(fixes))
    else:
        writes = f", updates {len(columns)} columns" if columns else ""
        inserts = ", inserts" if table in access.inserts else ""
        yield Check("ok", what, f"captured (replica identity full){writes}{inserts}")


def store_checks(settings: Settings) -> Iterator[Check]:
    db = settings.store
    try:
        with psycopg.connect(**{**db.conninfo(), "connect_timeout": 5}, autocommit=True) as conn:
            row = conn.execute("SELECT to_regnamespace('sync') IS NOT NULL,"
                               " has_database_privilege(current_database(), 'CREATE')").fetchone()
    except psycopg.Error as exc:
        yield Check("FAIL", "store database", f"cannot connect to {db.where()}: {_first(exc)}",
                    "check store.host / port / user / password")
        return
    yield Check("ok", "store database", f"reachable ({db.where()})")
    if row and not (row[0] or row[1]):
        yield Check("FAIL", "store schema sync", "missing, and the login may not create it",
                    "GRANT CREATE ON DATABASE to the store login, or run `crm-erp-sync roles store`")


def broker_checks(settings: Settings) -> Iterator[Check]:
    from streams.topics import admin_client, describe, planned

    try:
        states = describe(admin_client(settings.kafka), timeout=10.0)
    except SyncError as exc:
        yield Check("FAIL", "kafka", exc.message, exc.hint or "check kafka.bootstrap_servers and the login")
        return
    yield Check("ok", "kafka", f"reachable ({settings.kafka.bootstrap_servers})")
    for warning in production_warnings(settings):
        yield Check("warn", "kafka settings", warning, "kafka.replication_factor: 3, kafka.min_insync_replicas: 2")
    rf = settings.kafka.replication_factor
    for spec in planned(settings):
        state = states.get(spec.name)
        what = f"topic {spec.name}"
        if state is None:
            yield Check("ok", what, "not there yet: the sync creates it with its settings at first start")
        elif state.leaderless:
            yield Check("FAIL", what, f"{state.leaderless} partitions without a leader",
                        "bring their brokers back (kafka-topics --describe --unavailable-partitions)")
        elif state.replication_factor < rf:
            yield Check("warn", what, f"replication {state.replication_factor}, settings say {rf}",
                        "kafka-reassign-partitions to add replicas")
        elif state.min_isr < state.replication_factor:
            yield Check("warn", what, f"under-replicated: {state.min_isr} of {state.replication_factor} replicas"
                        " in sync", "check the brokers that fell behind")
        elif state.partitions < spec.partitions:
            yield Check("warn", what, f"{state.partitions} partitions, settings say {spec.partitions}",
                        "kafka-topics --alter --partitions (keys move: before the first start)")
        else:
            yield Check("ok", what, f"{state.partitions} partitions, replication {state.replication_factor}")


def registry_checks(settings: Settings) -> Iterator[Check]:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    try:
        level = SchemaRegistryClient(settings.registry.client_config()).get_compatibility()
    except Exception as exc:  # the client raises its own and requests' errors: one line, never a traceback
        yield Check("FAIL", "schema registry", f"{settings.registry.url}: {_first(exc)}",
                    "check registry.url and registry.basic_auth_user_info")
        return
    yield Check("ok", "schema registry", f"reachable ({settings.registry.url})")
    yield (Check("ok", "registry compatibility", str(level)) if str(level) in ("BACKWARD", "BACKWARD_TRANSITIVE",
                                                                               "FULL", "FULL_TRANSITIVE")
           else Check("warn", "registry compatibility", f"{level}: a schema change could break readers",
                      "PUT /config {\"compatibility\": \"BACKWARD\"}"))


def connect_checks(settings: Settings, connectors: Mapping[str, dict[str, Any]]) -> Iterator[Check]:
    from streams.capture.connect import ConnectClient, root_cause

    if settings.capture.mode != "connect":
        return
    client = ConnectClient(settings.capture.connect_url, timeout=5.0)
    for source, connector in connectors.items():
        name, what = connector["name"], f"connector {connector['name']}"
        try:
            state = client.status(name)
        except SyncError as exc:
            yield Check("FAIL", what, exc.message, exc.hint or "check capture.connect_url")
            continue
        if state is None:
            yield Check("ok", what, f"not deployed yet (`crm-erp-sync capture` deploys {source}-postgres.json)")
            continue
        tasks = state.get("tasks", [])
        failed = [t for t in tasks if t.get("state") == "FAILED"]
        running = state.get("connector", {}).get("state")
        if failed or running == "FAILED":
            trace = failed[0].get("trace") if failed else state["connector"].get("trace")
            yield Check("FAIL", what, root_cause(trace), "fix the cause; `crm-erp-sync capture` restarts the task")
        else:
            yield Check("ok", what, f"{running}, tasks {[t.get('state') for t in tasks]}")


def doctor(settings: Settings) -> list[Check]:
    """Every check, in order: sources, store, broker, registry, Kafka Connect."""
    from streams.capture.connector import load_connector

    connectors: dict[str, dict[str, Any]] = {s: load_connector(settings.capture.connectors_dir / f"{s}-postgres.json")
                  for s in settings.capture.sources}
    access = needs(settings)
    steps: list[Callable[[], Iterator[Check]]] = [
        *(lambda s=s: source_checks(settings, s, access[s], connectors[s]["config"]) for s in settings.capture.sources),
        lambda: store_checks(settings), lambda: broker_checks(settings), lambda: registry_checks(settings),
        lambda: connect_checks(settings, connectors)]
    return [check for step in steps for check in step()]


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
