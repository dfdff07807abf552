"""The audit trail in the sync store: who changed which field of which record, when, and why.

Entries come from the appliers' outboxes (``streams.apply.audit``), once each; ``crm-erp-sync
audit`` reads them back, newest last, filtered by record, system, field and time. Entries older
than ``audit.retention_days`` are deleted by the worker (and the topic ``sync.audit`` keeps them as
long).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg

DDL = """
CREATE TABLE IF NOT EXISTS sync.audit (
  audit_id          text PRIMARY KEY,     -- system/command id/n
  written_at        timestamptz NOT NULL,
  system            text NOT NULL,
  table_name        text NOT NULL,
  key               text NOT NULL,
  entity            text NOT NULL,
  global_id         text NOT NULL,
  field             text NOT NULL,
  column_name       text NOT NULL,
  old_value         jsonb,
  new_value         jsonb NOT NULL,
  kind              text NOT NULL,        -- create | update | deactivation | resolution
  decided_by        text,                 -- policy:<policy> | person:<name>
  command_id        text NOT NULL,
  cause_system      text,
  cause_tx_id       bigint,
  cause_lsn         bigint,
  cause_event       text NOT NULL,
  cause_commit_time timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_record ON sync.audit (global_id, written_at);
CREATE INDEX IF NOT EXISTS audit_by_time ON sync.audit (written_at);
"""
COLUMNS = ("audit_id", "written_at", "system", "table_name", "key", "entity", "global_id", "field", "column_name",
           "old_value", "new_value", "kind", "decided_by", "command_id", "cause_system", "cause_tx_id", "cause_lsn",
           "cause_event", "cause_commit_time")  # as INSERT and query name them
INSERT = ("INSERT INTO sync.audit (audit_id, written_at, system, table_name, key, entity, global_id, field,"
          " column_name, old_value, new_value, kind, decided_by, command_id, cause_system, cause_tx_id, cause_lsn,"
          " cause_event, cause_commit_time)"
          " SELECT e->>'audit_id', to_timestamp((e->>'written_at')::bigint / 1000.0), e->>'system', e->>'table',"
          " e->>'key', e->>'entity', e->>'global_id', e->>'field', e->>'column', (e->>'old_json')::jsonb,"
          " (e->>'new_json')::jsonb, e->>'kind', e->>'decided_by', e->>'command_id', e->>'cause_system',"
          " (e->>'cause_tx_id')::bigint, (e->>'cause_lsn')::bigint, e->>'cause_event',"
          " to_timestamp(coalesce((e->>'cause_commit_time')::bigint, 0) / 1000.0)"
          " FROM jsonb_array_elements(%s) AS e ON CONFLICT (audit_id) DO NOTHING")


def record(conn: psycopg.Connection[Any], entries: Sequence[dict[str, Any]]) -> int:
    """Add outbox entries (``streams.apply.audit.entry``) once each; how many were new."""
    from psycopg.types.json import Jsonb

    return conn.execute(INSERT, (Jsonb(list(entries)),)).rowcount if entries else 0


def prune(conn: psycopg.Connection[Any], retention_days: int) -> int:
    """Delete the entries older than the retention; how many."""
    return conn.execute("DELETE FROM sync.audit WHERE written_at < now() - make_interval(days => %s)",
                        (retention_days,)).rowcount


def query(conn: psycopg.Connection[Any], global_id: str | None = None, system: str | None = None,
          field: str | None = None, since: datetime | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """The entries matching every filter given, oldest first (the newest ``limit``)."""
    rows = conn.execute(
        "SELECT audit_id, written_at, system, table_name, key, entity, global_id, field, column_name, old_value,"
        " new_value, kind, decided_by, command_id, cause_system, cause_tx_id, cause_lsn, cause_event,"
        " cause_commit_time FROM (SELECT * FROM sync.audit"
        " WHERE (%(gid)s::text IS NULL OR global_id = %(gid)s) AND (%(system)s::text IS NULL OR system = %(system)s)"
        " AND (%(field)s::text IS NULL OR field = %(field)s OR column_name = %(field)s)"
        " AND (%(since)s::timestamptz IS NULL OR written_at >= %(since)s)"
        " ORDER BY written_at DESC, audit_id DESC LIMIT %(limit)s) AS newest ORDER BY written_at, audit_id",
        {"gid": global_id, "system": system, "field": field, "since": since, "limit": limit}).fetchall()
    return [dict(zip(COLUMNS, r, strict=True)) for r in rows]


def parse_since(text: str) -> datetime:
    """``--since``: an ISO date or time (UTC unless it says), or an age like ``90m``, ``36h``, ``7d``."""
    units = {"m": 60, "h": 3600, "d": 86400}
    if text[:-1].isdigit() and text[-1:] in units:
        return datetime.fromtimestamp(datetime.now(tz=UTC).timestamp() - int(text[:-1]) * units[text[-1]], tz=UTC)
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def line(e: dict[str, Any]) -> str:
    """One entry as a line of ``audit``'s table."""
    def shown(value: Any) -> str:
        return "-" if value is None else json.dumps(value, ensure_ascii=False)

    cause = e["cause_event"] if e["cause_system"] is None else (
        f"{e['cause_system']} tx {e['cause_tx_id']} lsn {e['cause_lsn']} ({e['cause_event']})")
    who = f" by {e['decided_by']}" if e["decided_by"] else ""
    target = f"{e['system']} {e['table_name']} {e['key']}" + (f" {e['column_name']}" if e["column_name"] else "")
    return (f"{e['written_at']:%Y-%m-%d %H:%M:%S} {e['kind']}{who}  {target}: {shown(e['old_value'])} -> "
            f"{shown(e['new_value'])}  [{e['entity']} {e['global_id']}; cause {cause}; command {e['command_id']}]")
