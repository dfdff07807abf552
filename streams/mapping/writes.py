"""How the sync's writes fit a target's own conventions: stamped columns and formatted keys. Pure.

``stamp``: columns every write of the sync also sets, as the target's own application would — its
modification time (``modified``, ``write_date``) or who changed the row. A value is a literal, or
``{now: <zone>}``: the write's time, as ``timestamptz`` (``UTC``) or as the wall-clock time of
``<zone>`` for a ``timestamp without time zone`` column.

``new_key``: the key of a row the sync creates, from a sequence and a format (``CUST-{year}-{n:05d}``
gives ``CUST-2026-00001``) instead of the table's default.
"""

from __future__ import annotations

import re
from string import Formatter
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator

_MODEL = ConfigDict(frozen=True, extra="forbid")


class Now(BaseModel):
    """The write's time in ``now``'s zone (``UTC``: a ``timestamptz``)."""

    model_config = _MODEL
    now: str

    @field_validator("now")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value.upper() != "UTC":
            try:
                ZoneInfo(value)
            except (KeyError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r} (UTC or an IANA zone like Asia/Shanghai)") from exc
        return value

    @property
    def utc(self) -> bool:
        """A ``timestamptz`` (no zone conversion)."""
        return self.now.upper() == "UTC"


Stamp = dict[str, Now | str | int | bool]  # column -> the write's time or a literal


class KeyFormat(BaseModel):
    """A new row's key: the next value of ``sequence`` through ``format``.

    ``format`` holds ``{n}`` once (the sequence's value; ``{n:05d}`` pads it to five digits) and may
    hold ``{year}`` (the write's year): ``CUST-{year}-{n:05d}`` gives ``CUST-2026-00001``.
    """

    model_config = _MODEL
    sequence: str = Field(pattern=r"^[A-Za-z_]\w*\.[A-Za-z_]\w*$")
    format: str = "{n}"

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        parts = cls.parse(value)
        if [kind for kind, _ in parts].count("n") != 1:
            raise ValueError(f"format {value!r} must hold {{n}} exactly once (else keys repeat)")
        return value

    @staticmethod
    def parse(text: str) -> list[tuple[str, str | int]]:
        """The format as parts: ``("text", literal)``, ``("n", width)`` (0: unpadded), ``("year", 4)``."""
        parts: list[tuple[str, str | int]] = []
        try:
            parsed = list(Formatter().parse(text))
        except ValueError as exc:
            raise ValueError(f"format {text!r}: {exc}") from exc
        for literal, name, spec, conversion in parsed:
            if literal:
                parts.append(("text", literal))
            if name is None:
                continue
            padded = re.fullmatch(r"0(\d{1,2})d", spec or "")
            if name == "n" and not conversion and (not spec or padded):
                parts.append(("n", int(padded.group(1)) if padded else 0))
            elif name == "year" and not spec and not conversion:
                parts.append(("year", 4))
            else:
                raise ValueError(f"format {text!r}: {{{name}{':' + spec if spec else ''}}} is not one of"
                                 " {n}, {n:0<width>d}, {year}")
        return parts
