"""Dynamic batching: requests that arrive close together run through the model as one batch.

Each request puts its inputs in a queue and waits on a future. One worker task takes the
first waiting request, then gathers those that arrive within `max_wait_ms` of it (until
`max_batch_size` inputs wait), and runs the batch in the server's single model thread, so the event
loop stays free to accept and parse the next requests meanwhile. Requests that queue up while a batch
runs have waited already: they go into the next batch at once. A request that is the only one in
flight does not wait either: there is no one to share a batch with, so a lone client is answered as
fast as by an unbatched server. `max_batch_size=1` (or `batching=false`) serves each request on its
own.
"""

import asyncio
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any


@dataclass
class Pending:
    items: list[Any]
    future: asyncio.Future
    arrived: float  # loop time


class Batcher:
    """`await submit(items)` -> `run(items)`'s results for these items, computed in a batch with other
    requests' items. A request's own items always run together, even if more than max_batch_size.
    `run=None`: a server with nothing to batch (a text generator), whose requests never submit."""

    def __init__(
        self,
        run: Callable[[list[Any]], list[Any]] | None,
        executor: Executor,
        *,
        max_batch_size: int,
        max_wait_ms: float,
    ) -> None:
        self.run, self.executor = run, executor
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.waiting: deque[Pending] = deque()
        self.waiting_items = 0
        self.batch_sizes: Counter[int] = Counter()  # inputs per model call -> how many calls
        self.requests, self.in_flight = 0, 0  # answered; submitted and not answered yet
        self._wake: asyncio.Future | None = None  # the worker sleeps on it ...
        self._wake_at = 1  # ... until this many inputs wait
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def submit(self, items: list[Any]) -> list[Any]:
        loop = asyncio.get_running_loop()
        pending = Pending(items, loop.create_future(), loop.time())
        self.waiting.append(pending)
        self.waiting_items += len(items)
        if self._wake is not None and not self._wake.done() and self.waiting_items >= self._wake_at:
            self._wake.set_result(None)
        self.in_flight += 1
        try:
            return await pending.future
        finally:
            self.in_flight -= 1

    async def _sleep(self, wake_at: int, timeout: float | None) -> None:
        """Until `wake_at` inputs wait, or `timeout` seconds have passed."""
        loop = asyncio.get_running_loop()
        self._wake, self._wake_at = loop.create_future(), wake_at
        timer = None if timeout is None else loop.call_later(timeout, _resolve, self._wake)
        try:
            await self._wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()

    async def _gather(self) -> list[Pending]:
        """The next batch: the first waiting request and those that arrive within max_wait of it
        (requests that queued while the model was busy have waited already and go at once; waiting
        requests that are all the server has in flight go at once too)."""
        if not self.waiting:
            await self._sleep(1, None)
        left = self.waiting[0].arrived + self.max_wait - asyncio.get_running_loop().time()
        others = self.in_flight > len(self.waiting)  # requests being answered, whose clients may send again
        if left > 0 and self.waiting_items < self.max_batch_size and others:
            await self._sleep(self.max_batch_size, left)
        batch: list[Pending] = []
        size = 0
        while self.waiting and (not batch or size + len(self.waiting[0].items) <= self.max_batch_size):
            batch.append(self.waiting.popleft())
            size += len(batch[-1].items)
            self.waiting_items -= len(batch[-1].items)
        return [p for p in batch if not p.future.cancelled()]  # a client that went away needs no answer

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            items = [item for p in batch for item in p.items]
            if not items:
                continue
            try:
                assert self.run is not None, "this Batcher has no model to run (run=None)"
                results = await loop.run_in_executor(self.executor, self.run, items)
            except Exception as e:  # the model failed: every request of the batch gets the error
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            self.batch_sizes[len(items)] += 1
            self.requests += len(batch)
            start = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result(results[start : start + len(p.items)])
                start += len(p.items)

    def stats(self) -> dict:
        calls = sum(self.batch_sizes.values())
        return {
            "requests": self.requests,
            "batches": calls,
            "in_flight": self.in_flight,
            "mean_batch_size": round(sum(k * v for k, v in self.batch_sizes.items()) / calls, 3) if calls else 0,
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "max_batch_size": self.max_batch_size,
            "max_wait_ms": self.max_wait * 1000,
        }


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
