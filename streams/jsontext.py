"""JSON text as the standard library reads and writes it, by orjson where that gives the same result.

The sync store's jsonb columns (entity states: ~8 % of a worker reading them, ~10 % writing them
in an initial sync) and the JSON fields of the sync's own records (changes, commands, conflicts).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: Any) -> Any:
    """A json/jsonb column's value (text as bytes), parsed as the standard library parses it.

    orjson, unless the text has a number it would read otherwise (a run of 19 digits or more: an
    integer beyond 64 bits becomes a float there) or refuses (one beyond a double's range). Reading
    entity states was ~8 % of a worker's CPU in an initial sync; a 2.3 KB state: 18.6 -> 10.7 µs.
    """
    text = bytes(data)
    if _LONG_DIGITS not in text.translate(_DIGITS):  # a C loop: ~10x faster than a regular expression here
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


_DIGITS = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))  # every digit "0", every other byte " "
_LONG_DIGITS = b"0" * 19


def dumps(value: Any) -> str:
    """A value as JSON text, as ``json.dumps(ensure_ascii=False, default=str)`` writes it.

    orjson (writing entity states with the standard library was ~10 % of a worker in an initial
    sync), unless it refuses the value (an integer beyond 64 bits). A NaN or an infinity would be
    null there (PostgreSQL refuses them in jsonb either way): canonical values are finite numbers
    (``Profile.read_fields``), and the rest of what the sync writes is its own integers and text.
    """
    try:
        return orjson.dumps(value, default=str, option=_AS_JSON_DUMPS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False, default=str)


# datetimes and dataclasses through default=str, as json.dumps does; keys of any type made text
_AS_JSON_DUMPS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
