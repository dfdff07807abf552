"""Document profiles: YAML describing business documents (an order and its lines), not fields. Pure.

Three kinds of rule, each triggered by change events of the tables it ``watch``es:

- ``creates``: a document written on one system (a won deal with its lines) becomes exactly one
  document on the other (a sales order with its lines), once its header matches ``when``.
- ``rollups``: values read from one system (an order's fulfilment status, a customer's receivables)
  are written onto the linked record of the other.
- ``canonical``: a document read from one system is published on a canonical topic.

A change event only says *which* document changed: the rule then reads the whole document as
committed now, header and lines in one snapshot, so a transaction's rows always travel together
and replaying any event gives the same result. Loaded and validated once at start; every error
names the key in the file and the fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streams.errors import ConfigError, TerminalError
from streams.mapping.convert import Converter, build
from streams.mapping.profile import TABLE, first_error, params_of, read_yaml
from streams.mapping.writes import KeyFormat, Stamp

System = Literal["crm", "erp"]
_MODEL = ConfigDict(frozen=True, extra="forbid")


class Lookup(BaseModel):
    """How a changed row names the document it belongs to: a column, or a query over its columns."""

    model_config = _MODEL
    column: str | None = None
    query: str | None = None  # one row, one column: the document key; parameters are the row's columns
    changed: list[str] | None = None  # an update touches the document only if one of these columns changed

    @model_validator(mode="after")
    def _one(self) -> Lookup:
        if (self.column is None) == (self.query is None):
            raise ValueError("give either column (holding the document key) or query (returning it)")
        return self

    def touches(self, row: Mapping[str, Any], before: Mapping[str, Any] | None) -> bool:
        """Whether a change (``before``: the old row of an update) is news for the document."""
        return not (self.changed and before is not None and all(before.get(c) == row.get(c) for c in self.changed))


def _watch(value: Any) -> Any:
    """``table: column`` is short for ``table: {column: column}``."""
    if isinstance(value, dict):
        return {t: {"column": v} if isinstance(v, str) else v for t, v in value.items()}
    return value


class Rule(BaseModel):
    """What every rule has: a name, the system it reads, the tables whose changes trigger it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    entity: str = Field(pattern=r"^[a-z][a-z0-9_]*$")  # its cross-reference entity (global ids)
    source: System
    watch: dict[str, Lookup]

    _watch_short = field_validator("watch", mode="before")(_watch)

    @field_validator("watch")
    @classmethod
    def _tables(cls, value: dict[str, Lookup]) -> dict[str, Lookup]:
        if not value:
            raise ValueError("watch needs at least one table")
        for table in value:
            if not re.match(TABLE, table):
                raise ValueError(f"watch table {table!r} must be schema.table")
        return value

    @property
    def target(self) -> str:
        """The other system."""
        return "erp" if self.source == "crm" else "crm"


class ColumnSpec(BaseModel):
    """One target column of a created document: from a source column, a reference, or the total."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    column: str | None = None  # the source column
    convert: str | dict[str, Any] = "identity"
    positive: bool = False  # a value <= 0 is invalid input (a dead letter)
    allowed: list[Any] | None = None  # any other value is invalid input
    ref: str | None = None  # the header column whose reference gives the value
    total: bool = False  # the sum of the lines' amounts

    @model_validator(mode="after")
    def _one(self) -> ColumnSpec:
        if sum((self.column is not None, self.ref is not None, self.total)) != 1:
            raise ValueError("a column takes exactly one of column (a source column), ref or total: true")
        build(self.convert)
        return self

    @property
    def converter(self) -> Converter:
        """The built converter."""
        return build(self.convert)


class LinesSpec(BaseModel):
    """The target table of the lines, and how each line's amount is computed."""

    model_config = _MODEL
    table: str = Field(pattern=TABLE)
    parent: str  # the column holding the header's key
    number: str | None = None  # numbered 1, 2, ... in the source order
    amount: tuple[str, str] | None = None  # [quantity column, unit price column] (target columns): qty * price
    amount_places: int = Field(0, ge=0, le=9)  # the target's decimals of amounts: 0 for fen, 2 for yuan
    columns: dict[str, ColumnSpec]
    stamp: Stamp = {}  # columns the sync also sets on each line it writes (streams.mapping.writes)


class Reference(BaseModel):
    """A source column (of the header or of each line) naming another record, replaced by its target key.

    The target key comes from the cross-reference of ``entity`` (a record the sync links), or from
    ``lookup``, a query on the target taking ``%(value)s`` (a product's id by its code). Not found yet:
    the document waits, with ``waiting`` as the reason.
    """

    model_config = _MODEL
    entity: str | None = None
    lookup: str | None = None
    waiting: str = "{value} has no linked record on the target yet"  # the reason shown while pending

    @model_validator(mode="after")
    def _one(self) -> Reference:
        if (self.entity is None) == (self.lookup is None):
            raise ValueError("a reference takes either entity (its cross-reference) or lookup (a target query)")
        if self.lookup is not None and params_of(self.lookup) != {"value"}:
            raise ValueError("a lookup query takes one parameter, %(value)s")
        return self


class CreditCheck(BaseModel):
    """A query run in the target's write transaction deciding the status column (true: hold)."""

    model_config = _MODEL
    query: str  # parameters: every target header column by name, and total
    column: str
    hold: Any
    ok: Any


class TargetSpec(BaseModel):
    """Where a created document goes on the target."""

    model_config = _MODEL
    table: str = Field(pattern=TABLE)
    key: str
    columns: dict[str, ColumnSpec]
    lines: LinesSpec | None = None
    credit_check: CreditCheck | None = None
    stamp: Stamp = {}  # columns the sync also sets on the header it writes
    new_key: KeyFormat | None = None  # the new document's key, else the table's default


