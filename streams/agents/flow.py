"""One mapping profile's entity as the worker sees it: its topics."""

from __future__ import annotations

from dataclasses import dataclass

from streams.mapping.profile import Profile
from streams.topics import changes_topic, raw_topic


@dataclass(frozen=True)
class Flow:
    """One mapping profile's entity: its raw topics, internal changes topic and canonical topic."""

    profile: Profile

    @property
    def entity(self) -> str:
        """The canonical entity name."""
        return self.profile.entity

    @property
    def raw_topics(self) -> list[str]:
        """The Debezium topics of the entity's table on each system."""
        return [raw_topic(s, self.profile.table_of(s)) for s in ("crm", "erp")]

    @property
    def changes(self) -> str:
        """Its ``sync.changes.<entity>`` topic."""
        return changes_topic(self.entity)

    @property
    def canonical(self) -> str | None:
        """Its canonical topic, if the profile names one."""
        return self.profile.canonical.topic if self.profile.canonical else None
