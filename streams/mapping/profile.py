"""Mapping profiles: YAML that says which tables form an entity and how each field maps. Pure.

Loaded and validated once at start; every error names the key in the file and the fix.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streams.errors import ConfigError, TerminalError
from streams.mapping.convert import Converter, build
from streams.mapping.writes import KeyFormat, Stamp

SYSTEMS = ("crm", "erp")
System = Literal["crm", "erp"]
_MODEL = ConfigDict(frozen=True, extra="forbid")
# schema.table; a table name may hold spaces (ERPNext's "tabSales Order"): it is always quoted in SQL
TABLE = r"^[A-Za-z_]\w*\.[A-Za-z_][\w ]*\w$"
_PARAM = re.compile(r"%\((\w+)\)s")


def params_of(query: str) -> set[str]:
    """The ``%(name)s`` parameters a query takes."""
    return set(_PARAM.findall(query))


QUERIED = "__query__.{}"  # the pseudo-column of a queried side's value in a row (by field name)


class SideSpec(BaseModel):
    """A field's column on one system and its conversion.

    With ``minus`` the value is ``column - minus`` (both converted): computed, so never written.
    With ``query`` (instead of ``column``) the value is read from other rows of that system: a
    child row (ERPNext's credit limit in ``"tabCustomer Credit Limit"``) or an aggregate over
    several (stock summed over ``"tabBin"``); ``%(key)s`` is the entity's key. It is computed
    again on every change of the entity's row and of each ``watch``ed table (table -> the column
    holding the entity's key); never written.
    """

    model_config = _MODEL
    column: str | None = None
    minus: str | None = None
    query: str | None = None
    watch: dict[str, str] = {}
    convert: str | dict[str, Any] = "identity"

    @model_validator(mode="after")
    def _source(self) -> SideSpec:
        if (self.column is None) == (self.query is None):
            raise ValueError("a side takes either column or query (a computed value, with watch)")
        if self.query is not None:
            if self.minus is not None:
                raise ValueError("minus goes with column, not query")
            if params_of(self.query) != {"key"}:
                raise ValueError("a side's query takes one parameter, %(key)s (the entity's key)")
            if not self.watch:
                raise ValueError("a side's query needs watch: {table: column holding the entity's key}")
            for table in self.watch:
                if not re.match(TABLE, table):
                    raise ValueError(f"watch table {table!r} must be schema.table")
        elif self.watch:
            raise ValueError("watch goes with query")
        return self

    @property
    def read_only(self) -> bool:
        """Computed from several columns or rows: the sync reads it and never writes it."""
        return self.minus is not None or self.query is not None

    def read(self, row: Mapping[str, Any], field: str = "") -> Any:
        """The canonical value from a row holding the column(s) (a queried value under ``QUERIED``)."""
        value = self.converter.forward(row[self.columns(field)[0]])
        if self.minus is not None:
            subtrahend = self.converter.forward(row[self.minus])
            value = None if value is None or subtrahend is None else value - subtrahend
        return value

    def columns(self, field: str = "") -> tuple[str, ...]:
        """The columns the value is read from (a queried side: its pseudo-column)."""
        if self.column is None:
            return (QUERIED.format(field),)
        return (self.column,) if self.minus is None else (self.column, self.minus)

    @property
    def written(self) -> str:
        """The column the sync writes (only for a side that is not read-only)."""
        assert self.column is not None and not self.read_only
        return self.column

    @field_validator("convert")
    @classmethod
    def _known(cls, value: str | dict[str, Any]) -> str | dict[str, Any]:
        build(value)
        return value

    @cached_property
    def converter(self) -> Converter:
        """The built converter."""
        return build(self.convert)


class FieldSpec(BaseModel):
    """One canonical field."""

    model_config = ConfigDict(frozen=True, extra="forbid", ignored_types=(cached_property,))
    crm: SideSpec | None = None
    erp: SideSpec | None = None
    policy: Literal["source_of_truth", "latest", "manual"]
    owner: System | None = None
    non_owner_edit: Literal["revert", "queue"] = "revert"
    personal: bool = False
    required: bool = False
    max_length: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _coherent(self) -> FieldSpec:
        if self.crm is None and self.erp is None:
            raise ValueError("a field needs a column on crm, erp or both")
        for system in SYSTEMS:
            side = self.side(system)
            if side is not None and side.read_only and (self.policy != "source_of_truth" or self.owner != system):
                raise ValueError(f"{system} computes this field (minus): it can only be source_of_truth with"
                                 f" owner: {system}, never written there")
        if self.policy == "source_of_truth":
            if self.owner is None:
                raise ValueError("policy source_of_truth needs owner: crm or erp")
            if self.side(self.owner) is None:
                raise ValueError(f"owner {self.owner} has no column for this field")
        elif self.owner is not None:
            raise ValueError(f"owner only applies to policy source_of_truth, not {self.policy}")
        return self

    def side(self, system: str) -> SideSpec | None:
        """The column spec on ``system``, if any."""
        spec: SideSpec | None = getattr(self, system)
        return spec

    @property
    def synced(self) -> bool:
        """Present on both systems, so kept in agreement."""
        return self.crm is not None and self.erp is not None


class SourceSpec(BaseModel):
    """The table of one system that forms the entity."""

    model_config = _MODEL
    table: str = Field(pattern=TABLE)
    key: str
    version: SideSpec | None = None  # a column every write changes (compare-and-set of whole rows)
    stamp: Stamp = {}  # columns every write of the sync also sets (streams.mapping.writes)
    new_key: KeyFormat | None = None  # the key of a row the sync creates, else the table's default


class KeyPair(BaseModel):
    """Columns holding the same identifier on both systems."""

    model_config = _MODEL
    crm: str
    erp: str


class IdentitySpec(BaseModel):
    """How records of the two systems are linked."""

    model_config = _MODEL
    exact: tuple[KeyPair, ...] = ()
    name: KeyPair | None = None
    fuzzy_threshold: float = Field(0.86, gt=0, le=1)
    review_margin: float = Field(0.04, ge=0, lt=1)


class CreateRule(BaseModel):
    """When a record new on one system is created on the other, and how its gaps are filled."""

    model_config = _MODEL
    when: dict[str, list[Any]] = {}
    fill: dict[str, str] = {}  # field -> field whose value it takes when empty (e.g. name: legal_name)

    def values_for(self, values: Mapping[str, Any]) -> dict[str, Any] | None:
        """The canonical values to create with, or None when the rule does not match."""
        if any(values.get(name) not in allowed for name, allowed in self.when.items()):
            return None
        out = dict(values)
        for name, source in self.fill.items():
            if out.get(name) in (None, ""):
                out[name] = out.get(source)
        return out


class CreateSpec(BaseModel):
    """Create rules per direction; a missing direction creates nothing."""

    model_config = _MODEL
    crm_to_erp: CreateRule | None = None
    erp_to_crm: CreateRule | None = None


class Deactivation(BaseModel):
    """What a record becomes when its counterpart is deleted: ``field`` set to ``value``."""

    model_config = _MODEL
    field: str
    value: Any


class Scope(BaseModel):
    """A pilot: only records whose values match are written, both ways; the others are out of scope.

    Per side, canonical field -> allowed values, checked on that side's record. A side not known
    (a record without a counterpart yet) is judged by the other side's values of those fields, and a
    record the sync knows nothing of yet is out of scope: in doubt, nothing is written.
    """

    model_config = _MODEL
    crm: dict[str, list[Any]] = {}
    erp: dict[str, list[Any]] = {}

    def admits(self, values: Mapping[str, Mapping[str, Any]]) -> bool:
        """Whether a record whose known sides hold these canonical values is in scope."""
        if not values:
            return False
        for system, conditions in (("crm", self.crm), ("erp", self.erp)):
            side = values.get(system) or values.get("erp" if system == "crm" else "crm") or {}
            if any(side.get(name) not in allowed for name, allowed in conditions.items()):
                return False
        return True

    def describe(self) -> str:
        """The conditions as a person reads them."""
        return " and ".join(f"{s}.{name} in {allowed}" for s, conditions in (("crm", self.crm), ("erp", self.erp))
                            for name, allowed in conditions.items())


class CanonicalSpec(BaseModel):
    """The canonical topic for downstream consumers."""

    model_config = _MODEL
    topic: str = Field(pattern=r"^[\w.-]+$")
    personal: Literal["clear", "hash", "mask"] = "hash"  # what consumers see of personal fields


class Profile(BaseModel):
    """A validated mapping profile."""

    model_config = ConfigDict(frozen=True, extra="forbid", ignored_types=(cached_property,))
    entity: str
    canonical_schema: Path
    canonical: CanonicalSpec | None = None
    sources: dict[System, SourceSpec]
    identity: IdentitySpec = IdentitySpec()
    create: CreateSpec = CreateSpec()
    # When the record on one system is deleted, the other system's record is deactivated (never deleted):
    # keyed by the system whose record is changed.
    deactivate: dict[System, Deactivation] = {}
    fields: dict[str, FieldSpec]
    scope: Scope | None = None  # a pilot: only these records are written (compare reports the rest)

    @model_validator(mode="after")
    def _coherent(self) -> Profile:
        missing = [s for s in SYSTEMS if s not in self.sources]
        if missing:
            raise ValueError(f"sources needs both crm and erp (missing {', '.join(missing)})")
        for system in SYSTEMS:
            written = {c for f in self.fields.values() if (s := f.side(system)) is not None for c in s.columns()}
            both = sorted(written & set(self.sources[system].stamp)) if system in self.sources else []
            if both:
                raise ValueError(f"sources.{system}.stamp: {', '.join(both)} is also a field's column; stamp"
                                 " only columns the sync does not map")
        for system, deactivation in self.deactivate.items():
            spec = self.fields.get(deactivation.field)
            if spec is None or spec.side(system) is None:
                raise ValueError(
                    f"deactivate.{system}.field {deactivation.field!r} is not a field with a {system} column")
        for side in SYSTEMS if self.scope else ():
            for name in getattr(self.scope, side):
                spec = self.fields.get(name)
                if spec is None or spec.side(side) is None:
                    raise ValueError(f"scope.{side}.{name} is not a field with a {side} column")
        for rule in (self.create.crm_to_erp, self.create.erp_to_crm):
            for name in [*(rule.when if rule else {}), *(rule.fill if rule else {}),
                         *(rule.fill.values() if rule else [])]:
                if name not in self.fields:
                    raise ValueError(f"create rule names unknown field {name!r}")
        return self

    @cached_property
    def canonical_fields(self) -> set[str]:
        """Field names of the canonical Avro record."""
        schema = json.loads(self.canonical_schema.read_text(encoding="utf-8"))
        return {f["name"] for f in schema["fields"]}

    def table_of(self, system: str) -> str:
        """``schema.table`` of the entity on ``system``."""
        return self.sources[system].table  # type: ignore[index]

    def key_of(self, system: str) -> str:
        """Primary-key column of the entity on ``system``."""
        return self.sources[system].key  # type: ignore[index]

    def deactivation(self, system: str) -> Deactivation | None:
        """How ``system``'s record is deactivated when its counterpart is deleted."""
        found: Deactivation | None = self.deactivate.get(system)  # type: ignore[call-overload]
        return found

    def in_scope(self, values: Mapping[str, Mapping[str, Any]]) -> bool:
        """Whether a record with these canonical values per known side may be written (no scope: all)."""
        return self.scope is None or self.scope.admits(values)

    def create_rule(self, source: str) -> CreateRule | None:
        """The rule for records new on ``source`` (created on the other system)."""
        rule: CreateRule | None = self.create.crm_to_erp if source == "crm" else self.create.erp_to_crm
        return rule

    def queried(self, system: str) -> dict[str, SideSpec]:
        """Fields whose ``system`` side is a query, by name."""
        return self._queried[system]

    @cached_property
    def _queried(self) -> dict[str, dict[str, SideSpec]]:
        return {system: {name: side for name, spec in self.fields.items()
                         if (side := spec.side(system)) is not None and side.query is not None} for system in SYSTEMS}

    def watched(self, system: str) -> dict[str, dict[str, SideSpec]]:
        """Tables of ``system`` watched by queried sides: table -> {field: side}."""
        out: dict[str, dict[str, SideSpec]] = {}
        for name, side in self.queried(system).items():
            for table in side.watch:
                out.setdefault(table, {})[name] = side
        return out

    def synced_fields(self) -> list[str]:
        """Fields present on both systems."""
        return [name for name, spec in self.fields.items() if spec.synced]

    def to_canonical(self, system: str, row: Mapping[str, Any]) -> dict[str, Any]:
        """Canonical values of the fields ``system`` has, from a row (columns absent are skipped).

        Raises :class:`TerminalError` naming the field for invalid input.
        """
        values, invalid = self.read_fields(system, row)
        if invalid:
            raise TerminalError(next(iter(invalid.values())))
        return values

    def read_fields(self, system: str, row: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """The canonical values of the valid fields, and for each invalid field the reason (naming it).

        One bad field is one bad field: the others of the row still sync.
        """
        out: dict[str, Any] = {}
        invalid: dict[str, str] = {}
        for name, spec in self.fields.items():
            side = spec.side(system)
            if side is None or any(c not in row for c in side.columns(name)):
                continue
            where = f"field {name} ({system}.{side.column or 'query'})"
            try:
                value = side.read(row, name)
            except TerminalError as exc:
                invalid[name] = f"{where}: {exc.message}"
                continue
            if isinstance(value, float) and not math.isfinite(value):
                invalid[name] = f"{where} is {value}: only finite numbers can be synced"
            elif spec.required and value in (None, ""):
                invalid[name] = f"{where} is required but empty"
            elif spec.max_length and isinstance(value, str) and len(value) > spec.max_length:
                invalid[name] = f"{where} is {len(value)} characters, over {spec.max_length}"
            else:
                out[name] = value
        return out, invalid

    def to_columns(self, system: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """Column values to write on ``system`` for canonical ``values`` (fields it lacks skipped)."""
        out: dict[str, Any] = {}
        for name, value in values.items():
            side = self.fields[name].side(system)
            if side is not None and not side.read_only:
                out[side.written] = side.converter.backward(value)
        return out


def first_error(exc: ValidationError) -> tuple[str, str]:
    """The dotted key of a validation error and its message, as a person reads them."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "literal[")))
    return key, str(err["msg"]).removeprefix("Value error, ")


def read_yaml(path: Path, what: str, hint: str | None = None) -> Any:
    """A YAML file's content; :class:`ConfigError` when it cannot be read or parsed."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}", hint=hint) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}".replace("\n", " ")) from exc


def load_profile(path: Path) -> Profile:
    """Read and validate a profile; :class:`ConfigError` names the key and the fix."""
    data = read_yaml(path, "mapping profile")
    if not isinstance(data, dict):
        raise ConfigError(f"mapping profile {path} must be a mapping (entity, sources, fields, ...)")
    schema = data.get("canonical_schema")
    if isinstance(schema, str):
        data["canonical_schema"] = (path.parent / schema).resolve()
    try:
        profile = Profile(**data)
    except ValidationError as exc:
        key, message = first_error(exc)
        raise ConfigError(
            f"mapping profile {path}: {key or 'top level'}: {message}",
            hint=f"fix {key or 'the file'} in {path.name}; see the comments at the top of the demo profile",
        ) from exc
    try:
        known = profile.canonical_fields
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"mapping profile {path}: canonical_schema {profile.canonical_schema} unreadable: {exc}"
        ) from exc
    unknown = sorted(set(profile.fields) - known)
    if unknown:
        raise ConfigError(
            f"mapping profile {path}: fields {', '.join(unknown)} are not in {profile.canonical_schema.name}",
            hint="add them to the canonical .avsc (with a default, to stay compatible) or fix the name",
        )
    return profile


def load_profiles(paths: Sequence[Path]) -> list[Profile]:
    """Load every profile; two may not share an entity or a source table."""
    profiles = [load_profile(p) for p in paths]
    seen: dict[str, Path] = {}
    for path, profile in zip(paths, profiles, strict=True):
        for key in [f"entity {profile.entity}", *(f"table {s}.{profile.table_of(s)}" for s in SYSTEMS)]:
            if key in seen:
                raise ConfigError(f"mapping profiles {seen[key]} and {path} both define {key}",
                                  hint="give each entity, and each table, one profile (processors.profiles)")
            seen[key] = path
    if not profiles:
        raise ConfigError("processors.profiles is empty", hint="name at least one mapping profile")
    return profiles


def profile_of(profiles: Sequence[Profile], entity: str | None) -> Profile:
    """The profile of ``entity`` (the first profile when None)."""
    if entity is None:
        return profiles[0]
    for profile in profiles:
        if profile.entity == entity:
            return profile
    raise ConfigError(f"no mapping profile for entity {entity!r}",
                      hint=f"one of: {', '.join(p.entity for p in profiles)}")
