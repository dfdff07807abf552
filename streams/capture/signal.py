"""Ask Debezium to read rows again: an incremental snapshot of one table filtered by keys.

The rows come back as ordinary read events, so whatever the sync then does with them (align a pair
a person just linked, repair drift ``compare`` found, meet a row it never saw) goes through identity
and reconcile like any change: the policies decide, nothing is written directly.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

import psycopg

from streams.mapping.profile import Profile
from streams.settings import Settings

KEYS_PER_SIGNAL = 500


def _literal(key: str) -> str:
    return "'" + key.replace("'", "''") + "'"


def resnapshot(profile: Profile, settings: Settings, system: str, keys: Sequence[str]) -> int:
    """Signal re-reads of these rows of the profile's table on ``system``; how many signals were sent."""
    table = profile.table_of(system)
    column = profile.key_of(system)
    signals = []
    for start in range(0, len(keys), KEYS_PER_SIGNAL):
        chunk = keys[start:start + KEYS_PER_SIGNAL]
        condition = f"{column} IN ({', '.join(_literal(k) for k in chunk)})"
        signals.append(json.dumps({"data-collections": [table], "type": "incremental",
                                   "additional-conditions": [{"data-collection": table, "filter": condition}]}))
    if signals:
        with psycopg.connect(**settings.database(system).conninfo(), autocommit=True) as conn:
            for data in signals:
                conn.execute("INSERT INTO sync_meta.debezium_signal (id, type, data) VALUES (%s, 'execute-snapshot',"
                             " %s)", (str(uuid.uuid4()), data))
    return len(signals)