class CreateRule(Rule):
    """A document on ``source`` becomes one document on the target, once."""

    header: str  # query: the header row by %(key)s; no row means deleted
    lines: str | None = None  # query: the line rows by %(key)s, in order
    when: dict[str, list[Any]] = {}  # header column -> values that make the document ready
    require_lines: bool = False
    existing: str | None = None  # a header column already holding the target's key (linked, never created)
    refs: dict[str, Reference] = {}
    target_spec: TargetSpec = Field(alias="target")

    @model_validator(mode="after")
    def _coherent(self) -> CreateRule:
        if params_of(self.header) != {"key"} or (self.lines and params_of(self.lines) != {"key"}):
            raise ValueError("header and lines queries take one parameter, %(key)s")
        if self.require_lines and not self.lines:
            raise ValueError("require_lines needs a lines query")
        if (self.lines is None) != (self.target_spec.lines is None):
            raise ValueError("a lines query and target.lines go together")
        specs = list(self.target_spec.columns.values())
        specs += list(self.target_spec.lines.columns.values()) if self.target_spec.lines else []
        for spec in specs:
            if spec.ref is not None and spec.ref not in self.refs:
                raise ValueError(f"ref {spec.ref!r} is not in refs")
        if any(s.total for s in self.target_spec.columns.values()) and not (
                self.target_spec.lines and self.target_spec.lines.amount):
            raise ValueError("total: true needs target.lines.amount")
        return self


class RollupRule(Rule):
    """Values read on ``source`` written onto the linked record of the target (never created)."""

    read: str  # query: one row by %(key)s; its column names are the target's
    target_table: str = Field(alias="target", pattern=TABLE)
    target_key: str = Field(alias="target_key")
    allowed: dict[str, list[Any]] = {}  # target column -> the values it accepts; another is a dead letter
    stamp: Stamp = {}  # columns the sync also sets when it writes the row

    @model_validator(mode="after")
    def _coherent(self) -> RollupRule:
        if params_of(self.read) != {"key"}:
            raise ValueError("read takes one parameter, %(key)s")
        return self

    def check(self, key: str, values: Mapping[str, Any]) -> None:
        """Raise :class:`TerminalError` (a dead letter) when a value is not one the target accepts."""
        for column, allowed in self.allowed.items():
            if column not in values:
                raise TerminalError(f"{self.name}: read returns no column {column} (named in allowed)")
            if values[column] not in allowed:
                raise TerminalError(f"{self.name} {key}: {column} is {values[column]!r}; the target accepts only"
                                    f" {', '.join(map(str, allowed))}")


class CanonicalRule(Rule):
    """A document read on ``source`` published on a canonical topic, keyed by global id."""

    topic: str = Field(pattern=r"^[\w.-]+$")
    schema_path: Path = Field(alias="schema")
    read: str  # query: the record's fields by %(key)s
    lines: str | None = None  # query: the lines by %(key)s (the record's ``lines`` field)
    personal: list[str] = []  # fields consumers see hashed or masked
    personal_mode: Literal["clear", "hash", "mask"] = "hash"

    @model_validator(mode="after")
    def _coherent(self) -> CanonicalRule:
        if params_of(self.read) != {"key"} or (self.lines and params_of(self.lines) != {"key"}):
            raise ValueError("read and lines queries take one parameter, %(key)s")
        return self

    def schema_fields(self) -> set[str]:
        """Field names of the canonical Avro record."""
        return {f["name"] for f in json.loads(self.schema_path.read_text(encoding="utf-8"))["fields"]}


class DocumentProfile(BaseModel):
    """A validated document profile."""

    model_config = _MODEL
    creates: list[CreateRule] = []
    rollups: list[RollupRule] = []
    canonical: list[CanonicalRule] = []

    @model_validator(mode="after")
    def _unique(self) -> DocumentProfile:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique: {', '.join(dupes)}")
        return self

    @property
    def rules(self) -> list[Rule]:
        """Every rule."""
        return [*self.creates, *self.rollups, *self.canonical]


def load_documents(paths: list[Path]) -> DocumentProfile:
    """Read and validate document profiles into one; :class:`ConfigError` names the key and the fix."""
    merged: dict[str, list[Any]] = {"creates": [], "rollups": [], "canonical": []}
    for path in paths:
        data = read_yaml(path, "document profile", hint="fix processors.documents")
        if not isinstance(data, dict) or set(data) - set(merged):
            raise ConfigError(f"document profile {path} must be a mapping of creates, rollups and canonical",
                              hint="see schemas/mappings/demo-orders.yaml")
        for rule in data.get("canonical") or []:
            if isinstance(rule, dict) and isinstance(rule.get("schema"), str):
                rule["schema"] = (path.parent / rule["schema"]).resolve()
        try:
            part = DocumentProfile(**data)
        except ValidationError as exc:
            key, message = first_error(exc)
            raise ConfigError(f"document profile {path}: {key or 'top level'}: {message}",
                              hint=f"fix {key or 'the file'} in {path.name}") from exc
        for rule in part.canonical:
            try:
                rule.schema_fields()
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigError(f"document profile {path}: canonical {rule.name}: schema {rule.schema_path}"
                                  f" unreadable: {exc}", hint="fix the schema path") from exc
        for kind in merged:
            merged[kind] += getattr(part, kind)
    try:
        return DocumentProfile(**merged)
    except ValidationError as exc:
        raise ConfigError(f"document profiles: {first_error(exc)[1]}",
                          hint="give every rule its own name") from exc
