"""Dynamic batching: requests that arrive close together run through the model as one batch.

Each request puts its inputs on an asyncio queue and waits on a future. One worker task takes the
first waiting request, then gathers more for up to `max_wait_ms` (or until `max_batch_size` inputs),
and runs the batch in the server's single model thread, so the event loop stays free to accept and
parse the next requests meanwhile. Requests that queue up while a batch runs go into the next one
at once. `max_batch_size=1` (or `batching=false`) serves each request on its own.
"""

import asyncio
from collections import Counter
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Pending:
    items: list[Any]
    future: asyncio.Future


class Batcher:
    """`await submit(items)` -> `run(items)`'s results for these items, computed in a batch with other
    requests' items. A request's own items always run together, even if more than max_batch_size."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], executor: Executor, *, max_batch_size: int,
                 max_wait_ms: float) -> None:
        self.run, self.executor = run, executor
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.batch_sizes: Counter[int] = Counter()  # inputs per model call -> how many calls
        self.requests, self.in_flight = 0, 0  # answered; submitted and not answered yet
        self._held: Pending | None = None  # taken from the queue but too big for the batch it was meant for
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def submit(self, items: list[Any]) -> list[Any]:
        pending = Pending(items, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(pending)
        self.in_flight += 1
        try:
            return await pending.future
        finally:
            self.in_flight -= 1

    async def _gather(self) -> list[Pending]:
        """The next batch: the first waiting request and those that join within max_wait."""
        first = self._held or await self.queue.get()
        self._held = None
        batch, size = [first], len(first.items)
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while size < self.max_batch_size:
            try:
                if self.queue.empty():
                    timeout = deadline - asyncio.get_running_loop().time()
                    if timeout <= 0:
                        break
                    nxt = await asyncio.wait_for(self.queue.get(), timeout)
                else:
                    nxt = self.queue.get_nowait()
            except asyncio.TimeoutError:
                break
            if size + len(nxt.items) > self.max_batch_size:
                self._held = nxt  # first in the next batch
                break
            batch.append(nxt)
            size += len(nxt.items)
        return [p for p in batch if not p.future.cancelled()]  # a client that went away needs no answer

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            items = [item for p in batch for item in p.items]
            if not items:
                continue
            try:
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
        return {"requests": self.requests, "batches": calls, "in_flight": self.in_flight,
                "mean_batch_size": round(sum(k * v for k, v in self.batch_sizes.items()) / calls, 3) if calls else 0,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "max_batch_size": self.max_batch_size, "max_wait_ms": self.max_wait * 1000}
