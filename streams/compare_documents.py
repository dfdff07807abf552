"""``compare`` for documents: each document rule's records set against the other system, read-only.

Created documents (a won deal → an ERP sales order), per source document:

* ``not_ready``: not a document the rule creates (a deal not won);
* ``equal`` / ``differs``: it has its target document, whose header columns and lines are (not)
  what the rule makes of the source now — compared by the target database itself (``IS DISTINCT
  FROM``, so types cast as a write would cast them), each differing column named;
* ``pending``: waiting for a reference (the account not linked yet, out of a pilot's scope);
* ``missing``: ready, no target document and not waiting (the sync never made it), or the target
  document it made is gone: drift either way.

Rollups (the order's fulfilment status onto the deal, the account's receivables), per linked
record: ``equal`` / ``differs`` (the target row does not hold what the rule reads on the source:
each differing column with both values) / ``no_source`` (the source row is gone).

The source documents are listed from the rule's first watched table with a key column.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from streams.compare import as_text
from streams.documents.engine import Reader, _jsonable, plan_document
from streams.documents.refs import References
from streams.documents.spec import CreateRule, DocumentProfile, RollupRule
from streams.errors import TerminalError
from streams.settings import Settings
from streams.store import Store

CREATED = ("not_ready", "equal", "differs", "pending", "missing")
ROLLED_UP = ("equal", "differs", "no_source")


@dataclass
class DocumentReport:
    """One document rule's counts and the differences behind them."""

    rule: str
    kind: str  # create | rollup
    categories: Counter[str] = field(default_factory=Counter)
    differences: list[dict[str, Any]] = field(default_factory=list)  # global id, keys, columns with both values

    def as_rows(self) -> list[list[Any]]:
        """CSV rows (``streams.compare.CSV_HEADER``): a count per category, then each difference per column."""
        names = CREATED if self.kind == "create" else ROLLED_UP
        rows: list[list[Any]] = [["count", self.rule, "", c, self.categories[c], "", "", "", "", "", ""]
                                 for c in names]
        for d in self.differences:
            columns = d.get("columns") or {(d.get("missing") and "missing") or "invalid": {
                "crm": d.get("missing") or d.get("invalid"), "erp": ""}}
            rows += [["difference", self.rule, "", "", "", d.get("global_id") or "", d.get("crm", ""),
                      d.get("erp", ""), column, as_text(v.get("crm")), as_text(v.get("erp"))]
                     for column, v in columns.items()]
        return rows

    def as_dict(self) -> dict[str, Any]:
        names = CREATED if self.kind == "create" else ROLLED_UP
        return {"rule": self.rule, "kind": self.kind, "categories": {c: self.categories[c] for c in names},
                "differences": self.differences}


def _table(name: str) -> sql.Composed:
    schema, _, table = name.partition(".")
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def differing(reader: Reader, table: str, where: dict[str, Any], expected: dict[str, Any]
              ) -> dict[str, tuple[Any, Any]] | None:
    """The columns of the row ``where`` selects that do not hold ``expected``: column -> (expected, found).

    None when there is no such row. The target compares, as it would when written.
    """
    columns = list(expected)
    query = sql.SQL("SELECT {} FROM {} WHERE {}").format(
        sql.SQL(", ").join([*(sql.SQL("{} IS DISTINCT FROM {} AS {}").format(
                                sql.Identifier(c), sql.Placeholder(f"e{i}"), sql.Identifier(f"d{i}"))
                              for i, c in enumerate(columns)),
                            *(sql.SQL("{} AS {}").format(sql.Identifier(c), sql.Identifier(f"v{i}"))
                              for i, c in enumerate(columns))]),
        _table(table),
        sql.SQL(" AND ").join(sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder(f"w{i}"))
                              for i, c in enumerate(where)))
    params = {**{f"e{i}": expected[c] for i, c in enumerate(columns)},
              **{f"w{i}": v for i, v in enumerate(where.values())}}
    rows = reader.read([query.as_string(None)], params)[0]
    if not rows:
        return None
    row = rows[0]
    return {c: (expected[c], row[f"v{i}"]) for i, c in enumerate(columns) if row[f"d{i}"]}


def _count(reader: Reader, table: str, parent: str, parent_id: Any, line: dict[str, Any] | None = None) -> int:
    """How many lines the target document has (that hold ``line``'s values, when given)."""
    line = line or {}
    query = sql.SQL("SELECT count(*) AS n FROM {} WHERE {} = %(p)s{}").format(
        _table(table), sql.Identifier(parent),
        sql.SQL("").join(sql.SQL(" AND {} IS NOT DISTINCT FROM {}").format(sql.Identifier(c), sql.Placeholder(f"e{i}"))
                         for i, c in enumerate(line)))
    params = {"p": parent_id, **{f"e{i}": v for i, v in enumerate(line.values())}}
    return int(reader.read([query.as_string(None)], params)[0][0]["n"])


def _same_lines(reader: Reader, table: str, parent: str, parent_id: Any, lines: list[dict[str, Any]]) -> bool:
    """Whether the target document has these lines, whatever its numbering (a linked existing order's)."""
    return (_count(reader, table, parent, parent_id) == len(lines)
            and all(_count(reader, table, parent, parent_id, line) for line in lines))


