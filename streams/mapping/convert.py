"""Field conversions between a system's column and the canonical value. Pure.

Each converter has ``to_canonical`` (source column -> canonical) and ``from_canonical``
(canonical -> the column value to write). Bad input raises :class:`TerminalError` (dead letter).
"""

from __future__ import annotations

import base64
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from streams.errors import TerminalError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CENT = Decimal("0.01")
MILLI = Decimal("0.001")


@dataclass(frozen=True)
class Converter:
    """A pair of pure functions, ``None`` always mapping to ``None``."""

    name: str
    to_canonical: Callable[[Any], Any]
    from_canonical: Callable[[Any], Any]

    def forward(self, value: Any) -> Any:
        """Column value -> canonical value."""
        return None if value is None else self.to_canonical(value)

    def backward(self, value: Any) -> Any:
        """Canonical value -> column value."""
        return None if value is None else self.from_canonical(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TerminalError(f"expected text, got {type(value).__name__}")
    return value.strip()


def _upper(value: Any) -> str:
    return _text(value).upper()


def _email(value: Any) -> str:
    text = _text(value).lower()
    if text and "@" not in text:
        raise TerminalError(f"not an e-mail address: {text!r}")
    return text


def _phone(value: Any) -> str:
    # Full-width digits and dashes (common in Chinese input) become ASCII; spaces go.
    return "".join(unicodedata.normalize("NFKC", _text(value)).split())


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise TerminalError(f"expected an integer, got {value!r}")
    if isinstance(value, Decimal) and value != value.to_integral_value():
        raise TerminalError(f"expected an integer, got {value}")
    return int(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TerminalError(f"expected a boolean, got {value!r}")
    return value


def exact_decimal(value: Any) -> Decimal:
    """An exact decimal from what a column arrives as.

    A decimal, an integer, a decimal string, or Debezium's ``VariableScaleDecimal`` (a ``numeric``
    without declared scale: ``{scale, value}``, the unscaled value as big-endian two's-complement
    bytes, or those bytes in base64 from JSON).
    """
    if isinstance(value, Mapping) and set(value) == {"scale", "value"}:
        raw = value["value"]
        try:
            raw = base64.b64decode(raw, validate=True) if isinstance(raw, str) else raw
            unscaled = int.from_bytes(raw, "big", signed=True)
            return Decimal(unscaled).scaleb(-int(value["scale"]))
        except (TypeError, ValueError) as exc:
            raise TerminalError(f"not an amount: {value!r}") from exc
    if isinstance(value, (float, bool)):
        raise TerminalError(f"amounts must be exact decimals, not {type(value).__name__}s")
    try:
        return Decimal(value)
    except (InvalidOperation, TypeError, ValueError) as exc:
        raise TerminalError(f"not an amount: {value!r}") from exc


def _scaled(value: Any, factor: int, unit: str) -> int:
    """An exact decimal times ``factor`` as an integer; a remainder is an error, never rounded."""
    scaled = exact_decimal(value) * factor
    if scaled != scaled.to_integral_value():
        raise TerminalError(f"{value} has a fraction of a {unit}")
    return int(scaled)


def yuan_to_fen(value: Any) -> int:
    """Yuan (exact decimal) -> fen (integer); a fraction of a fen is an error, never rounded."""
    return _scaled(value, 100, "fen")


def fen_to_yuan(value: Any) -> Decimal:
    """Fen (integer) -> yuan with two decimals, exact."""
    return (Decimal(_integer(value)) / 100).quantize(CENT)


def to_milli(value: Any) -> int:
    """A quantity with up to three decimals (``numeric(12,3)``) -> integer thousandths, exact."""
    return _scaled(value, 1000, "thousandth")


def from_milli(value: Any) -> Decimal:
    """Integer thousandths -> a quantity with three decimals, exact."""
    return (Decimal(_integer(value)) / 1000).quantize(MILLI)


def scaled(places: int) -> Converter:
    """A decimal column of any scale <-> integer units of ``10**-places``.

    E.g. ``numeric(21,9)`` in currency units with ``scaled:2``: yuan <-> fen. A finer remainder is
    an error, never rounded; a value written back carries ``places`` decimals.
    """
    factor, quantum = 10 ** places, Decimal(1).scaleb(-places)
    unit = f"1/{factor}" if places else "unit"

    def forward(value: Any) -> int:
        return _scaled(value, factor, unit)

    def backward(value: Any) -> Decimal:
        amount: Decimal = Decimal(_integer(value)) / factor
        return amount.quantize(quantum)

    return Converter(f"scaled:{places}", forward, backward)


def _decimal(value: Any) -> str:
    """A decimal column of any scale -> its exact value as text, trailing zeros dropped (``"2999.95"``)."""
    amount = exact_decimal(value)
    return format(amount.normalize() if amount != amount.to_integral_value() else amount.quantize(Decimal(1)), "f")


def local_micros(zone: str) -> Converter:
    """``timestamp without time zone`` holding ``zone`` wall-clock time <-> aware UTC datetime.

    Debezium sends such a column as microseconds of the wall-clock value (``MicroTimestamp``).
    """
    tz = ZoneInfo(zone)

    def forward(value: Any) -> datetime:
        wall = EPOCH + timedelta(microseconds=_integer(value))
        return wall.replace(tzinfo=tz).astimezone(UTC)

    def backward(value: Any) -> datetime:
        # psycopg writes a naive datetime to a timestamp column as is: the wall-clock time.
        return value.astimezone(tz).replace(tzinfo=None)  # type: ignore[no-any-return]

    return Converter(f"local_micros:{zone}", forward, backward)


def _iso_utc(value: Any) -> datetime:
    """A ``timestamptz`` as Debezium sends it (ISO-8601 string) -> aware UTC datetime."""
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError as exc:
        raise TerminalError(f"not an ISO-8601 timestamp: {value!r}") from exc


def enum_map(mapping: Mapping[str, Any]) -> Converter:
    """Source values -> canonical values (one to one); anything else is invalid."""
    reverse = {v: k for k, v in mapping.items()}
    if len(reverse) != len(mapping):
        raise ValueError("enum map must be one to one")

    def forward(value: Any) -> Any:
        key = str(value).strip() if isinstance(value, str) else value
        if key not in mapping:
            raise TerminalError(f"invalid enum value {value!r}; allowed: {', '.join(map(str, mapping))}")
        return mapping[key]

    def backward(value: Any) -> Any:
        if value not in reverse:
            raise TerminalError(f"no source value for canonical {value!r}")
        return reverse[value]

    return Converter("enum", forward, backward)


SIMPLE: dict[str, Converter] = {
    "text": Converter("text", _text, _text),
    "upper": Converter("upper", _upper, _upper),
    "email": Converter("email", _email, _email),
    "phone": Converter("phone", _phone, _phone),
    "integer": Converter("integer", _integer, _integer),
    "boolean": Converter("boolean", _boolean, _boolean),
    "yuan_to_fen": Converter("yuan_to_fen", yuan_to_fen, fen_to_yuan),
    "milli": Converter("milli", to_milli, from_milli),
    "decimal": Converter("decimal", _decimal, lambda v: exact_decimal(v)),
    "iso_utc": Converter("iso_utc", _iso_utc, lambda v: v),
    "identity": Converter("identity", lambda v: v, lambda v: v),
}


def build(spec: str | Mapping[str, Any]) -> Converter:
    """A converter from its profile spelling: a name, ``scaled:<places>``, ``local_micros:<zone>``, ``{enum: ...}``."""
    if isinstance(spec, Mapping):
        if set(spec) != {"enum"} or not isinstance(spec["enum"], Mapping):
            raise ValueError("a mapping converter must be {enum: {source_value: canonical_value, ...}}")
        return enum_map(spec["enum"])
    if spec.startswith("scaled:"):
        places = spec.split(":", 1)[1]
        if not places.isdigit() or int(places) > 18:
            raise ValueError(f"scaled:<places> takes 0 to 18 decimal places, not {places!r}")
        return scaled(int(places))
    if spec.startswith("local_micros:"):
        zone = spec.split(":", 1)[1]
        try:
            ZoneInfo(zone)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"unknown time zone {zone!r}") from exc
        return local_micros(zone)
    if spec not in SIMPLE:
        raise ValueError(f"unknown converter {spec!r}; one of {', '.join(SIMPLE)}, scaled:<places>,"
                         " local_micros:<zone>, {enum: ...}")
    return SIMPLE[spec]
