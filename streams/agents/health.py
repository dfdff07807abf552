"""The health checks: every few seconds, what ``status``, the metrics and the alerts read.

Consumer lag per partition, progress when idle, the manual conflicts waiting, and whether a topic
this worker reads was deleted and created again (then the worker ends and is restarted).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from streams import metrics
from streams.agents.loop import fatal
from streams.topics import topic_ids

if TYPE_CHECKING:
    from streams.app import Processors

log = logging.getLogger(__name__)


class Health:
    """The health checks of a worker."""

    def __init__(self, ctx: Processors) -> None:
        self.ctx = ctx

    async def tick(self) -> None:
        """Lag and progress into the metrics; the conflict queue; the topics' incarnations."""
        consumer: Any = self.ctx.app.consumer
        behind = 0
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)  # from fetch responses
            if highwater is None:
                continue  # not fetched yet
            committed = consumer._committed_offset.get(tp)  # Faust keeps the group's committed offsets
            if committed is not None and committed > highwater:
                fatal(f"{tp.topic}[{tp.partition}]: committed offset {committed} is past the end ({highwater}):"
                      " the topic was deleted and created again")
            lag = max(0, highwater - (committed or 0))
            behind += lag
            metrics.CONSUMER_LAG.labels(self.ctx.app.conf.id, tp.topic, str(tp.partition)).set(lag)
        if not behind:  # idle, not stalled: nothing waits for any stage of this worker
            for stage in self.ctx.stages:
                metrics.STAGE_PROGRESS.labels(stage).set(time.time())
        await self.ctx.retrying("health", self.check_incarnations)
        for flow in self.ctx.flows:
            count, oldest = await self.ctx.retrying("health", self.ctx.store.open_conflicts_summary, flow.entity)
            metrics.CONFLICTS_OPEN.labels(flow.entity).set(count)
            metrics.CONFLICT_OLDEST_OPEN.labels(flow.entity).set(oldest)

    def check_incarnations(self) -> None:
        """A topic this worker reads that was deleted and created again ends the worker (read afresh on restart).

        Its offsets, positions and progress belong to the old topic; carrying them over would skip
        the new topic's records as replays.
        """
        now = topic_ids(self.ctx.admin, self.ctx.read_topics)
        for topic, topic_id in now.items():
            known = self.ctx.incarnations.setdefault(topic, topic_id)
            if known != topic_id:
                fatal(f"topic {topic} was deleted and created again (id {known} is now {topic_id})")
