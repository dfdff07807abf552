r"""Least-privilege SQL for a deployment, rendered from the profiles: what a DBA runs once per database.

``crm-erp-sync roles crm`` (``erp``, ``store``) prints a script for that database, to run as the
owner of its tables (``psql -v ON_ERROR_STOP=1 -f``); ``deploy/sql/`` holds the demo's. For a
source database it makes:

* ``crm_erp_sync_capture`` (LOGIN REPLICATION): reads the captured tables only, keeps the
  heartbeat, writes an incremental snapshot's watermarks among the signals; the publication
  ``crm_erp_sync_<system>`` is created here with exactly the captured tables, and
  :func:`capture_connector` (``roles crm --connector``) is the connector that streams it as it is;
* ``crm_erp_sync_apply`` (LOGIN): reads the tables the sync reads, updates only the mapped columns,
  inserts only into the tables create rules write (with their sequences), and keeps the sync's
  bookkeeping in ``sync_meta`` — which this script creates, so the sync needs no DDL right there.

For the store it makes ``crm_erp_sync_store``, owner of schemas ``sync`` and ``registry``.
Passwords are never in the script: set them afterwards (``\\password crm_erp_sync_apply``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from streams.access import Access, needs, quoted
from streams.apply.sql import PROGRESS_DDL
from streams.capture.sources import CAPTURE_DDL
from streams.settings import Settings

CAPTURE, APPLY, STORE = "crm_erp_sync_capture", "crm_erp_sync_apply", "crm_erp_sync_store"
OWN_CAPTURED = ("sync_meta.heartbeat", "sync_meta.debezium_signal")  # captured beside the business tables


@dataclass(frozen=True)
class Script:
    """One database's script."""

    database: str
    text: str


def _role(name: str, options: str) -> str:
    return (f"DO $$ BEGIN CREATE ROLE {name} {options}; EXCEPTION WHEN duplicate_object THEN"
            f" ALTER ROLE {name} {options}; END $$;")


