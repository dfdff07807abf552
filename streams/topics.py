"""Topic creation, as Kafka Connect's or an operator's would be: on first use, idempotent."""

from __future__ import annotations

import threading

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from streams.errors import TransientError

COMPACTED = {"cleanup.policy": "compact"}


class Topics:
    """Creates topics on first use (as Kafka Connect's topic creation would)."""

    def __init__(self, admin: AdminClient, replication_factor: int) -> None:
        self.admin = admin
        self.replication_factor = replication_factor
        self.known: set[str] = set()
        self._lock = threading.Lock()

    def refresh(self) -> set[str]:
        """Topics the broker has now."""
        try:
            names = set(self.admin.list_topics(timeout=10).topics)
        except KafkaException as exc:
            raise TransientError(f"broker not reachable: {exc}") from exc
        with self._lock:
            self.known |= names
        return names

    def ensure(self, topic: str, partitions: int, config: dict[str, str] | None = None) -> None:
        """Create ``topic`` unless it exists."""
        if topic in self.known:
            return
        with self._lock:
            if topic in self.known:
                return
            futures = self.admin.create_topics(
                [NewTopic(topic, partitions, self.replication_factor, config=config or {})]
            )
            for fut in futures.values():
                try:
                    fut.result(timeout=30)
                except KafkaException as exc:
                    if "TOPIC_ALREADY_EXISTS" not in str(exc):
                        raise TransientError(f"cannot create topic {topic}: {exc}") from exc
            self.known.add(topic)
