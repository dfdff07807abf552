"""Avro compatibility rules (pure), checked against fastavro's actual schema resolution."""

from __future__ import annotations

import io

import fastavro
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.registry.compat import check, reader_problems

TYPES = ["int", "long", "float", "double", "string", "bytes", "boolean"]
SAMPLE = {"int": 7, "long": 2**40, "float": 1.5, "double": 2.25, "string": "华信", "bytes": b"\x00\x01",
          "boolean": True}
DEFAULTS = {"int": 0, "long": 0, "float": 0.0, "double": 0.0, "string": "", "bytes": "", "boolean": False}


def record(fields: list[tuple[str, str, bool]]) -> dict[str, object]:
    out = []
    for name, kind, has_default in fields:
        fld: dict[str, object] = {"name": name, "type": kind}
        if has_default:
            fld["default"] = DEFAULTS[kind]
        out.append(fld)
    return {"type": "record", "name": "R", "fields": out}


field_lists = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(TYPES), st.booleans()),
    max_size=4, unique_by=lambda f: f[0],
)


def fastavro_can_read(writer: dict[str, object], reader: dict[str, object]) -> bool:
    buf = io.BytesIO()
    datum = {f["name"]: SAMPLE[f["type"]] for f in writer["fields"]}  # type: ignore[index, union-attr]
    fastavro.schemaless_writer(buf, fastavro.parse_schema(writer), datum)
    buf.seek(0)
    try:
        fastavro.schemaless_reader(buf, fastavro.parse_schema(writer), fastavro.parse_schema(reader))
    except Exception:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(field_lists, field_lists)
def test_verdict_matches_fastavro_resolution(writer_fields, reader_fields) -> None:  # type: ignore[no-untyped-def]
    writer, reader = record(writer_fields), record(reader_fields)
    assert (reader_problems(reader, writer) == []) == fastavro_can_read(writer, reader)


@given(field_lists)
def test_every_schema_reads_itself(fields) -> None:  # type: ignore[no-untyped-def]
    assert reader_problems(record(fields), record(fields)) == []


def test_levels() -> None:
    v1 = record([("a", "string", False)])
    added_optional = record([("a", "string", False), ("b", "long", True)])
    added_required = record([("a", "string", False), ("b", "long", False)])
    assert check("BACKWARD", added_optional, [v1]) == []
    assert check("BACKWARD", added_required, [v1]) != []
    assert check("FORWARD", added_required, [v1]) == []  # old readers ignore the new field
    assert check("FULL", added_required, [v1]) != []
    assert check("NONE", added_required, [v1]) == []
    # Transitive levels look at every version, not only the latest.
    v2 = record([("b", "long", True)])  # reads v1 (b defaults)
    v3 = record([("b", "long", False)])  # reads v2, but not v1 (no b there, no default)
    assert check("BACKWARD", v3, [v1, v2]) == []
    assert check("BACKWARD_TRANSITIVE", v3, [v1, v2]) != []


def test_unions_enums_and_promotions() -> None:
    assert reader_problems(["null", "long"], "int") == []
    assert reader_problems("long", ["null", "long"]) != []
    assert reader_problems("double", "long") == []
    assert reader_problems("int", "long") != []
    enum_old = {"type": "enum", "name": "Tier", "symbols": ["A", "B"]}
    enum_new = {"type": "enum", "name": "Tier", "symbols": ["A", "B", "C"]}
    assert reader_problems(enum_new, enum_old) == []
    assert reader_problems(enum_old, enum_new) != []
    assert reader_problems({**enum_old, "default": "A"}, enum_new) == []
