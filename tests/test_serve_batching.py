"""bigmodel.serve.batching: requests that arrive together run as one batch, each gets its own results."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from bigmodel.serve.batching import Batcher


class Recorder:
    """A model that doubles its inputs and records every batch it was called with (and on which thread)."""

    def __init__(self, fail_on: object = None) -> None:
        self.batches: list[list] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        if self.fail_on in items:
            raise RuntimeError("model failed")
        return [2 * x for x in items]


async def serve_requests(
    run: Recorder,
    requests: list[list],
    *,
    max_batch_size: int,
    max_wait_ms: float,
    gap_s: float = 0.0,
    busy: bool = False,
) -> list:
    """`requests` submitted one after another, `gap_s` apart. `busy`: another request is in flight
    meanwhile (being answered), as on a server with other clients, so the first request waits
    max_wait_ms for others to join it instead of going alone at once."""
    with ThreadPoolExecutor(1, thread_name_prefix="model") as executor:
        batcher = Batcher(run, executor, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms)
        batcher.start()
        batcher.in_flight += busy
        tasks = []
        for items in requests:
            tasks.append(asyncio.create_task(batcher.submit(items)))
            await asyncio.sleep(gap_s)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        stats = batcher.stats()
        await batcher.stop()
    return results, stats


def test_concurrent_requests_run_as_one_batch_and_get_their_own_results():
    run = Recorder()
    requests = [[i] for i in range(6)]
    results, stats = asyncio.run(serve_requests(run, requests, max_batch_size=32, max_wait_ms=200, busy=True))
    assert results == [[2 * i] for i in range(6)]
    assert run.batches == [list(range(6))]  # one model call, in arrival order
    assert stats["batches"] == 1 and stats["requests"] == 6 and stats["batch_sizes"] == {"6": 1}
    assert run.threads == {"model_0"}  # not on the event loop's thread


def test_a_lone_request_does_not_wait_and_later_arrivals_join_the_next_batch():
    run = Recorder()
    results, stats = asyncio.run(serve_requests(run, [[i] for i in range(4)], max_batch_size=32, max_wait_ms=200))
    assert results == [[0], [2], [4], [6]]
    assert run.batches == [[0], [1, 2, 3]]  # the only request in flight ran at once; the rest arrived
    # while it was being answered, so they waited for each other and went together


def test_a_lone_client_is_answered_without_the_batching_wait():
    run = Recorder()

    async def one_client():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(run, executor, max_batch_size=32, max_wait_ms=5000)
            batcher.start()
            loop = asyncio.get_running_loop()
            start = loop.time()
            answers = [await batcher.submit([i]) for i in range(3)]  # one request at a time
            took = loop.time() - start
            await batcher.stop()
        return answers, took

    answers, took = asyncio.run(one_client())
    assert answers == [[0], [2], [4]] and run.batches == [[0], [1], [2]]
    assert took < 2.5  # three waits of max_wait_ms would take 15 s


def test_batches_stop_at_max_batch_size_and_a_request_is_never_split():
    run = Recorder()
    requests = [[1], [2, 3], [4, 5, 6], [7], [8, 9, 10, 11, 12]]  # the last is bigger than a batch: alone
    results, _ = asyncio.run(serve_requests(run, requests, max_batch_size=4, max_wait_ms=200, busy=True))
    assert results == [[2 * x for x in r] for r in requests]
    assert run.batches == [[1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11, 12]]


def test_max_batch_size_1_runs_every_request_alone():
    run = Recorder()
    results, stats = asyncio.run(serve_requests(run, [[i] for i in range(5)], max_batch_size=1, max_wait_ms=200))
    assert results == [[2 * i] for i in range(5)] and run.batches == [[i] for i in range(5)]
    assert stats["batch_sizes"] == {"1": 5}


def test_requests_further_apart_than_max_wait_run_separately():
    run = Recorder()
    asyncio.run(serve_requests(run, [[1], [2], [3]], max_batch_size=32, max_wait_ms=1, gap_s=0.2))
    assert run.batches == [[1], [2], [3]]


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    run = Recorder(fail_on=2)

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(run, executor, max_batch_size=8, max_wait_ms=100)
            batcher.start()
            first = await asyncio.gather(batcher.submit([1]), batcher.submit([2]), return_exceptions=True)
            after = await batcher.submit([5])
            await batcher.stop()
        return first, after

    first, after = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) for r in first)
    assert after == [10]


@pytest.mark.parametrize("max_wait_ms", [0, 50])
def test_requests_queued_while_the_model_runs_join_the_next_batch(max_wait_ms):
    gate = threading.Event()
    batches = []

    def slow(items):
        batches.append(list(items))
        gate.wait(5)  # the first batch holds the model until every other request has queued
        return items

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(slow, executor, max_batch_size=32, max_wait_ms=max_wait_ms)
            batcher.start()
            first = asyncio.create_task(batcher.submit([0]))
            await asyncio.sleep(0.3)
            rest = [asyncio.create_task(batcher.submit([i])) for i in range(1, 6)]
            await asyncio.sleep(0.1)
            gate.set()
            await asyncio.gather(first, *rest)
            await batcher.stop()

    asyncio.run(scenario())
    assert batches == [[0], [1, 2, 3, 4, 5]]