def source_script(system: str, access: Access, publication: str) -> str:
    """The script of one source database."""
    captured = sorted(access.captured)
    written = sorted(set(access.updates) | access.inserts)
    schemas = sorted({t.partition(".")[0] for t in [*captured, *written]})
    lines = [f"-- crm-erp-sync: least-privilege roles for the {system.upper()} database, rendered from the profiles",
             f"-- (crm-erp-sync roles {system}). Run as the owner of the captured tables, once and after every",
             "-- profile change; then set the passwords (\\password ...). Nothing else needs DDL rights.",
             "BEGIN;", _role(CAPTURE, "LOGIN REPLICATION"), _role(APPLY, "LOGIN"), "",
             "-- The sync's bookkeeping: heartbeat and signals (capture), progress, created records, its",
             "-- own transactions and the audit notes of its writes (appliers).", CAPTURE_DDL.strip(),
             PROGRESS_DDL.strip(), "",
             f"GRANT USAGE ON SCHEMA sync_meta, {', '.join(schemas)} TO {CAPTURE}, {APPLY};",
             f"GRANT SELECT, INSERT, UPDATE ON sync_meta.heartbeat TO {CAPTURE};",
             # Debezium writes the watermarks of an incremental snapshot (a resync) into the signal table
             f"GRANT SELECT, INSERT ON sync_meta.debezium_signal TO {CAPTURE};",
             f"GRANT SELECT, INSERT ON sync_meta.debezium_signal TO {APPLY};",
             f"GRANT SELECT, INSERT, UPDATE, DELETE ON sync_meta.applier_progress, sync_meta.created,"
             f" sync_meta.applied_tx TO {APPLY};",
             f"GRANT SELECT, INSERT, UPDATE, DELETE ON sync_meta.audit_outbox TO {APPLY};",  # UPDATE: taken FOR UPDATE
             f"GRANT USAGE ON SEQUENCE sync_meta.audit_outbox_id_seq TO {APPLY};", "",
             "-- Capture reads the captured tables, nothing else.",
             f"GRANT SELECT ON {', '.join(quoted(t) for t in captured)} TO {CAPTURE};",
             f"DO $$ BEGIN CREATE PUBLICATION {publication}; EXCEPTION WHEN duplicate_object THEN NULL; END $$;",
             f"ALTER PUBLICATION {publication} SET TABLE {', '.join(quoted(t) for t in [*captured, *OWN_CAPTURED])};",
             "",
             "-- The appliers read what the sync reads and write only what the profiles map.",
             f"GRANT SELECT ON {', '.join(quoted(t) for t in sorted(set(captured) | set(written)))} TO {APPLY};"]
    for table in sorted(access.updates):
        columns = sorted(access.updates[table])
        if columns:
            lines.append(f"GRANT UPDATE ({', '.join(columns)}) ON {quoted(table)} TO {APPLY};")
    if access.inserts:
        tables = sorted(access.inserts)
        lines += [f"GRANT INSERT ON {', '.join(quoted(t) for t in tables)} TO {APPLY};",
                  "-- and the sequences their column defaults draw from",
                  "DO $$ DECLARE s regclass; BEGIN",
                  "  FOR s IN SELECT DISTINCT d.refobjid::regclass FROM pg_depend d",
                  "    JOIN pg_attrdef a ON a.oid = d.objid JOIN pg_class c ON c.oid = d.refobjid AND c.relkind = 'S'",
                  "    WHERE d.classid = 'pg_attrdef'::regclass AND d.refclassid = 'pg_class'::regclass",
                  f"      AND a.adrelid = ANY (ARRAY[{', '.join(repr(quoted(t)) for t in tables)}]::regclass[])",
                  f"  LOOP EXECUTE format('GRANT USAGE ON SEQUENCE %s TO {APPLY}', s); END LOOP;",
                  "END $$;"]
    lines += [f"ALTER TABLE {quoted(t)} REPLICA IDENTITY FULL;" for t in captured]
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


def store_script() -> str:
    """The script of the sync store's database."""
    return "\n".join([
        "-- crm-erp-sync: the sync store's role (crm-erp-sync roles store). Run as the database owner, once;",
        "-- then set its password (\\password crm_erp_sync_store). The sync creates its tables in schema sync,",
        "-- and `crm-erp-sync registry` (when it is the schema registry) its own in schema registry.",
        "BEGIN;", _role(STORE, "LOGIN"),
        f"CREATE SCHEMA IF NOT EXISTS sync AUTHORIZATION {STORE};",
        f"CREATE SCHEMA IF NOT EXISTS registry AUTHORIZATION {STORE};",
        "COMMIT;"]) + "\n"


def render(settings: Settings, database: str) -> Script:
    """The script for ``crm``, ``erp`` or ``store``."""
    if database == "store":
        return Script(database, store_script())
    from streams.capture.connector import load_connector

    connector = load_connector(settings.capture.connectors_dir / f"{database}-postgres.json")
    publication = connector["config"].get("publication.name", f"crm_erp_sync_{database}")
    return Script(database, source_script(database, needs(settings)[database], publication))


def capture_connector(settings: Settings, source: str) -> dict[str, Any]:
    """``source``'s connector (Kafka Connect REST form) as the capture role runs it.

    The role owns no table and reads only the captured ones, so Debezium streams the publication
    the script made, as it is (``filtered`` would widen it to its table filter, which only an owner
    may do), and snapshots exactly the captured tables and the sync's own.
    """
    from streams.capture.connector import load_connector

    definition = load_connector(settings.capture.connectors_dir / f"{source}-postgres.json")
    tables = [*sorted(needs(settings)[source].captured), *OWN_CAPTURED]
    return {**definition, "config": {**definition["config"], "publication.autocreate.mode": "disabled",
                                     "table.include.list": ",".join(re.escape(t) for t in tables)}}
