"""``agents.take``: batches of a stream's events, acknowledged after their handling, no wake-ups while idle.

The stream is a stand-in with the parts of Faust's ``Stream`` the taker uses: its processors run
for each value read from a queue (as Faust's passive drainer runs them), and it counts the waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from streams.agents.take import take_events


class Stream:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[int] = asyncio.Queue()
        self.channel = self
        self.enable_acks, self.should_stop = True, False
        self._processors: list[Any] = []
        self._active_agens: set[Any] = set()
        self.current_event: Any = None
        self.acked: list[int] = []
        self.waits = 0

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> int:  # what the passive drainer would read: not used by the stand-in's
        raise StopAsyncIteration

    def add_processor(self, processor: Any) -> None:
        self._processors.append(processor)

    def _enable_passive(self, _: Any) -> None:
        async def drain() -> None:
            while True:
                value = await self.queue.get()
                self.current_event = SimpleNamespace(value=value)
                for processor in self._processors:
                    await processor(value)

        self.drainer = asyncio.ensure_future(drain())

    async def wait(self, event: asyncio.Event, timeout: float | None = None) -> Any:
        self.waits += 1
        await asyncio.wait_for(event.wait(), timeout)
        return SimpleNamespace(stopped=False)

    async def ack(self, event: Any) -> None:
        self.acked.append(event.value)

    async def crash(self, exc: BaseException) -> None:
        raise AssertionError(f"the taker crashed the stream: {exc!r}")


async def _next(batches: Any) -> list[int]:
    return [e.value for e in await asyncio.wait_for(batches.__anext__(), 5)]


def _with_stream(body: Callable[[Stream], Awaitable[None]]) -> None:
    """Run ``body`` on a new stream; its drainer (started by the taker) stopped afterwards."""
    async def run() -> None:
        stream = Stream()
        try:
            await body(stream)
        finally:
            if hasattr(stream, "drainer"):
                stream.drainer.cancel()

    asyncio.run(run())


def test_a_burst_comes_in_batches_of_at_most_max_each_acknowledged_when_the_next_is_asked_for() -> None:
    async def body(stream: Stream) -> None:
        batches = take_events(stream, 3, 0.05)
        for value in range(7):
            stream.queue.put_nowait(value)
        assert await _next(batches) == [0, 1, 2]
        assert stream.acked == []  # handled yet? the taker cannot know: nothing acknowledged
        assert await _next(batches) == [3, 4, 5]
        assert stream.acked == [0, 1, 2]
        assert await _next(batches) == [6]
        assert stream.acked == [0, 1, 2, 3, 4, 5]
        assert batches in stream._active_agens  # the stream closes it when it stops
        await batches.aclose()
        assert stream._processors == [] and stream.enable_acks  # the stream as it was

    _with_stream(body)


def test_an_idle_stream_is_not_polled() -> None:
    async def body(stream: Stream) -> None:
        first = asyncio.ensure_future(_next(take_events(stream, 100, 0.005)))
        await asyncio.sleep(0.3)  # 60 windows of 5 ms: Faust's taker would have woken 60 times
        assert stream.waits == 1 and not first.done()
        stream.queue.put_nowait(1)
        assert await first == [1]

    _with_stream(body)


def test_after_an_idle_spell_the_first_event_waits_half_a_window_for_company() -> None:
    async def body(stream: Stream) -> None:
        first = asyncio.ensure_future(_next(take_events(stream, 100, 0.4)))
        await asyncio.sleep(0.6)  # past the first window: the taker sleeps until an event comes
        stream.queue.put_nowait(1)
        await asyncio.sleep(0.03)  # well inside the 0.2 s the first event waits for company
        stream.queue.put_nowait(2)
        assert await first == [1, 2]

    _with_stream(body)
