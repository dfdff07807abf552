"""Apply command batches to one target database: one transaction per batch, progress inside it.

Replaying a topic from the start changes nothing: commands at or below the stored offset of their
partition are skipped, and every write is a compare-and-set that never writes an equal value. The
stored offset belongs to a topic incarnation (the topic's id): a topic deleted and created again
starts from nothing, its commands are not replays.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import psycopg
from psycopg import sql

from streams import faults
from streams.apply.audit import entry, note
from streams.apply.sql import (
    APPLIED_INSERT,
    APPLIED_PRUNE,
    CREATED_ANY,
    CREATED_INSERT,
    CREATED_LOOKUP,
    compare_and_set,
    insert_many,
    insert_recorded,
    insert_returning,
    progress_select,
    progress_upsert,
    set_row,
)
from streams.ddl import ensure_bookkeeping
from streams.documents.spec import CreateRule, DocumentProfile, RollupRule
from streams.errors import TerminalError, TransientError
from streams.mapping.profile import Profile, SourceSpec

log = logging.getLogger(__name__)
RENDERED = 4096  # statements an applier keeps rendered (one per entity, kind and column set)


@dataclass(frozen=True)
class Delivery:
    """One command as consumed: its position and decoded record."""

    topic: str
    partition: int
    offset: int
    command: dict[str, Any]
    incarnation: str = ""  # the topic's id: offsets of another incarnation are no replay
    item: int = 0  # its index in a batch record (``streams.batching``): all of one record go in one batch


@dataclass
class BatchResult:
    """What a batch did."""

    written: int = 0
    created: int = 0
    skipped: int = 0  # stale (the row changed) or already equal
    replayed: int = 0  # at or below the stored progress
    failed: list[tuple[Delivery, str]] = field(default_factory=list)
    written_cause_times: list[tuple[str, float]] = field(default_factory=list)  # (entity, unix s of the cause)
    audit: list[dict[str, Any]] = field(default_factory=list)  # a note per change made (``streams.apply.audit``)


class Applier:
    """Compare-and-set writer for one system, for the entities of every profile (commands name theirs)."""

    def __init__(self, profiles: Sequence[Profile], system: str, conninfo: dict[str, Any],
                 documents: DocumentProfile | None = None) -> None:
        self.profiles = {p.entity: p for p in profiles}
        self.rules = {r.name: r for r in documents.rules} if documents else {}
        self.system = system
        self.conninfo = {**conninfo, "application_name": f"crm-erp-sync apply {system}"}
        self.conn: psycopg.Connection[Any] | None = None
        self._pruned = time.monotonic()
        self._rendered: dict[tuple[Any, ...], bytes] = {}

    def _sql(self, shape: tuple[Any, ...], build: Callable[[], sql.Composable]) -> bytes:
        """A statement rendered once per shape (entity, kind, columns).

        psycopg renders a composed statement anew on every execute, but parses a query text once per
        text (rendering was ~8 % of a worker's CPU in an initial sync). The rest of a statement
        (table, key, stamps) comes from the entity's profile, fixed for the applier's life.
        """
        found = self._rendered.get(shape)
        if found is None:
            if len(self._rendered) >= RENDERED:
                self._rendered.clear()
            found = self._rendered[shape] = build().as_bytes(None)
        return found

    def _profile(self, cmd: dict[str, Any]) -> tuple[Profile, SourceSpec]:
        profile = self.profiles.get(cmd["entity"])
        if profile is None:
            raise TerminalError(f"no mapping profile for entity {cmd['entity']!r}")
        return profile, profile.sources[self.system]  # type: ignore[index]

    def connect(self) -> psycopg.Connection[Any]:
        """(Re)connect; a database that is down is a transient error."""
        if self.conn is None or self.conn.closed:
            try:
                self.conn = psycopg.connect(**self.conninfo)
                with self.conn.transaction():
                    ensure_bookkeeping(self.conn)
            except psycopg.OperationalError as exc:
                self.conn = None
                raise TransientError(f"{self.system} database unavailable: {exc}".strip()) from exc
        return self.conn

    def _params(self, cmd: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        name = cmd["field"]
        profile, source = self._profile(cmd)
        spec = profile.fields.get(name)
        side = spec.side(self.system) if spec else None
        if side is None or side.read_only:
            raise TerminalError(f"field {name!r} has no writable column on {self.system} in the profile")
        params: dict[str, Any] = {
            "key": cmd["key"],
            "value": side.converter.backward(json.loads(cmd["value_json"])),
            "expect": side.converter.backward(json.loads(cmd["expect_json"])),
        }
        row = json.loads(cmd["expect_row_json"])
        version = source.version.column if source.version and row is not None else None
        if version and source.version:
            params["expect_row"] = source.version.converter.backward(source.version.converter.forward(row))
        return self._sql((cmd["entity"], "set", name, version), lambda: compare_and_set(
            source.table, source.key, side.written, version, source.stamp)), params

    def _create_params(self, cmd: dict[str, Any]) -> tuple[Any, list[Any]]:
        """The statement inserting the entity's row and recording its global id, and its parameters."""
        profile, source = self._profile(cmd)
        values = json.loads(cmd["values_json"] or "{}")
        columns = {k: v for k, v in profile.to_columns(self.system, values).items() if v is not None}
        return (self._sql((cmd["entity"], "create", *columns), lambda: insert_recorded(
            source.table, list(columns), source.key, source.stamp, source.new_key)),
            [*columns.values(), cmd["entity"], cmd["global_id"]])

    def _create(self, conn: psycopg.Connection[Any], d: Delivery, result: BatchResult) -> None:
        """Insert the row unless this global id was created here before."""
        if conn.execute(CREATED_LOOKUP, (d.command["entity"], d.command["global_id"])).fetchone():
            return  # a replayed or repeated create: the row exists
        self._made(d, conn.execute(*self._create_params(d.command)), result)

    def _made(self, d: Delivery, cur: Any, result: BatchResult) -> None:
        """Count a row created (its cursor returns the new key) and note it."""
        _, source = self._profile(d.command)
        row = cur.fetchone()
        result.created += 1
        result.audit.append(entry(self.system, d.command, source.table, row[0], "", "", None,
                                  json.loads(d.command["values_json"] or "{}")))

    def _rule(self, cmd: dict[str, Any], kind: type[Any]) -> Any:
        rule = self.rules.get(cmd["field"])
        if not isinstance(rule, kind) or rule.target != self.system:
            raise TerminalError(f"no document rule {cmd['field']!r} writing to {self.system} in the profiles")
        return rule

    def _create_document(self, conn: psycopg.Connection[Any], d: Delivery, result: BatchResult) -> None:
        """Insert a document's header and lines unless this global id was created here before.

        A credit check, when the rule has one, runs here: against the target's receivables as they are
        in this transaction.
        """
        cmd = d.command
        if conn.execute(CREATED_LOOKUP, (cmd["entity"], cmd["global_id"])).fetchone():
            return  # a replayed or repeated create: the document exists
        rule: CreateRule = self._rule(cmd, CreateRule)
        spec, doc = rule.target_spec, json.loads(cmd["values_json"])
        header = dict(doc["header"])
        check = spec.credit_check
        if check is not None:
            found = conn.execute(check.query, {**header, "total": doc["total"]}).fetchone()
            if found is None:
                raise TerminalError(f"{rule.name}: the credit check found no row for {header}")
            header[check.column] = check.hold if found[0] else check.ok
        row = conn.execute(insert_returning(spec.table, list(header), spec.key, spec.stamp, spec.new_key),
                           list(header.values())).fetchone()
        assert row is not None
        if spec.lines is not None and doc["lines"]:
            lines = [{**line, spec.lines.parent: row[0], **({spec.lines.number: n} if spec.lines.number else {})}
                     for n, line in enumerate(doc["lines"], 1)]
            with conn.cursor() as cur:
                cur.executemany(insert_many(spec.lines.table, list(lines[0]), spec.lines.stamp),
                                [list(x.values()) for x in lines])
        conn.execute(CREATED_INSERT, (cmd["entity"], cmd["global_id"], str(row[0])))
        log.info("%s %s created as %s %s", rule.name, cmd["global_id"], self.system, row[0])
        result.created += 1
        result.audit.append(entry(self.system, cmd, spec.table, row[0], rule.name, "", None,
                                  {**doc, "header": header}))

    def _row_params(self, cmd: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """A rollup's values onto its row, unless it already holds them (the statement and its parameters)."""
        rule: RollupRule = self._rule(cmd, RollupRule)
        values = json.loads(cmd["values_json"])
        return (self._sql((rule.name, "row", *values), lambda: set_row(
            rule.target_table, rule.target_key, list(values), rule.stamp)), {**values, "__key": cmd["key"]})

    def _write_params(self, cmd: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        return self._row_params(cmd) if cmd.get("op") == "row" else self._params(cmd)

    def _written(self, d: Delivery, cur: Any, result: BatchResult) -> None:
        """Count a field or row write (or its skip: the row changed, or holds the value) and note what it changed."""
        cmd = d.command
        if cmd.get("op") == "row":  # the cursor returns the columns' old values when it wrote
            rule: RollupRule = self._rule(cmd, RollupRule)
            old, values = cur.fetchone(), json.loads(cmd["values_json"])
            notes = [] if old is None else [
                entry(self.system, cmd, rule.target_table, cmd["key"], rule.name, column, before, values[column], n)
                for n, (column, before) in enumerate(zip(values, old, strict=True))]
        elif cur.rowcount:
            profile, source = self._profile(cmd)
            side = profile.fields[cmd["field"]].side(self.system)
            assert side is not None
            notes = [entry(self.system, cmd, source.table, cmd["key"], cmd["field"], side.written,
                           json.loads(cmd["expect_json"]), json.loads(cmd["value_json"]))]
        else:
            notes = []
        if not notes:
            result.skipped += 1
            return
        result.written += 1
        result.audit += notes
        cause = cmd.get("cause_commit_time")
        if cause is not None:
            result.written_cause_times.append((cmd["entity"], cause.timestamp()))

    def _one(self, conn: psycopg.Connection[Any], d: Delivery, result: BatchResult) -> None:
        """One command in its own savepoint: a bad one is reported and does not sink the batch."""
        try:
            op = d.command.get("op", "set")
            with conn.transaction():
                if op in ("create", "document"):
                    (self._create if op == "create" else self._create_document)(conn, d, result)
                    return
                statement, params = self._write_params(d.command)
                self._written(d, conn.execute(statement, params), result)
        except TerminalError as exc:
            result.failed.append((d, exc.message))
            return
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as exc:
            detail = f" ({exc.diag.message_detail})" if exc.diag.message_detail else ""
            result.failed.append((d, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}{detail}"))

    def _pipelined(self, conn: psycopg.Connection[Any], group: list[Delivery], result: BatchResult,
                   params: Any) -> list[tuple[Delivery, Any]] | None:
        """Run ``params(command) -> (statement, parameters)`` for each command in one pipelined round trip.

        Each ``(delivery, cursor)``; None if a statement failed: then the group was rolled back to a
        savepoint and applied again one command at a time (finding the bad ones, keeping the rest).
        """
        planned = []
        for d in group:
            try:
                planned.append((d, *params(d.command)))
            except TerminalError as exc:
                result.failed.append((d, exc.message))
        try:
            with conn.transaction(), conn.pipeline():
                return [(d, conn.execute(statement, values)) for d, statement, values in planned]
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError):
            for d, _, _ in planned:
                self._one(conn, d, result)
            return None

    def _writes(self, conn: psycopg.Connection[Any], group: list[Delivery], result: BatchResult) -> None:
        """Field and row writes, pipelined."""
        for d, cur in self._pipelined(conn, group, result, self._write_params) or []:
            self._written(d, cur, result)

    def _creates(self, conn: psycopg.Connection[Any], group: list[Delivery], result: BatchResult) -> None:
        """Creates, pipelined: one lookup of the global ids created here before, then one insert each."""
        keys = [(d.command["entity"], d.command["global_id"]) for d in group]
        seen = {(r[0], r[1]) for r in conn.execute(CREATED_ANY, ([k[0] for k in keys], [k[1] for k in keys]))}
        todo = []
        for d, key in zip(group, keys, strict=True):
            if key not in seen:  # else a replayed or repeated create: the row exists
                seen.add(key)
                todo.append(d)
        for d, cur in self._pipelined(conn, todo, result, self._create_params) or []:  # None: _one counted them
            self._made(d, cur, result)

    def apply(self, batch: Sequence[Delivery]) -> BatchResult:
        """Apply a batch in one transaction (a failing command is reported, the rest still apply).

        Runs of writes and of creates go to the database pipelined (a round trip or two per run);
        documents are created one by one (each reads what it inserted).
        """
        result = BatchResult()
        conn = self.connect()
        if time.monotonic() - self._pruned > 3600:  # the record of its transactions, kept a day
            conn.execute(APPLIED_PRUNE)
            conn.commit()
            self._pruned = time.monotonic()
        try:
            with conn.transaction():
                done: dict[tuple[str, int], tuple[int, str]] = {}
                for topic in {d.topic for d in batch}:
                    partitions = sorted({d.partition for d in batch if d.topic == topic})
                    for partition, offset, incarnation in conn.execute(progress_select(),
                                                                       (topic, partitions)).fetchall():
                        done[(topic, partition)] = (offset, incarnation)
                last: dict[tuple[str, int], tuple[int, str]] = {}
                todo: list[Delivery] = []
                for d in batch:
                    offset, incarnation = done.get((d.topic, d.partition), (-1, d.incarnation))
                    if incarnation == d.incarnation and d.offset <= offset:
                        result.replayed += 1
                        continue
                    last[(d.topic, d.partition)] = (max(d.offset, last.get((d.topic, d.partition), (-1, ""))[0]),
                                                    d.incarnation)
                    todo.append(d)
                for op, group in groupby(todo, key=lambda d: str(d.command.get("op", "set"))):
                    if op in ("set", "row", "create"):
                        (self._creates if op == "create" else self._writes)(conn, list(group), result)
                    else:
                        for d in group:
                            self._one(conn, d, result)
                if result.written or result.created:  # its change events are the sync's echoes
                    conn.execute(APPLIED_INSERT)
                note(conn, result.audit)
                faults.point("apply.write")  # written, progress not yet recorded: all of it rolls back
                for (topic, partition), (offset, incarnation) in last.items():
                    conn.execute(progress_upsert(), (topic, partition, offset, incarnation))
        except psycopg.OperationalError as exc:
            self.conn = None
            raise TransientError(f"{self.system} database unavailable: {exc}".strip()) from exc
        return result