def _source_keys(reader: Reader, rule: CreateRule) -> list[str]:
    table, lookup = next((t, lk) for t, lk in rule.watch.items() if lk.column)
    query = sql.SQL("SELECT {} AS k FROM {} ORDER BY 1").format(sql.Identifier(lookup.column or ""), _table(table))
    return [str(r["k"]) for r in reader.read([query.as_string(None)], {})[0]]


def compare_created(rule: CreateRule, store: Store, readers: dict[str, Reader]) -> DocumentReport:
    """Each source document of a create rule against its target document."""
    report = DocumentReport(rule.name, "create")
    source, target, spec = rule.source, rule.target, rule.target_spec
    references = References(store, readers)
    for key in _source_keys(readers[source], rule):
        queries = [rule.header, *([rule.lines] if rule.lines else [])]
        found = readers[source].read(queries, {"key": key})
        if not found[0]:
            continue  # deleted since listed
        header, lines = found[0][0], (found[1] if rule.lines else [])
        link = store.link_of(rule.entity, source, key)
        target_id = getattr(link, f"{target}_id") if link else None
        ready = all(header.get(c) in values for c, values in rule.when.items())
        if target_id is None:
            state = store.document(rule.name, link.global_id) if link else None
            category = ("not_ready" if not ready else "pending" if state and state["state"] == "pending"
                        else "missing")
            report.categories[category] += 1
            if category == "missing":
                report.differences.append({"global_id": link.global_id if link else None, source: key,
                                           "missing": f"no {target} document"})
            continue
        assert link is not None
        try:
            out_header, out_lines, _ = plan_document(rule, header, lines)
            references.fill(rule, header, lines, out_header, out_lines)  # as the target knows them
        except TerminalError as exc:  # the source is invalid now (it was not when created)
            report.categories["differs"] += 1
            report.differences.append({"global_id": link.global_id, source: key, target: target_id,
                                       "invalid": exc.message})
            continue
        diffs = differing(readers[target], spec.table, {spec.key: target_id}, out_header)
        if diffs is None:  # linked, but the target document is gone
            report.categories["missing"] += 1
            report.differences.append({"global_id": link.global_id, source: key, target: target_id,
                                       "missing": f"{target} {target_id} is gone"})
            continue
        if spec.lines is not None and not _same_lines(readers[target], spec.lines.table, spec.lines.parent,
                                                      target_id, out_lines):
            for n, line in enumerate(out_lines, 1):  # where they differ, line by line in the source's order
                where = {spec.lines.parent: target_id, **({spec.lines.number: n} if spec.lines.number else {})}
                got = differing(readers[target], spec.lines.table, where, line)
                diffs.update({f"line {n} {c}": v for c, v in (got or {}).items()}
                             if got is not None else {f"line {n}": (line, None)})
            count = _count(readers[target], spec.lines.table, spec.lines.parent, target_id)
            if count != len(out_lines):
                diffs["lines"] = (len(out_lines), count)
        report.categories["differs" if diffs else "equal"] += 1
        if diffs:
            report.differences.append({"global_id": link.global_id, source: key, target: target_id,
                                       "columns": {c: {source: v[0], target: v[1]} for c, v in diffs.items()}})
    return report


def compare_rollup(rule: RollupRule, store: Store, readers: dict[str, Reader]) -> DocumentReport:
    """Each linked record of a rollup rule: does the target row hold what the source says?"""
    report = DocumentReport(rule.name, "rollup")
    for link in store.links(rule.entity):
        source_key, target_id = getattr(link, f"{rule.source}_id"), getattr(link, f"{rule.target}_id")
        if source_key is None or target_id is None:
            continue
        rows = readers[rule.source].read([rule.read], {"key": source_key})[0]
        if not rows:
            report.categories["no_source"] += 1
            continue
        values = {c: _jsonable(v) for c, v in rows[0].items()}  # as the rollup writes them
        diffs = differing(readers[rule.target], rule.target_table, {rule.target_key: target_id}, values)
        if diffs is None:
            report.categories["no_source"] += 1  # the target row is gone: nothing to hold the values
            continue
        report.categories["differs" if diffs else "equal"] += 1
        if diffs:
            report.differences.append({"global_id": link.global_id, rule.source: source_key, rule.target: target_id,
                                       "columns": {c: {rule.source: v[0], rule.target: v[1]}
                                                   for c, v in diffs.items()}})
    return report


def compare_documents(settings: Settings, profile: DocumentProfile, store: Store,
                      entity: str | None = None) -> list[DocumentReport]:
    """Every create and rollup rule's report (of ``entity``'s rules only, when given)."""
    readers = {s: Reader(s, settings.database(s).conninfo()) for s in ("crm", "erp")}
    return ([compare_created(r, store, readers) for r in profile.creates if entity in (None, r.entity)]
            + [compare_rollup(r, store, readers) for r in profile.rollups if entity in (None, r.entity)])


def format_documents(reports: list[DocumentReport]) -> str:
    """The reports as text: a line per rule with its categories, then the first differences."""
    lines = []
    for r in reports:
        names = CREATED if r.kind == "create" else ROLLED_UP
        lines.append(f"{r.rule} ({r.kind}): " + ", ".join(f"{c} {r.categories[c]}" for c in names))
        for d in r.differences[:10]:
            lines.append(f"    {d}")
        if len(r.differences) > 10:
            lines.append(f"    … and {len(r.differences) - 10} more (--format json lists every one)")
    return "\n".join(lines)
