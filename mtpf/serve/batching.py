"""Micro-batching across apps: requests queue, one worker forms length-sorted batches under a token budget.

The worker waits at most `max_wait_ms` after the first queued row for more rows, sorts everything queued by
length, and cuts it into batches whose padded size (rows x longest row) stays under `max_batch_tokens`; rows of
different apps share a batch. The forward runs on one worker thread, off the event loop. A row whose request
was abandoned (client gone) is dropped right before its batch runs, so it costs no forward.

Tenants are isolated: when a batch that mixes several models' rows fails, each model's rows are run again on their
own, so one broken app fails only its own requests. An answer that is an exception fails only its row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class Pending:
    """A queued row and the future its request awaits."""

    row: object
    tokens: int
    future: asyncio.Future
    queued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """What one forward did, for /metrics."""

    rows: int
    padded_tokens: int
    real_tokens: int
    seconds: float
    queue_seconds: list[float]


class MicroBatcher:
    def __init__(
        self,
        run_batch: Callable[[list], list],
        max_batch_tokens: int = 1024,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[BatchStats], None] | None = None,
        tenant_of: Callable[[object], object] = lambda row: None,
    ) -> None:
        self.run_batch, self.max_batch_tokens, self.max_wait = run_batch, max_batch_tokens, max_wait_ms / 1000
        self.on_batch = on_batch or (lambda stats: None)
        self.tenant_of = tenant_of
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtpf-forward")
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.worker: asyncio.Task | None = None

    def start(self) -> None:
        self.worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """Finish every queued row, then stop the worker (graceful shutdown loses no accepted request)."""
        await self.queue.join()
        if self.worker is not None:
            self.worker.cancel()
        self.executor.shutdown(wait=True)

    async def call(self, function: Callable, *args):
        """Run `function` on the forward thread (e.g. loading an adapter), between batches."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    def submit(self, rows: list, tokens: list[int]) -> list[asyncio.Future]:
        loop = asyncio.get_running_loop()
        pending = [Pending(row, count, loop.create_future()) for row, count in zip(rows, tokens, strict=True)]
        for item in pending:
            self.queue.put_nowait(item)
        return [item.future for item in pending]

    async def _gather(self) -> list[Pending]:
        items = [await self.queue.get()]
        deadline = time.monotonic() + self.max_wait
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                items.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        while not self.queue.empty():  # everything already waiting joins this round
            items.append(self.queue.get_nowait())
        return items

    def _batches(self, items: list[Pending]) -> list[list[Pending]]:
        return length_sorted_batches(items, self.max_batch_tokens)

    async def _run(self, batch: list[Pending]) -> None:
        """Run one batch and settle its futures; a failed mix of tenants is retried tenant by tenant."""
        loop = asyncio.get_running_loop()
        try:
            answers = await loop.run_in_executor(self.executor, self.run_batch, [p.row for p in batch])
        except Exception as err:
            tenants: dict[object, list[Pending]] = {}
            for item in batch:
                tenants.setdefault(self.tenant_of(item.row), []).append(item)
            if len(tenants) > 1:
                logger.warning("a batch of %d tenants failed (%s); running each tenant's rows alone", len(tenants), err)
                for rows in tenants.values():
                    await self._run(rows)
                return
            logger.exception("batch of %d rows failed", len(batch))
            answers = [err] * len(batch)
        for item, answer in zip(batch, answers, strict=True):
            if item.future.done():
                continue
            if isinstance(answer, BaseException):
                item.future.set_exception(answer)
            else:
                item.future.set_result(answer)

    async def _work(self) -> None:
        while True:
            items = await self._gather()
            for batch in self._batches(items):
                batch = [item for item in batch if not item.future.done()]  # abandoned meanwhile: no forward
                if not batch:
                    continue
                started = time.monotonic()
                await self._run(batch)
                seconds = time.monotonic() - started
                self.on_batch(
                    BatchStats(
                        len(batch),
                        len(batch) * max(p.tokens for p in batch),
                        sum(p.tokens for p in batch),
                        seconds,
                        [started - p.queued for p in batch],
                    )
                )
            for _ in items:
                self.queue.task_done()


def length_sorted_batches(items: list, max_batch_tokens: int) -> list[list]:
    """`items` (anything with `.tokens`) sorted by length and cut into batches whose padded size (rows x longest row)
    stays under the budget; a row longer than the budget goes alone."""
    batches: list[list] = []
    for item in sorted(items, key=lambda item: item.tokens):
        current = batches[-1] if batches else None
        if current and (len(current) + 1) * item.tokens <= max_batch_tokens:
            current.append(item)
        else:
            batches.append([item])
    return batches
