"""Dry run (``sync.dry_run``) and ``crm-erp-sync plan``: what the first real run would write.

A dry-run worker runs the whole pipeline — capture's topics, identity, reconcile, documents — in
its own consumer group (``<processors.app_id>-dry-run``) and with its own copies of the state
that writes move forward (``sync.plan_entity_state``, ``sync.plan_documents``,
``sync.plan_conflicts``), so the real run later starts from the beginning as if the dry run had
never been. Nothing reaches either system: a command is recorded in ``sync.plan`` as "would
write" (one entry per system, record and field, holding the last value planned for it: what the
field converges to), a conflict as "would conflict", and canonical records are not published.
Identity decisions (links, review) are shared: they are the sync's bookkeeping, the same in both
runs.

What the plan cannot show: writes that would follow from the sync's own writes (a rollup of the
order the real run creates, say), since in a dry run those writes never happen; and values a field
passes through on the way (the real run may write a value that a later change in the same backlog
replaces, depending on the order it reads the two systems in).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

import psycopg

from streams.ddl import locked
from streams.topics import CONFLICTS

SHADOWED = ("entity_state", "documents", "conflicts")  # tables a dry run keeps its own copy of
DDL = """
CREATE TABLE IF NOT EXISTS sync.plan (
  id          bigserial PRIMARY KEY,
  planned_at  timestamptz NOT NULL DEFAULT now(),
  kind        text NOT NULL,   -- create | update | deactivation | resolution | conflict
  op          text NOT NULL,   -- set | create | document | row | conflict
  system      text NOT NULL,   -- '' for a conflict
  entity      text NOT NULL,
  global_id   text NOT NULL,
  key         text NOT NULL,
  field       text NOT NULL,
  value       jsonb,
  expect      jsonb,
  decided_by  text,
  cause_event text,
  digest      text NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS sync.plan_entity_state (LIKE sync.entity_state INCLUDING ALL);
CREATE TABLE IF NOT EXISTS sync.plan_documents (LIKE sync.documents INCLUDING ALL);
CREATE TABLE IF NOT EXISTS sync.plan_conflicts (LIKE sync.conflicts INCLUDING ALL);
"""
INSERT = ("INSERT INTO sync.plan (kind, op, system, entity, global_id, key, field, value, expect, decided_by,"
          " cause_event, digest) SELECT e->>'kind', e->>'op', e->>'system', e->>'entity', e->>'global_id', e->>'key',"
          " e->>'field', e->'value', e->'expect', e->>'decided_by', e->>'cause_event',"
          " md5(concat_ws('/', e->>'op', e->>'system', e->>'entity', e->>'global_id', e->>'field'))"
          " FROM jsonb_array_elements(%s) AS e ON CONFLICT (digest) DO UPDATE SET value = EXCLUDED.value,"
          " expect = EXCLUDED.expect, kind = EXCLUDED.kind, decided_by = EXCLUDED.decided_by,"
          " cause_event = EXCLUDED.cause_event, planned_at = now()")


def group_id(app_id: str, dry_run: bool) -> str:
    """The consumer group of a worker: a dry run has its own, so the real run later reads everything."""
    return f"{app_id}-dry-run" if dry_run else app_id


def shadowed(query: str) -> str:
    """A query of the sync store as a dry run runs it: on its own copies of the state tables."""
    for table in SHADOWED:  # a table name ends with a space in every query of the store
        query = query.replace(f"sync.{table} ", f"sync.plan_{table} ")
    return query


def entry(record: dict[str, Any]) -> dict[str, Any]:
    """A command (``command.avsc``) as what it would write."""
    op = record.get("op", "set")
    value = record["value_json"] if op == "set" else record["values_json"]
    kind = "create" if op in ("create", "document") else record.get("kind") or "update"
    return {"kind": kind, "op": op, "system": record["system"], "entity": record["entity"],
            "global_id": record["global_id"], "key": record["key"], "field": record["field"],
            "value": json.loads(value) if value else None,
            "expect": json.loads(record["expect_json"]) if op == "set" else None,
            "decided_by": record.get("decided_by"), "cause_event": record.get("cause_event")}


def conflict_entry(record: dict[str, Any]) -> dict[str, Any]:
    """A conflict (``conflict.avsc``) as what the real run would raise (settled by its policy, or waiting)."""
    settled = record["resolution"] is not None
    return {"kind": "resolution" if settled else "conflict", "op": "conflict", "system": "",
            "entity": record["entity"], "global_id": record["global_id"], "key": "", "field": record["field"],
            "value": {"crm": json.loads(record["crm_json"]), "erp": json.loads(record["erp_json"]),
                      "resolution": record["resolution"]},
            "expect": json.loads(record["base_json"]), "decided_by": f"policy:{record['policy']}" if settled else None,
            "cause_event": record["kind"]}


class PlanOutputs:
    """A dry run's outputs: commands and conflicts become plan entries, canonical records go nowhere."""

    def __init__(self, outputs: Any, conninfo: dict[str, Any], commands: set[str], canonical: set[str]) -> None:
        self.outputs = outputs
        self.conninfo = conninfo
        self.commands, self.canonical = commands, canonical
        self.conn: psycopg.Connection[Any] | None = None

    def _record(self, entries: list[dict[str, Any]]) -> None:
        from psycopg.types.json import Jsonb

        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(**self.conninfo, autocommit=True)
        self.conn.execute(INSERT, (Jsonb(entries),))

    async def send(self, records: Iterable[tuple[str, str, Any]]) -> int:
        """Record what would be written, send the rest (changes, dead letters); how many were handled."""
        sends, planned = [], []
        for topic, key, record in records:
            if topic in self.commands:
                planned.append(entry(record))
            elif topic == CONFLICTS:
                planned.append(conflict_entry(record))
            elif topic not in self.canonical:
                sends.append((topic, key, record))
        if planned:  # one entry per system, record and field: the last value planned for it
            last = {(e["op"], e["system"], e["entity"], e["global_id"], e["field"]): e for e in planned}
            await asyncio.to_thread(self._record, list(last.values()))
        return len(planned) + (await self.outputs.send(sends) if sends else 0)


def entries(conn: psycopg.Connection[Any], entity: str | None = None) -> list[dict[str, Any]]:
    """Every plan entry (of one entity), in the order planned."""
    cur = conn.execute("SELECT kind, op, system, entity, global_id, key, field, value, expect, decided_by,"
                       " cause_event FROM sync.plan WHERE %s::text IS NULL OR entity = %s ORDER BY id",
                       (entity, entity))
    names = [d.name for d in cur.description or []]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def summary(planned: list[dict[str, Any]]) -> list[str]:
    """The plan as lines: per entity, creates per system, writes per system and field, conflicts."""
    counts: Counter[tuple[str, str]] = Counter()
    for e in planned:
        if e["op"] == "conflict":
            what = "conflict settled by " + str(e["decided_by"]) if e["decided_by"] else "conflict waiting for a person"
            counts[(e["entity"], f"{what}: {e['field']}")] += 1
        elif e["kind"] == "create":
            counts[(e["entity"], f"create on {e['system']}" + (f" ({e['field']})" if e["field"] else ""))] += 1
        else:
            how = f" ({e['kind']}{', ' + e['decided_by'] if e['decided_by'] else ''})" if e["kind"] != "update" else ""
            counts[(e["entity"], f"write {e['system']}.{e['field']}{how}")] += 1
    return [f"{entity:<14} {n:>7}  {what}" for (entity, what), n in sorted(counts.items())] or ["nothing planned yet"]


def reset(conn: psycopg.Connection[Any]) -> None:
    """Forget a dry run: its plan and its copies of the state (the next dry run starts afresh)."""
    conn.execute("DROP TABLE IF EXISTS sync.plan, sync.plan_entity_state, sync.plan_documents, sync.plan_conflicts")
    locked(conn, DDL)
