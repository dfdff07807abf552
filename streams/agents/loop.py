"""The batch loop every agent runs, written once: take a batch, handle it until done, then acknowledge.

A batch taken (``agents.take``, Faust's ``take_events`` without its idle wake-ups) is acknowledged
when the agent's loop moves on or raises, so an exception escaping a handler would commit events
whose effects never happened. Here a
handler's batch is retried until it succeeds: transient failures (a database, the broker or the
registry unreachable) with capped, jittered backoff, each counted; a batch that cannot succeed
within ``stall_exit_s`` — or fails in a way no retry can fix — ends the process *before* anything
is acknowledged, so the supervisor (``up``, Kubernetes) restarts it and the batch is read again.
A worker stopped in the middle of a batch (Faust cancels its agents) leaves the same way. Bad
*events* never get here: handlers dead-letter them one by one and go on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
from confluent_kafka import KafkaException

from streams import metrics
from streams.agents.take import take_events
from streams.errors import TransientError

log = logging.getLogger(__name__)

EXIT_STALLED = 70  # the process ends so that its supervisor starts it again
TRANSIENT = (TransientError, psycopg.OperationalError, KafkaException, asyncio.TimeoutError, ConnectionError)


def fatal(reason: str) -> None:
    """End the process at once: nothing taken since the last acknowledgement is acknowledged."""
    log.critical("%s; exiting (status %d) so the supervisor restarts this process and the batch is read"
                 " again", reason, EXIT_STALLED)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_STALLED)


class Retry:
    """Runs an effect until it succeeds, backing off on transient failures, for at most ``stall_exit_s``."""

    def __init__(self, stall_exit_s: float, first_delay: float = 0.5, max_delay: float = 30.0) -> None:
        self.stall_exit_s = stall_exit_s
        self.first_delay = first_delay
        self.max_delay = max_delay

    async def __call__(self, what: str, effect: Callable[[], Awaitable[Any]]) -> Any:
        """``await effect()`` until it succeeds; retried on transient errors, fatal on anything else."""
        delay, since = self.first_delay, time.monotonic()
        while True:
            try:
                return await effect()
            except TRANSIENT as exc:
                reason = getattr(exc, "message", None) or str(exc).strip() or type(exc).__name__
                waited = time.monotonic() - since
                if waited > self.stall_exit_s:
                    fatal(f"{what}: no progress for {waited:.0f}s (limit processors.stall_exit_s): {reason}")
                metrics.RETRIES.labels(what.split()[0]).inc()
                sleep = random.uniform(delay / 2, delay)
                log.warning("%s: %s; retrying in %.1fs", what, reason, sleep)
                await asyncio.sleep(sleep)
                delay = min(delay * 2, self.max_delay)
            except asyncio.CancelledError:
                raise  # the worker is stopping: the batch was not acknowledged
            except Exception as exc:  # a bug or an impossible state: never acknowledge, never drop
                log.exception("%s failed", what)
                fatal(f"{what}: unexpected {type(exc).__name__}: {exc}")

    async def blocking(self, what: str, func: Callable[..., Any], *args: Any) -> Any:
        """A blocking call in a thread, under the same rules."""
        return await self(what, lambda: asyncio.to_thread(func, *args))


def chunks(messages: list[Any], size: int) -> list[list[Any]]:
    """``messages`` in runs of about ``size``, never splitting the items of one batch record.

    An applier records its progress per record: the items of one are applied in one transaction.
    """
    out: list[list[Any]] = []
    for m in messages:
        if out and (len(out[-1]) < size or _position(out[-1][-1]) == _position(m)):
            out[-1].append(m)
        else:
            out.append([m])
    return out


def _position(message: Any) -> tuple[str, int, int]:
    return message.topic, message.partition, message.offset


async def _now(func: Callable[..., Any], *args: Any) -> Any:
    return func(*args)


async def batches(stream: Any, stage: str, handler: Callable[[list[Any]], Awaitable[None]], retry: Retry,
                  size: int, within: float, expand: Callable[[list[Any]], list[Any]] | None = None
                  ) -> AsyncIterator[None]:
    """The agent body: each batch of ``stream``'s messages handled until done, then acknowledged.

    ``expand`` replaces batch records by their items (``streams.batching``); the handler gets at
    most ``size`` of them at a time, and the batch is acknowledged once it handled them all.
    """
    async for events in take_events(stream, size, within):
        taken = [e.message for e in events]
        started = time.monotonic()
        try:
            if expand is not None:
                taken = await retry(stage, functools.partial(_now, expand, taken))
            metrics.STAGE_EVENTS.labels(stage, "in").inc(len(taken))
            for chunk in chunks(taken, size):
                await retry(stage, functools.partial(handler, chunk))
        except asyncio.CancelledError:
            # Stopped in the middle of a batch: its effects may be half done, and Faust would
            # acknowledge it on the way out. Leave without acknowledging; it is read again.
            fatal(f"{stage}: stopped while handling a batch of {len(taken)}")
        metrics.STAGE_SECONDS.labels(stage).observe(time.monotonic() - started)
        metrics.STAGE_PROGRESS.labels(stage).set(time.time())
        yield None  # Faust acknowledges the batch now, after its effects
