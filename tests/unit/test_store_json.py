"""JSON read and written by orjson, with the standard library's results (``streams.jsontext``): pure."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streams.jsontext import dumps as _json
from streams.jsontext import loads as _loads

scalars = st.none() | st.booleans() | st.text() | st.integers() | st.floats(allow_nan=False)
documents = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)


def _exactly(value: Any) -> str:
    """A value with its types showing (1 and 1.0 differ, as do an int and the float it rounds to)."""
    return json.dumps(value, sort_keys=True)


@given(documents, st.booleans())
def test_a_stored_document_reads_as_the_standard_library_reads_it(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert _exactly(_loads(memoryview(text))) == _exactly(json.loads(text))


def test_numbers_orjson_reads_otherwise_read_as_python_does() -> None:
    for text in (b'{"n": 123456789012345678901234567890}', b"[-9223372036854775809]", b"1e400", b"-1e400"):
        assert _exactly(_loads(text)) == _exactly(json.loads(text))
    assert isinstance(_loads(b"[123456789012345678901234567890]")[0], int)



finite = st.none() | st.booleans() | st.text() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
stored = st.recursive(
    finite, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)


@given(stored)
def test_a_document_is_written_as_the_standard_library_writes_it(value: Any) -> None:
    """The same document, integers beyond 64 bits included (orjson refuses them: the standard library writes those)."""
    assert _exactly(json.loads(_json(value))) == _exactly(json.loads(json.dumps(value, ensure_ascii=False)))


def test_values_json_cannot_hold_are_written_as_text_as_before() -> None:
    when = datetime.datetime(2026, 12, 1, 10, 0, tzinfo=datetime.UTC)
    for value in ({"at": when}, [decimal.Decimal("1.10")], {1: "one", None: "none"}, uuid.UUID(int=1)):
        assert json.loads(_json(value)) == json.loads(json.dumps(value, ensure_ascii=False, default=str))
