"""Queried sides: a field's value read from other rows of its system (a child row, an aggregate).

A profile's side with ``query`` (ERPNext's credit limit in ``"tabCustomer Credit Limit"``, stock
summed over ``"tabBin"``) has no column in the entity's row. The worker reads it again for every
change of the entity's row (so a record is never linked or created without it) and for every
change of a table the side ``watch``es (the row names the entity by its key column): that change
becomes a *partial* change of the entity, carrying the queried fields only. Blocking (database
reads, each entity's queries in one snapshot); the normalize stage runs it in a thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.errors import TerminalError
from streams.mapping.profile import QUERIED, Profile, SideSpec
from streams.topics import raw_topic


@dataclass(frozen=True)
class Watch:
    """A watched table's changes name an entity: its profile, system and the fields they recompute."""

    profile: Profile
    system: str
    table: str
    fields: Mapping[str, SideSpec]

    def key_of(self, row: Mapping[str, Any]) -> str | None:
        """The entity key the changed row names (None: it names none)."""
        column = next(iter(self.fields.values())).watch[self.table]
        if column not in row:
            raise TerminalError(f"a change of watched table {self.table} lacks column {column} (the"
                                f" {self.profile.entity}'s key): set REPLICA IDENTITY FULL on it")
        value = row[column]
        return None if value is None else str(value)


def watches(profiles: Sequence[Profile]) -> dict[str, list[Watch]]:
    """Raw topic -> the watches of its table."""
    out: dict[str, list[Watch]] = {}
    for profile in profiles:
        for system in ("crm", "erp"):
            for table, fields in profile.watched(system).items():
                out.setdefault(raw_topic(system, table), []).append(Watch(profile, system, table, fields))
    return out


def with_queried(readers: Mapping[str, Any], items: Sequence[tuple[Profile, str, str, Mapping[str, Any]]]
                 ) -> list[dict[str, Any]]:
    """Each ``(profile, system, key, row)``'s row with its queried sides' values (``QUERIED`` columns)."""
    out = []
    for profile, system, key, row in items:
        queried = profile.queried(system)
        extended = dict(row)
        if queried:
            found = readers[system].read([side.query for side in queried.values()], {"key": key})
            for (name, _), rows in zip(queried.items(), found, strict=True):
                extended[QUERIED.format(name)] = next(iter(rows[0].values())) if rows else None
        out.append(extended)
    return out
