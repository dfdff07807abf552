"""Avro schema compatibility, as the Confluent Schema Registry defines its levels. Pure.

``reader_problems(reader, writer)`` lists why data written with ``writer`` cannot be read with
``reader`` under Avro's schema-resolution rules (empty list = readable). The levels:
BACKWARD = the new schema reads data written with the old one; FORWARD = the old reads the new;
FULL = both; ``*_TRANSITIVE`` = against every earlier version instead of the latest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}
LEVELS = ("BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE", "NONE")

Schema = Any  # parsed Avro JSON: str | list | dict


def _fullname(schema: dict[str, Any], namespace: str | None) -> str:
    name: str = schema["name"]
    if "." in name:
        return name
    ns = schema.get("namespace", namespace)
    return f"{ns}.{name}" if ns else name


def _collect(schema: Schema, names: dict[str, dict[str, Any]], namespace: str | None = None) -> None:
    """Index every named type (record, enum, fixed) by full name."""
    if isinstance(schema, list):
        for branch in schema:
            _collect(branch, names, namespace)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            full = _fullname(schema, namespace)
            names[full] = schema
            namespace = full.rpartition(".")[0] or None
        if kind in ("record", "error"):
            for fld in schema.get("fields", []):
                _collect(fld["type"], names, namespace)
        elif kind == "array":
            _collect(schema["items"], names, namespace)
        elif kind == "map":
            _collect(schema["values"], names, namespace)
        elif isinstance(kind, (dict, list)):
            _collect(kind, names, namespace)


class _Resolver:
    def __init__(self, reader: Schema, writer: Schema) -> None:
        self.reader_names: dict[str, dict[str, Any]] = {}
        self.writer_names: dict[str, dict[str, Any]] = {}
        _collect(reader, self.reader_names)
        _collect(writer, self.writer_names)
        self.seen: set[tuple[int, int]] = set()

    def _deref(self, schema: Schema, names: dict[str, dict[str, Any]]) -> Schema:
        if isinstance(schema, str) and schema not in PRIMITIVES:
            for full, named in names.items():
                if full == schema or full.rpartition(".")[2] == schema:
                    return named
        if isinstance(schema, dict) and isinstance(schema.get("type"), str) and schema["type"] in PRIMITIVES:
            return schema["type"]
        if isinstance(schema, dict) and isinstance(schema.get("type"), (dict, list)):
            return schema["type"]
        return schema

    @staticmethod
    def _kind(schema: Schema) -> str:
        if isinstance(schema, list):
            return "union"
        if isinstance(schema, str):
            return schema
        kind: str = schema["type"]
        return "record" if kind == "error" else kind

    def problems(self, reader: Schema, writer: Schema, path: str) -> list[str]:
        reader = self._deref(reader, self.reader_names)
        writer = self._deref(writer, self.writer_names)
        key = (id(reader), id(writer))
        if key in self.seen:  # recursive types: assume compatible on the second visit
            return []
        if isinstance(reader, dict) and isinstance(writer, dict):
            self.seen.add(key)
        r_kind, w_kind = self._kind(reader), self._kind(writer)
        if w_kind == "union":
            out: list[str] = []
            for i, branch in enumerate(writer):
                out.extend(self.problems(reader, branch, f"{path}[writer branch {i}]"))
            return out
        if r_kind == "union":
            for branch in reader:
                if not self.problems(branch, writer, path):
                    return []
            return [f"{path}: reader union has no branch for writer type {w_kind}"]
        if r_kind == w_kind:
            return self._same_kind(reader, writer, r_kind, path)
        if r_kind in PROMOTIONS.get(w_kind, set()):
            return []
        return [f"{path}: writer type {w_kind} cannot be read as {r_kind}"]

    def _same_kind(self, reader: Schema, writer: Schema, kind: str, path: str) -> list[str]:
        if kind in PRIMITIVES:
            return []
        if kind == "array":
            return self.problems(reader["items"], writer["items"], f"{path}[]")
        if kind == "map":
            return self.problems(reader["values"], writer["values"], f"{path}{{}}")
        if kind == "fixed":
            if reader["size"] != writer["size"]:
                return [f"{path}: fixed size {writer['size']} cannot be read as size {reader['size']}"]
            return []
        if kind == "enum":
            missing = set(writer.get("symbols", [])) - set(reader.get("symbols", []))
            if missing and "default" not in reader:
                return [f"{path}: reader enum lacks symbols {sorted(missing)}"]
            return []
        return self._record(reader, writer, path)

    def _record(self, reader: dict[str, Any], writer: dict[str, Any], path: str) -> list[str]:
        out: list[str] = []
        writer_fields: dict[str, dict[str, Any]] = {}
        for fld in writer.get("fields", []):
            writer_fields[fld["name"]] = fld
        for fld in reader.get("fields", []):
            names = [fld["name"], *fld.get("aliases", [])]
            match = next((writer_fields[n] for n in names if n in writer_fields), None)
            where = f"{path}.{fld['name']}" if path else fld["name"]
            if match is None:
                if "default" not in fld:
                    out.append(f"{where}: reader field has no default and is missing from the writer")
                continue
            out.extend(self.problems(fld["type"], match["type"], where))
        return out


def reader_problems(reader: Schema, writer: Schema) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (empty: it can)."""
    return _Resolver(reader, writer).problems(reader, writer, "")


def check(level: str, new: Schema, existing: Sequence[Schema]) -> list[str]:
    """Problems with registering ``new`` after ``existing`` (oldest first) under ``level``."""
    if level == "NONE" or not existing:
        return []
    against = existing if level.endswith("_TRANSITIVE") else existing[-1:]
    base = level.removesuffix("_TRANSITIVE")
    out: list[str] = []
    for old in against:
        if base in ("BACKWARD", "FULL"):
            out.extend(f"BACKWARD: {p}" for p in reader_problems(new, old))
        if base in ("FORWARD", "FULL"):
            out.extend(f"FORWARD: {p}" for p in reader_problems(old, new))
    return out
