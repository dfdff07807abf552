"""Document rules at work: a change names a document; the rule reads it whole and says what to send.

Blocking (database reads); the Faust agent runs it in a thread. Reads use one REPEATABLE READ,
read-only transaction per document, so a header and its lines come from one committed state: a
transaction that wrote an order and its lines is seen with all of them or not at all.

Policies (README, "Documents"):

- A created document is the target's from then on. A later edit of the source document (lines,
  amounts) or a reopened deal is not pushed: the document is marked ``diverged`` with the reason,
  for a person to settle on the target (``crm-erp-sync documents``).
- A ready document whose reference (the deal's account) has no target record yet is ``pending``
  with the reason, retried every few seconds and on every change, and goes through once linked.
- Invalid input (``positive``, ``allowed``, an empty reference) raises :class:`TerminalError`: the
  change goes to the dead-letter topic with the reason; a target refusing the document (an unknown
  sku) is a dead letter of the applier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from streams.apply.sql import CREATED_LOOKUP_NAMED, CREATED_OF_KEYS
from streams.documents.refs import References
from streams.documents.spec import CanonicalRule, CreateRule, DocumentProfile, RollupRule, Rule
from streams.errors import TerminalError, TransientError
from streams.mapping.profile import Profile
from streams.reconcile.records import document_command, personal_value
from streams.settings import Settings
from streams.store import Link, Store
from streams.topics import commands_topic, raw_topic

log = logging.getLogger(__name__)

Send = tuple[str, str, Any]  # (topic, key, record)


@dataclass(frozen=True)
class Touch:
    """A document some change touched: the rule, the document's key, and the change's metadata block."""

    rule: Rule
    key: str
    meta: dict[str, Any]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def digest(header: Mapping[str, Any], lines: Sequence[Mapping[str, Any]]) -> str:
    """A fingerprint of a document's mapped content (what the target was created from)."""
    rows = sorted(json.dumps(x, sort_keys=True, default=_jsonable) for x in lines)
    text = json.dumps({"header": header, "lines": rows}, sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def map_columns(columns: Mapping[str, Any], row: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Target column values from a source row (``ref`` and ``total`` columns are filled later)."""
    out: dict[str, Any] = {}
    for target, spec in columns.items():
        if spec.column is None:
            continue
        try:
            value = spec.converter.forward(row[spec.column])
        except TerminalError as exc:
            raise TerminalError(f"{where} {spec.column}: {exc.message}") from exc
        if spec.positive and (value is None or value <= 0):
            raise TerminalError(f"{where} {spec.column} is {row[spec.column]}: it must be positive")
        if spec.allowed is not None and value not in spec.allowed:
            raise TerminalError(f"{where} {spec.column} is {value!r}; the target accepts only"
                                f" {', '.join(map(str, spec.allowed))}")
        out[target] = value
    return out


def line_amount(line: Mapping[str, Any], amount: tuple[str, str], places: int = 0) -> int | Decimal:
    """Quantity x unit price of one line, rounded half up to ``places`` decimals of the price's unit.

    ``places`` is the target's precision: 0 when it counts in fen (an integer), 2 for yuan.
    """
    qty, price = (Decimal(str(line[c])) for c in amount)
    exact = (qty * price).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return exact if places else int(exact)


def plan_document(rule: CreateRule, header: Mapping[str, Any], lines: Sequence[Mapping[str, Any]]
                  ) -> tuple[dict[str, Any], list[dict[str, Any]], int | Decimal]:
    """The target header columns (refs not yet filled), lines and total of a ready document. Pure."""
    spec = rule.target_spec
    out_header = map_columns(spec.columns, header, "header")
    out_lines = [map_columns(spec.lines.columns, line, f"line {n}")
                 for n, line in enumerate(lines, 1)] if spec.lines else []
    total: int | Decimal = 0
    if spec.lines and spec.lines.amount:
        total = sum((line_amount(line, spec.lines.amount, spec.lines.amount_places) for line in out_lines),
                    start=Decimal(0) if spec.lines.amount_places else 0)
    for target, column in spec.columns.items():
        if column.total:
            out_header[target] = total
    return out_header, out_lines, total


def content_of(rule: CreateRule, header: Mapping[str, Any], lines: Sequence[Mapping[str, Any]],
               ready: bool) -> dict[str, Any]:
    """What a created document is compared with: its mapped header and lines, or (not ready) its ``when`` columns."""
    if not ready:
        return {"not ready": {c: _jsonable(header.get(c)) for c in rule.when}}
    out_header, out_lines, _ = plan_document(rule, header, lines)
    return {"header": {c: _jsonable(v) for c, v in out_header.items()},
            "lines": [{c: _jsonable(v) for c, v in line.items()} for line in out_lines]}


def fingerprint(content: Mapping[str, Any]) -> str:
    """The digest of a document's content (line order aside)."""
    if "not ready" in content:
        return digest({"not ready": content["not ready"]}, [])
    return digest(content["header"], content["lines"])


def differences(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """What changed between two contents, column by column (empty when either is not a ready document)."""
    if not old or "header" not in old or "header" not in new:
        return ""

    def changed(a: Mapping[str, Any], b: Mapping[str, Any], where: str) -> list[str]:
        return [f"{where}{c} {a.get(c)} → {b.get(c)}" for c in sorted({*a, *b}) if a.get(c) != b.get(c)]

    out = changed(old["header"], new["header"], "")
    if len(old["lines"]) != len(new["lines"]):
        out.append(f"lines {len(old['lines'])} → {len(new['lines'])}")
    else:
        for n, (a, b) in enumerate(zip(old["lines"], new["lines"], strict=True), 1):
            out += changed(a, b, f"line {n} ")
    return ", ".join(out)


class Reader:
    """Reads documents from one system, each in one snapshot."""

    def __init__(self, system: str, conninfo: dict[str, Any]) -> None:
        self.system = system
        self.conninfo = {**conninfo, "application_name": f"crm-erp-sync documents {system}"}
        self.conn: psycopg.Connection[Any] | None = None
        self.lock = threading.Lock()  # the worker's loop and its timers read from their own threads

    def _connect(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            try:
                self.conn = psycopg.connect(**self.conninfo, row_factory=dict_row)
                self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                self.conn.read_only = True
            except psycopg.OperationalError as exc:
                self.conn = None
                raise TransientError(f"{self.system} database unavailable: {exc}".strip()) from exc
        return self.conn

    def read(self, queries: Sequence[str], params: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
        """The rows of each query, all from one snapshot."""
        with self.lock:
            return self._read(queries, params)

    def _read(self, queries: Sequence[str], params: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
        conn = self._connect()
        try:
            with conn.pipeline():  # BEGIN, the queries and COMMIT in one round trip
                with conn.transaction():
                    cursors = [conn.execute(q, params) for q in queries]
                return [c.fetchall() for c in cursors]
        except psycopg.OperationalError as exc:
            self.conn = None
            raise TransientError(f"{self.system} database unavailable: {exc}".strip()) from exc
        except (psycopg.ProgrammingError, psycopg.DataError) as exc:
            raise TerminalError(f"document query failed on {self.system}: {str(exc).strip()}") from exc

    def created(self, entity: str, key: str) -> str | None:
        """The global id the sync's applier created ``key`` for, if it did."""
        try:
            rows = self.read([CREATED_OF_KEYS], {"entity": entity, "keys": [key]})[0]
        except TerminalError:
            return None  # no applier has written here yet
        return str(rows[0]["global_id"]) if rows else None

    def created_key(self, entity: str, global_id: str) -> str | None:
        """The key of the row the sync's applier created for ``global_id``, if it did."""
        try:
            rows = self.read([CREATED_LOOKUP_NAMED], {"entity": entity, "gid": global_id})[0]
        except TerminalError:
            return None  # no applier has written here yet (or ever: a dry run)
        return str(rows[0]["key"]) if rows else None


class Documents:
    """The rules of the document profiles, over the sync store and a reader per system."""

    def __init__(self, profile: DocumentProfile, settings: Settings, store: Store,
                 scoped: Sequence[Profile] = ()) -> None:
        self.profile = profile
        self.store = store
        self.scoped = {p.entity: p for p in scoped if p.scope}  # a pilot: documents of records in scope only
        self.readers = {s: Reader(s, settings.database(s).conninfo()) for s in ("crm", "erp")}
        self.references = References(store, self.readers, self.scoped)
        self.by_topic: dict[str, list[Rule]] = {}
        for rule in profile.rules:
            for table in rule.watch:
                self.by_topic.setdefault(raw_topic(rule.source, table), []).append(rule)

    @property
    def topics(self) -> list[str]:
        """The raw topics whose changes touch documents."""
        return list(self.by_topic)

    # -- which documents a change touches ---------------------------------------------------
    def touched(self, topic: str, table: str, row: Mapping[str, Any],
                before: Mapping[str, Any] | None = None) -> list[tuple[Rule, str]]:
        """Each rule watching ``table`` and the key of the document the row belongs to (if any).

        ``before`` (of an update) lets a rule that watches some columns only (``changed``) skip the others.
        """
        out = []
        for rule in self.by_topic.get(topic, []):
            lookup = rule.watch[table]
            if not lookup.touches(row, before):
                continue  # e.g. the sync's own rollup onto the deal: nothing the document is made of
            if lookup.column is not None:
                if lookup.column not in row:
                    raise TerminalError(f"{rule.name}: watched table {table} has no column {lookup.column}")
                value = row[lookup.column]
            else:
                assert lookup.query is not None
                found = self.readers[rule.source].read([lookup.query], row)[0]
                value = next(iter(found[0].values())) if found else None
            if value is not None:
                out.append((rule, str(value)))
        return out

    # -- what a touched document sends ------------------------------------------------------
    def run(self, touch: Touch) -> list[Send]:
        """The records to send for one touched document (TerminalError: invalid input)."""
        if isinstance(touch.rule, CreateRule):
            return self._create(touch.rule, touch.key, touch.meta)
        if isinstance(touch.rule, RollupRule):
            return self._rollup(touch.rule, touch.key, touch.meta)
        assert isinstance(touch.rule, CanonicalRule)
        return self._canonical(touch.rule, touch.key, touch.meta)

    def pending(self) -> list[Touch]:
        """Documents waiting for a reference, to try again."""
        rules = {r.name: r for r in self.profile.creates}
        now = datetime.now(tz=UTC)
        meta_of = {s: {"source_system": s, "source_table": "", "tx_id": None, "lsn": None,
                       "source_commit_time": now, "capture_time": now, "event_id": "retry"} for s in ("crm", "erp")}
        return [Touch(rules[d["rule"]], d["source_id"], meta_of[rules[d["rule"]].source])
                for d in self.store.documents(["pending"], limit=1000) if d["rule"] in rules]

    def _link(self, entity: str, system: str, key: str, mint: bool, made_here: bool = True) -> Link | None:
        """The record's link: known, made by the sync's applier (``made_here``), or (``mint``) new on its own."""
        link = self.store.link_of(entity, system, key)
        if link is not None or not made_here:
            return link
        created = self.readers[system].created(entity, key)
        if created is not None:
            link = self.store.attach(entity, created, system, key, "created")
            if link is not None:
                return link
        return self._single(entity, system, key) if mint else None

    def _single(self, entity: str, system: str, key: str) -> Link:
        """A new link of a record known on ``system`` only."""
        return self.store.add_link(entity, key if system == "crm" else None, key if system == "erp" else None,
                                   "single")

    def _read_document(self, rule: CreateRule, key: str
                       ) -> tuple[dict[str, Any], list[dict[str, Any]], bool] | None:
        """The document's header, lines and whether it is ready; None when it is gone."""
        queries = [rule.header, *([rule.lines] if rule.lines else [])]
        found = self.readers[rule.source].read(queries, {"key": key})
        if not found[0]:
            return None
        header, lines = found[0][0], (found[1] if rule.lines else [])
        return header, lines, all(header.get(column) in values for column, values in rule.when.items())

    def _create(self, rule: CreateRule, key: str, meta: dict[str, Any]) -> list[Send]:
        source, target = rule.source, rule.target
        document = self._read_document(rule, key)
        if document is None:
            return []  # deleted: what was created stays
        header, lines, ready = document
        existing = header.get(rule.existing) if rule.existing else None
        link = self._link(rule.entity, source, key, mint=False, made_here=False)  # it is created on the target
        if existing and (link is None or getattr(link, f"{target}_id") is None):
            link = self.store.link_pair(rule.entity, *((key, str(existing)) if source == "crm"
                                                      else (str(existing), key)), "exact")
        if link is not None and getattr(link, f"{target}_id") is None:  # created, its change not seen yet?
            made = self.readers[target].created_key(rule.entity, link.global_id)
            if made is not None:
                link = self.store.attach(rule.entity, link.global_id, target, made, "created") or link
        if link is not None and getattr(link, f"{target}_id") is not None:
            self._compare(rule, link, key, header, content_of(rule, header, lines, ready), ready)
            return []
        if not ready:
            if link is not None:
                self.store.forget_document(rule.name, link.global_id)  # a pending deal reopened
            return []
        if rule.require_lines and not lines:
            return self._wait(rule, key, link, "no lines yet")
        out_header, out_lines, total = plan_document(rule, header, lines)
        waiting = self.references.fill(rule, header, lines, out_header, out_lines)
        if waiting:
            return self._wait(rule, key, link, waiting)
        link = link or self._single(rule.entity, rule.source, key)
        content = content_of(rule, header, lines, ready)
        self.store.save_document(rule.name, link.global_id, key, "sent", None, fingerprint(content), content)
        payload = {"header": out_header, "lines": out_lines, "total": total}
        log.info("%s %s ready: creating it on %s", rule.name, key, target)
        return [(commands_topic(target), link.global_id,
                 document_command("document", rule, link.global_id, "", payload, meta))]

    def _compare(self, rule: CreateRule, link: Link, key: str, header: Mapping[str, Any], content: dict[str, Any],
                 ready: bool) -> None:
        """A created document as it is now against what it was created from (or last accepted as)."""
        state = self.store.document(rule.name, link.global_id)
        now = fingerprint(content)
        if state is None or state["digest"] is None:  # linked to an existing one: this is the baseline
            self.store.save_document(rule.name, link.global_id, key, "linked", None, now, content)
        elif state["digest"] == now:
            if state["state"] != "linked":  # back as it was
                self.store.save_document(rule.name, link.global_id, key, "linked", None, None)
        else:
            made = getattr(link, f"{rule.target}_id")
            what = (", ".join(f"{c} {header.get(c)}" for c in rule.when) if not ready
                    else differences(state.get("content"), content) or "changed")
            reason = (f"{rule.source} {key}: {what} after {made} was created; the {rule.target} document stands"
                      " (policy: change it there, then `crm-erp-sync documents --accept`)")
            self.store.save_document(rule.name, link.global_id, key, "diverged", reason, None)

    def accept(self, global_id: str) -> bool:
        """A person settled a diverged document: as it is now, it becomes the baseline. False if none."""
        rules = {r.name: r for r in self.profile.creates}
        for row in self.store.documents(["diverged"], global_id=global_id):
            rule = rules.get(row["rule"])
            if rule is None:
                continue
            document = self._read_document(rule, row["source_id"])
            content = content_of(rule, *document) if document else None
            self.store.save_document(rule.name, global_id, row["source_id"], "linked", None,
                                     fingerprint(content) if content else None, content)
            return True
        return False

    def _wait(self, rule: CreateRule, key: str, link: Link | None, reason: str) -> list[Send]:
        link = link or self._single(rule.entity, rule.source, key)
        self.store.save_document(rule.name, link.global_id, key, "pending", reason, None)
        return []

    def _rollup(self, rule: RollupRule, key: str, meta: dict[str, Any]) -> list[Send]:
        rows = self.readers[rule.source].read([rule.read], {"key": key})[0]
        link = self._link(rule.entity, rule.source, key, mint=False)
        target_id = getattr(link, f"{rule.target}_id") if link else None
        if not rows or link is None or target_id is None:
            return []  # gone, or not a record the sync links (an order keyed in by hand in the ERP)
        scoped = self.scoped.get(rule.entity)
        if scoped and not scoped.in_scope(self.store.values_of(rule.entity, link.global_id)):
            return []  # out of the pilot's scope: never written
        values = {c: _jsonable(v) for c, v in rows[0].items()}
        rule.check(key, values)
        return [(commands_topic(rule.target), link.global_id,
                 document_command("row", rule, link.global_id, target_id, values, meta))]

    def _canonical(self, rule: CanonicalRule, key: str, meta: dict[str, Any]) -> list[Send]:
        queries = [rule.read, *([rule.lines] if rule.lines else [])]
        found = self.readers[rule.source].read(queries, {"key": key})
        if not found[0]:
            return []  # deleted: documents are voided, not deleted; nothing to publish
        link = self._link(rule.entity, rule.source, key, mint=True)
        assert link is not None
        record: dict[str, Any] = {
            k: personal_value(v, rule.personal_mode) if k in rule.personal else v for k, v in found[0][0].items()}
        if rule.lines:
            record["lines"] = found[1]
        record.update({"global_id": link.global_id, "crm_id": link.crm_id, "erp_id": link.erp_id,
                       "deleted": False, "metadata": meta})
        return [(rule.topic, link.global_id, record)]

    def close(self) -> None:
        """Close the readers' connections."""
        for reader in self.readers.values():
            if reader.conn is not None:
                reader.conn.close()
