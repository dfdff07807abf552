"""A created document's references: source columns naming other records, replaced by target keys.

A reference (``refs`` of a create rule) is a column of the header or of each line. Its target key
comes from the cross-reference of the rule's ``entity`` (the deal's account → the ERP customer), or
from a ``lookup`` query on the target (a line's product code → the ERP's product id). Blocking
(store and database reads); used by the documents engine and by ``compare``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from streams.documents.spec import ColumnSpec, CreateRule, Reference
from streams.errors import TerminalError
from streams.mapping.profile import Profile
from streams.store import Store


class References:
    """Resolves references through the sync store and the target's reader; one instance per worker."""

    def __init__(self, store: Store, readers: Mapping[str, Any], scoped: Mapping[str, Profile] | None = None) -> None:
        self.store = store
        self.readers = readers
        self.scoped = scoped or {}  # a pilot: a record out of its scope is never referenced

    def fill(self, rule: CreateRule, header: Mapping[str, Any], lines: Sequence[Mapping[str, Any]],
             out_header: dict[str, Any], out_lines: Sequence[dict[str, Any]]) -> str | None:
        """Fill every reference column of the planned header and lines (None where not found).

        Returns why the document must wait (the first reference not found), or None when all were.
        An empty reference is invalid input (:class:`TerminalError`).
        """
        found: dict[tuple[str, str], tuple[str | None, str]] = {}
        rows: list[tuple[Mapping[str, ColumnSpec], Mapping[str, Any], dict[str, Any], str]] = [
            (rule.target_spec.columns, header, out_header, "header")]
        if rule.target_spec.lines is not None:
            rows += [(rule.target_spec.lines.columns, line, out, f"line {n}")
                     for n, (line, out) in enumerate(zip(lines, out_lines, strict=True), 1)]
        waiting: str | None = None
        for columns, row, out, where in rows:
            for name, spec in columns.items():
                if spec.ref is None:
                    continue
                ref, value = rule.refs[spec.ref], row.get(spec.ref)
                if value is None:
                    raise TerminalError(f"{where} {spec.ref} is empty; it must name {ref.entity or 'a target record'}")
                if (spec.ref, str(value)) not in found:
                    found[spec.ref, str(value)] = self.target_key(rule, ref, str(value))
                out[name], reason = found[spec.ref, str(value)]
                waiting = waiting or (reason if out[name] is None else None)
        return waiting

    def target_key(self, rule: CreateRule, ref: Reference, value: str) -> tuple[str | None, str]:
        """The target's key of the record ``value`` names, or None and why the document waits."""
        waiting = ref.waiting.format(value=value)
        if ref.lookup is not None:
            rows = self.readers[rule.target].read([ref.lookup], {"value": value})[0]
            got = next(iter(rows[0].values())) if rows else None
            return (None, waiting) if got is None else (str(got), "")
        assert ref.entity is not None
        peer = self.store.link_of(ref.entity, rule.source, value)
        peer_id: str | None = getattr(peer, f"{rule.target}_id") if peer else None
        if peer is None or peer_id is None:
            return None, waiting
        scoped = self.scoped.get(ref.entity)
        if scoped and scoped.scope and not scoped.in_scope(self.store.values_of(ref.entity, peer.global_id)):
            return None, f"{ref.entity} {value} is out of the pilot's scope ({scoped.scope.describe()})"
        return peer_id, ""
